"""Absorption of a concept by an SAE on a real model: SAEBench's first-letter metric, generalised and fixed.

For every parent class (a letter, or any parent concept of a :class:`ConceptSet`) whose ground-truth probe
passes the gate (test F1 >= ``min_probe_f1``), the main latents are chosen
(:func:`~sdl_anchor.absorption.probes.select_main_latents`) and every held-out word of the class that the
probe gets right is scored as in SAEBench's ``absorption_first_letter`` (Chanin et al. 2024), with the
unit probe direction ``p``, the hook activation ``x`` and latent activations ``a``:

* ``P = x . p``; each latent's projection ``proj_i = a_i (W_dec[i] . p)`` (SAEBench writes
  ``a_i cos(W_dec[i], p)``, the same for unit-norm decoders and wrong otherwise);
* ``M = sum_{main} proj_i``; absorbers are other latents with ``cos(W_dec[i], p) >= 0.1`` and
  ``proj_i > 0``, ``A`` the sum of the largest 3;
* absorption fraction: 0 when ``M >= P`` or ``A / P < 0.4``; 1 when ``M <= 0``; else
  ``U / (U + M)`` with ``U = min(A, P - M)``;
* full absorption: every main latent is silent, the latent with the largest projection has cosine >= 0.025
  with ``p`` and carries at least 0.4 of ``P``.

Per class: the mean absorption fraction and the full-absorption rate over those words; overall: their
unweighted means over the classes that pass (SAEBench's ``mean_absorption_fraction_score``,
``mean_full_absorption_score``, ``mean_num_split_features``). Fixed relative to SAEBench: the SAE's own
hook, classes failing the gate are skipped (not the whole run), seeded everything, one prompt per word for
probe and measurement, caches outside the package keyed by model, hook and seed, any tokenizer, and
scale-invariant main latents.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdl_anchor.absorption.concepts import ConceptSet, word_activations
from sdl_anchor.absorption.probes import f1_scores, select_main_latents, train_concept_probe
from sdl_anchor.metrics import check_finite_weights

FULL_ABSORPTION_COSINE = 0.025
ABSORBER_COSINE = 0.1
PROJECTION_SHARE = 0.4
MAX_ABSORBERS = 3
MIN_CLASS_WORDS = 10  # fewer words cannot train and test a probe for the class
TRAIN_FRACTION = 0.8


def sae_hook_name(sae: Any) -> str:
    """The one hook the SAE reads, from its metadata."""
    from sdl_anchor.integrations.splice import coder_hook_names

    hooks = coder_hook_names(sae, None)
    if len(hooks) != 1:
        raise ValueError(
            f"the absorption metric reads one hook, but the SAE's metadata names {hooks}; pass hook_name="
        )
    return hooks[0]


def check_hook(model: Any, sae: Any, hook_name: str) -> None:
    """The hook exists on the model and its width is the SAE's ``d_in`` (before any forward pass)."""
    from sdl_anchor.integrations.coder_hooks import check_coder_hooks

    check_coder_hooks(model, [hook_name], sae.cfg, "sae")


