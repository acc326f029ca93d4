"""Anchor sets: the known directions that feature anchoring ties latents to (paper section 4).

An anchor set holds ``k`` input-side directions (tied to encoder columns ``W_enc[:, :k]``) and ``k``
output-side directions (tied to decoder rows ``W_dec[:k]``), with optional ground-truth feature
indices (LRB) and names. It is stored as one safetensors file: tensors ``directions_in``,
``directions_out`` and optionally ``indices``; names in the file's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from sdl_anchor.feature_indices import check_feature_indices
from sdl_anchor.io import read_safetensors, write_safetensors


class AnchorSet:
    """``k`` anchor directions ``[k, d_in]`` and ``[k, d_out]`` (the latter defaults to the former).

    An anchor is a direction: rows are normalised to unit norm on construction, so the anchor loss (Eq. 22,
    ``||W_enc[:, :k] - A_p||^2 + ||W_dec[:k] - A_r||^2``) ties the anchored latents to unit vectors whatever
    scale the anchors were given at (class means of activations of norm 50 and probe weights of norm 0.01
    anchor the same way), and ``anchor_init`` points the latents along them."""

    def __init__(
        self,
        directions_in: torch.Tensor,
        directions_out: torch.Tensor | None = None,
        indices: Sequence[int] | torch.Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.directions_in = _check_directions(directions_in, "directions_in")
        k = self.directions_in.shape[0]
        if directions_out is None:
            directions_out = self.directions_in
        self.directions_out = _check_directions(directions_out, "directions_out")
        if self.directions_out.shape[0] != k:
            raise ValueError(
                f"directions_out has {self.directions_out.shape[0]} anchors but directions_in has "
                f"{k}; give one output direction per input direction"
            )
        self.indices = None if indices is None else check_feature_indices(indices, "indices", unique=True)
        if self.indices is not None and self.indices.shape != (k,):
            raise ValueError(f"indices must hold {k} feature indices, got shape {tuple(self.indices.shape)}")
        self.names = None if names is None else [str(n) for n in names]
        if self.names is not None and len(self.names) != k:
            raise ValueError(f"names must hold {k} names, got {len(self.names)}")

    @property
    def k(self) -> int:
        return self.directions_in.shape[0]

    @property
    def d_in(self) -> int:
        return self.directions_in.shape[1]

    @property
    def d_out(self) -> int:
        return self.directions_out.shape[1]

    def to(self, device: str | torch.device) -> AnchorSet:
        return AnchorSet(
            self.directions_in.to(device), self.directions_out.to(device), self.indices, self.names
        )

    def save(self, path: str | Path) -> Path:
        """Write the anchors to one safetensors file, atomically."""
        tensors = {"directions_in": self.directions_in, "directions_out": self.directions_out}
        if self.indices is not None:
            tensors["indices"] = self.indices
        metadata = {"names": json.dumps(self.names)} if self.names is not None else None
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> AnchorSet:
        """Read an anchor file written by :meth:`save`; errors say what is missing or wrong."""
        tensors = read_safetensors(path, "anchor file", device)
        if "directions_in" not in tensors:
            raise ValueError(
                f"anchor file {path} has no 'directions_in' tensor (found {sorted(tensors)}); "
                "write it with AnchorSet.save"
            )
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        names = None
        if "names" in metadata:
            try:
                names = json.loads(metadata["names"])
            except json.JSONDecodeError as error:
                raise ValueError(f"anchor file {path} has unreadable 'names' metadata ({error})") from None
            if not isinstance(names, list):
                raise ValueError(f"anchor file {path} has 'names' metadata that is not a list of names")
        return cls(tensors["directions_in"], tensors.get("directions_out"), tensors.get("indices"), names)

    def __repr__(self) -> str:
        return f"AnchorSet(k={self.k}, d_in={self.d_in}, d_out={self.d_out})"


def _check_directions(directions: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(directions, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [k, d], got {type(directions).__name__}")
    if directions.ndim != 2:
        raise ValueError(f"{name} must have shape [k, d], got shape {tuple(directions.shape)}")
    if directions.shape[0] == 0:
        raise ValueError(f"{name} holds no anchors (k = 0); give at least one direction")
    directions = directions.detach()
    if not torch.isfinite(directions).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    # each row over its largest entry first, in float64: no scale overflows or underflows the norm
    peak = directions.double().abs().amax(dim=1)
    if (peak == 0).any():
        bad = torch.nonzero(peak == 0).flatten().tolist()[:5]
        raise ValueError(f"{name} has zero-norm anchors at rows {bad}; every anchor needs a direction")
    scaled = directions.double() / peak[:, None]
    unit = (scaled / scaled.norm(dim=1, keepdim=True)).float()
    # rows already unit norm (within float rounding) are kept bit for bit, so save/load round trips exactly
    directions = directions.float()
    already_unit = (directions.norm(dim=1) - 1.0).abs() <= 1e-6
    return torch.where(already_unit[:, None], directions, unit)
