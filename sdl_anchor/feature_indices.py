"""Checked feature indices: the anchors' ground-truth features (``AnchorSet.indices``) and the features a score
leaves out (``recovery(..., exclude=...)``).

An index list is easy to get subtly wrong without an error from torch: a boolean mask read as indices names
features 0 and 1, a float 2.9 truncates to feature 2, a repeated anchor index excludes fewer features than there
are anchors. :func:`check_feature_indices` turns each of these into a ValueError that says what to pass instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_feature_indices(
    values: Sequence[int] | torch.Tensor,
    name: str,
    n_features: int | None = None,
    unique: bool = False,
) -> torch.Tensor:
    """``values`` as a CPU ``torch.long`` tensor of the same shape: whole numbers (not a boolean mask, not
    fractions), at least 0, below ``n_features`` when that is given, and all different when ``unique``."""
    try:
        tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a list or tensor of feature indices (integers): {err}") from None
    tensor = tensor.cpu()
    if tensor.dtype == torch.bool:
        raise ValueError(
            f"{name} takes feature indices, got a boolean mask; pass the indices it marks, mask.nonzero().flatten()"
        )
    if tensor.is_complex() or (
        tensor.is_floating_point() and not bool((torch.isfinite(tensor) & (tensor == tensor.round())).all())
    ):
        raise ValueError(
            f"{name} must hold whole-number feature indices, got {tensor.flatten()[:8].tolist()}"
        )
    tensor = tensor.long()
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"{name} holds a negative feature index ({int(tensor.min())}); indices count from 0")
    if n_features is not None and tensor.numel() and int(tensor.max()) >= n_features:
        raise ValueError(
            f"{name} names feature {int(tensor.max())}, outside 0..{n_features - 1} (the bench has {n_features})"
        )
    if unique:
        values_seen, counts = torch.unique(tensor, return_counts=True)
        repeated = values_seen[counts > 1]
        if repeated.numel():
            raise ValueError(
                f"{name} repeats feature(s) {repeated[:8].tolist()}; each anchor needs its own feature"
            )
    return tensor