@torch.no_grad()
def _encode(sae: Any, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    return torch.cat(
        [sae.encode(x[s : s + batch_size].to(device, dtype)).float() for s in range(0, len(x), batch_size)]
    )


def word_absorption(
    x: torch.Tensor, acts: torch.Tensor, probe_direction: torch.Tensor, W_dec: torch.Tensor, main: list[int]
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """``(absorption fraction [N], full absorption [N] bool, absorbing latents per word)`` (module docstring)."""
    p = F.normalize(probe_direction.float(), dim=0)
    decoder = W_dec.float()
    along = decoder @ p  # W_dec[i] . p
    cosine = along / decoder.norm(dim=1).clamp(min=1e-12)
    proj = acts * along  # [N, d_sae]
    total = x.float() @ p  # P
    is_main = torch.zeros(acts.shape[1], dtype=torch.bool, device=acts.device)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(dim=1)
    candidate = (~is_main) & (cosine >= ABSORBER_COSINE)
    absorber_proj = torch.where(candidate[None, :] & (proj > 0), proj, 0.0)
    top = absorber_proj.topk(min(MAX_ABSORBERS, acts.shape[1]), dim=1)
    absorbed = top.values.sum(dim=1)
    share = absorbed / total.where(total != 0, torch.ones_like(total))
    unexplained = torch.minimum(absorbed, total - main_proj)
    fraction = (
        unexplained / (unexplained + main_proj).where(unexplained + main_proj != 0, torch.ones_like(total))
    ).clamp(0, 1)
    fraction = torch.where(main_proj <= 0, 1.0, fraction)
    fraction = torch.where((main_proj >= total) | (share < PROJECTION_SHARE) | (total <= 0), 0.0, fraction)
    best = proj.argmax(dim=1)
    best_proj = proj.gather(1, best[:, None])[:, 0]
    full = (
        (acts[:, is_main] < 1e-8).all(dim=1)
        & (cosine[best] >= FULL_ABSORPTION_COSINE)
        & (total >= 0)
        & (best_proj >= PROJECTION_SHARE * total)
    )
    absorbers = [
        [int(i) for i, v in zip(row_idx.tolist(), row_val.tolist(), strict=True) if v > 0]
        if f > 0 or u
        else []
        for row_idx, row_val, f, u in zip(
            top.indices, top.values, fraction.tolist(), full.tolist(), strict=True
        )
    ]
    return fraction, full, absorbers


@torch.no_grad()
def concept_absorption(
    model: Any,
    sae: Any,
    concepts: ConceptSet,
    *,
    hook_name: str | None = None,
    seed: int = 0,
    min_probe_f1: float = 0.6,
    max_k: int = 10,
    f1_jump: float = 0.03,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """The absorption metric of ``sae`` for every parent concept of ``concepts`` (module docstring).

    Returns SAEBench's keys (``mean_absorption_fraction_score``, ``mean_full_absorption_score``,
    ``mean_num_split_features`` and their ``std_dev_*``), ``per_class`` (per letter for the first-letter
    task: ``absorption_fraction``, ``full_absorption``, ``num_split_features``, ``probe_f1``,
    ``main_latents``, or ``skipped`` with the reason) and ``per_child`` breakdowns."""
    check_finite_weights(sae, "absorption")
    hook = hook_name or sae_hook_name(sae)
    check_hook(model, sae, hook)
    counts = defaultdict(int)
    for parent in concepts.parents:
        counts[parent] += 1
    if max(counts.values(), default=0) < MIN_CLASS_WORDS:
        raise ValueError(
            f"the concept set has {len(concepts.words)} single-token words, at most {max(counts.values(), default=0)} "
            f"per class; the probe gate needs at least {MIN_CLASS_WORDS} words in a class (use a tokenizer "
            "with a larger vocabulary, or more words per concept)"
        )
    words = word_activations(
        model, concepts, hook, seed=seed, batch_size=batch_size, cache_dir=cache_dir, progress=progress
    )
    classes = concepts.parent_labels
    labels = torch.tensor([classes.index(concepts.parents[i]) for i in words.kept])
    order = torch.randperm(len(words.kept), generator=torch.Generator().manual_seed(seed))
    n_train = int(TRAIN_FRACTION * len(order))
    train, test = order[:n_train], order[n_train:]
    x = words.x
    probe = train_concept_probe(x[train], labels[train], len(classes), seed=seed)
    test_logits = probe(x[test])
    test_truth = F.one_hot(labels[test], len(classes)).bool()
    probe_f1 = f1_scores(test_logits > 0, test_truth)
    acts = _encode(sae, x)
    W_dec = sae.W_dec.detach().float().to(acts.device)
    per_class: dict[str, dict[str, Any]] = {}
    per_child: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(classes):
        n_words = int((labels == c).sum())
        if n_words < MIN_CLASS_WORDS:
            per_class[label] = {"skipped": f"only {n_words} single-token words (needs {MIN_CLASS_WORDS})"}
            continue
        if float(probe_f1[c]) < min_probe_f1:
            per_class[label] = {
                "skipped": f"probe F1 {float(probe_f1[c]):.3f} < {min_probe_f1}",
                "probe_f1": float(probe_f1[c]),
            }
            continue
        main = select_main_latents(
            acts[train], labels[train] == c, acts[test], labels[test] == c, max_k=max_k, f1_jump=f1_jump
        )
        positives = test[(labels[test] == c) & (test_logits[:, c] > 0)]
        fraction, full, absorbers = word_absorption(
            x[positives].to(acts.device),
            acts[positives],
            probe.weight[c].to(acts.device),
            W_dec,
            main.latents,
        )
        n = len(positives)
        per_class[label] = {
            "absorption_fraction": float(fraction.mean()) if n else 0.0,
            "full_absorption": float(full.float().mean()) if n else 0.0,
            "num_split_features": len(main.latents),
            "probe_f1": float(probe_f1[c]),
            "main_latents": main.latents,
            "main_latents_f1_by_k": main.f1_by_k,
            "num_probe_true_positives": n,
            "num_full_absorption": int(full.sum()),
            "scored_words": [concepts.words[words.kept[int(row)]] for row in positives],
            "absorbed_words": [
                {
                    "word": concepts.words[words.kept[int(row)]],
                    "absorption_fraction": float(f),
                    "full_absorption": bool(u),
                    "absorbing_latents": a,
                }
                for row, f, u, a in zip(positives, fraction, full, absorbers, strict=True)
                if f > 0 or u
            ],
        }
        if concepts.task != "first_letter":
            by_child: dict[str, list[int]] = defaultdict(list)
            for j, row in enumerate(positives.tolist()):
                by_child[concepts.children[words.kept[row]]].append(j)
            for child, rows in by_child.items():
                per_child[f"{label}/{child}"] = {
                    "absorption_fraction": float(fraction[rows].mean()),
                    "full_absorption": float(full[rows].float().mean()),
                    "num_probe_true_positives": len(rows),
                }
    scored = [r for r in per_class.values() if "skipped" not in r]
    if not scored:
        reasons = "; ".join(f"{k}: {v['skipped']}" for k, v in per_class.items())
        raise ValueError(
            f"no class passed the probe gate (F1 >= {min_probe_f1}), so nothing can be scored: {reasons}"
        )

    def mean_and_std(key: str) -> tuple[float, float]:
        values = [float(r[key]) for r in scored]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    fraction_mean, fraction_std = mean_and_std("absorption_fraction")
    full_mean, full_std = mean_and_std("full_absorption")
    split_mean, split_std = mean_and_std("num_split_features")
    return {
        "eval_type_id": "absorption_first_letter"
        if concepts.task == "first_letter"
        else "absorption_concepts",
        "mean_absorption_fraction_score": fraction_mean,
        "mean_full_absorption_score": full_mean,
        "mean_num_split_features": split_mean,
        "std_dev_absorption_fraction_score": fraction_std,
        "std_dev_full_absorption_score": full_std,
        "std_dev_num_split_features": split_std,
        "per_class": per_class,
        "per_child": per_child,
        "n_words": len(concepts.words),
        "n_words_single_token": len(words.kept),
        "n_classes_scored": len(scored),
        "config": {
            "hook_name": hook,
            "seed": seed,
            "min_probe_f1": min_probe_f1,
            "max_k": max_k,
            "f1_jump": f1_jump,
            "template": concepts.template,
            "n_icl": concepts.n_icl,
        },
    }
