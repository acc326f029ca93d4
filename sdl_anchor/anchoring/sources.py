"""Where anchors come from (paper section 4): ground truth, class means, probe directions.

* Ground truth: ``LinearRepresentationBench.anchors(k)`` (the LRB knows its features).
* Class means (Luo et al. 2024, "mean embeddings of dataset subpopulations"): the normalised mean
  activation of each labelled class, centred on the global mean first when there are three classes or more
  (two centred class means are exactly antipodal, so two classes keep their raw means).
* Probes: the normalised weight vectors of linear probes (e.g. logistic regression), one per concept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdl_anchor.anchoring.anchor_set import AnchorSet


def class_mean_anchors(
    activations: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    names: Sequence[str] | None = None,
    center: bool | None = None,
    output_activations: torch.Tensor | None = None,
) -> AnchorSet:
    """One anchor per class: the unit-normalised mean of its activations ``[N, d]``.

    ``labels [N]`` are integer class ids 0..C-1, every class present. With ``center=True`` the global
    mean is subtracted first, so the anchor is what distinguishes the class rather than what all
    activations share; ``center=False`` keeps the raw means; ``center=None`` (the default) centres when
    there are three classes or more (:func:`centres_class_means`). Two centred class means are exactly
    antipodal, one direction twice, so ``center=True`` with two classes is refused.
    ``output_activations [N, d_out]`` (a transcoder's targets) give the output side; by default it equals the
    input side.
    """
    acts = _check_activations(activations, "activations")
    labels = _class_ids(labels, acts.device)
    if labels.shape != (acts.shape[0],):
        raise ValueError(
            f"labels must have shape [{acts.shape[0]}] (one per activation), got {tuple(labels.shape)}"
        )
    if labels.min() < 0:
        raise ValueError("labels must be non-negative class ids")
    n_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()[:5]
        raise ValueError(
            f"classes {missing} have no examples; number classes 0..C-1 with every class present"
        )
    if names is not None and len(names) != n_classes:
        raise ValueError(f"names must hold {n_classes} class names, got {len(names)}")
    center = centres_class_means(center, n_classes)
    directions_in = _class_means(acts, labels, n_classes, counts, center)
    directions_out = None
    if output_activations is not None:
        out = _check_activations(output_activations, "output_activations")
        if out.shape[0] != acts.shape[0]:
            raise ValueError("output_activations must have one row per activation")
        directions_out = _class_means(out, labels, n_classes, counts, center)
    return AnchorSet(directions_in, directions_out, names=names)


def centres_class_means(center: bool | None, n_classes: int) -> bool:
    """Whether class means of ``n_classes`` classes are centred on the global mean: ``center`` if given,
    else with three classes or more. With two, the centred means are exactly antipodal (the class-weighted
    means sum to zero): one direction and its opposite, useless as two anchors, so an explicit
    ``center=True`` is refused (ValueError) and the default keeps the raw means."""
    if center is None:
        return n_classes > 2
    if center and n_classes == 2:
        raise ValueError(
            "with two classes, class means centred on the global mean are exactly antipodal (their weighted "
            "sum is zero), so the two anchors would be one direction and its opposite; pass center=False "
            "(the default for two classes; --uncentred in the CLI) for two distinct directions, or add classes"
        )
    return bool(center)


def probe_anchors(weights: torch.Tensor, names: Sequence[str] | None = None) -> AnchorSet:
    """Anchors from linear-probe weights ``[k, d]`` (one probe per row), unit-normalised."""
    w = _check_activations(weights, "probe weights")
    return AnchorSet(torch.nn.functional.normalize(w, dim=1), names=names)


def _class_means(
    acts: torch.Tensor, labels: torch.Tensor, n_classes: int, counts: torch.Tensor, center: bool
) -> torch.Tensor:
    if center:
        acts = acts - acts.mean(0, keepdim=True)
    sums = torch.zeros(n_classes, acts.shape[1], device=acts.device, dtype=acts.dtype)
    sums.index_add_(0, labels, acts)
    means = sums / counts.unsqueeze(1).to(acts.dtype)
    norms = means.norm(dim=1)
    if (norms < 1e-8).any():
        bad = torch.nonzero(norms < 1e-8).flatten().tolist()[:5]
        raise ValueError(
            f"classes {bad} have a zero mean{' after centring' if center else ''}; they give no direction"
        )
    return means / norms.unsqueeze(1)


def _class_ids(labels: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    """``labels`` as a long tensor, refusing what casting would silently truncate (1.5 -> 1, NaN)."""
    raw = torch.as_tensor(labels)
    if raw.dtype == torch.bool or raw.is_complex():
        raise ValueError(f"labels must be integer class ids, got dtype {raw.dtype}")
    if raw.is_floating_point() and not bool((torch.isfinite(raw) & (raw == raw.round())).all()):
        raise ValueError("labels must be integer class ids 0..C-1; some are fractional, NaN or infinite")
    return raw.to(device=device, dtype=torch.long)


def _check_activations(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2 or tensor.shape[0] == 0:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a 2-D tensor [N, d] with at least one row, got {shape}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return tensor.detach().float()
