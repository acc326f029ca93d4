"""Anchors from labelled prompts at a TransformerLens hook (class means, paper section 4).

``class_mean_anchors_from_prompts(model, {"animal": [...], "colour": [...]}, "blocks.0.hook_resid_post")``
runs the prompts, takes each prompt's activation at the hook (its last token, or the mean over its
tokens), and returns the normalised class means as an :class:`~sdl_anchor.AnchorSet` named by the class
labels, centred on the global mean when there are three classes or more (two centred means are antipodal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.anchoring.sources import class_mean_anchors

POOLING = ("last", "mean")


@torch.no_grad()
def prompt_activations(
    model: Any, prompts: Sequence[str], hook_name: str, pooling: str = "last"
) -> torch.Tensor:
    """``[len(prompts), d]`` activations at ``hook_name``, one pooled vector per prompt (BOS excluded)."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook_name!r}; e.g. {next(iter(model.hook_dict))!r}")
    if pooling not in POOLING:
        raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
    rows = []
    for prompt in prompts:
        tokens = model.to_tokens(prompt)
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name][0]
        if acts.ndim != 2:
            raise ValueError(
                f"hook {hook_name!r} gives activations of shape {tuple(acts.shape)}; use a [pos, d] hook"
            )
        acts = acts[1:] if model.cfg.default_prepend_bos and acts.shape[0] > 1 else acts
        rows.append(acts[-1] if pooling == "last" else acts.mean(0))
    return torch.stack(rows).float().cpu()


def class_mean_anchors_from_prompts(
    model: Any,
    prompts_by_class: Mapping[str, Sequence[str]],
    hook_name: str,
    pooling: str = "last",
    center: bool | None = None,
) -> AnchorSet:
    """One anchor per class label: the normalised mean of its prompts' activations, centred as
    :func:`~sdl_anchor.anchoring.sources.class_mean_anchors` does (by default with three classes or more)."""
    if not prompts_by_class or any(len(p) == 0 for p in prompts_by_class.values()):
        raise ValueError("prompts_by_class must map each class label to at least one prompt")
    names = list(prompts_by_class)
    prompts = [p for name in names for p in prompts_by_class[name]]
    labels = [i for i, name in enumerate(names) for _ in prompts_by_class[name]]
    acts = prompt_activations(model, prompts, hook_name, pooling)
    return class_mean_anchors(acts, labels, names=names, center=center)
