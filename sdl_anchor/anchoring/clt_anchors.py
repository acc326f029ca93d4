"""Anchors for cross-layer transcoders (paper section 4, Eq. 22, applied layer by layer).

A CLT over ``n_layers`` layers has one encoder per layer (``W_enc[l]``, ``[d_in, d_sae]``) and, for layer ``l``'s
latents, a decoder writing to layers ``l, l + 1, ...`` (``W_dec[l]``, ``[d_sae, n_layers - l, d_out]``). An
:class:`AnchorSet` has one input and one output space, so a CLT takes one per layer: :class:`CLTAnchors`. Layer
``l``'s set anchors that layer's first ``k_l`` latents:

* ``directions_in [k_l, d_in]``: the anchored features' directions at layer ``l``'s input, tied to
  ``W_enc[l][:, :k_l]``;
* ``directions_out``, either ``[k_l, d_out]``: their directions at layer ``l``'s own output, tied to
  ``W_dec[l][:k_l, 0]`` (what a user with only same-layer knowledge, e.g. class means of the MLP output, has);
  or ``[k_l, (n_layers - l) * d_out]``: their writes to layer ``l``'s and every later layer's output,
  concatenated in layer order (a layer the feature does not write to is zeros), tied to the whole decoder
  row ``W_dec[l][:k_l]`` flattened (ground truth, e.g. the LRB's ``clt`` kind).

Each set's rows are unit norm (as :class:`AnchorSet` makes them), so Eq. 22 per layer reads
``||W_enc[l][:, :k_l] - A_p^l||_F^2 + ||W_dec[l][:k_l] - A_r^l||_F^2`` and the CLT's anchor loss is the sum
over layers. Stored as one safetensors file: ``layer_{l}.directions_in``, ``layer_{l}.directions_out`` and
optionally ``layer_{l}.indices`` (ground-truth feature indices), with ``n_layers`` and names in the metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.io import read_safetensors, write_safetensors

CLT_ANCHORS_FORMAT = "sdl_anchor.clt_anchors"


class CLTAnchors:
    """One :class:`AnchorSet` per CLT layer (module docstring); ``layers[l]`` anchors layer position ``l``."""

    def __init__(self, layers: Sequence[AnchorSet]) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("CLTAnchors needs one AnchorSet per CLT layer; got none")
        for position, anchors in enumerate(layers):
            if not isinstance(anchors, AnchorSet):
                raise ValueError(
                    f"layer {position}'s anchors must be an AnchorSet, got {type(anchors).__name__}"
                )
        if len({a.d_in for a in layers}) != 1:
            raise ValueError(
                f"every layer's input anchors must have the same width (the CLT's d_in), got "
                f"{[a.d_in for a in layers]}"
            )
        with_indices = [a.indices is not None for a in layers]
        if any(with_indices) and not all(with_indices):
            raise ValueError("give feature indices for every layer's anchors or for none")
        self.layers = layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def ks(self) -> list[int]:
        """Anchored latents per layer."""
        return [a.k for a in self.layers]

    @property
    def k(self) -> int:
        """Anchored latents over all layers."""
        return sum(self.ks)

    @property
    def indices(self) -> torch.Tensor | None:
        """Every layer's ground-truth feature indices, concatenated (None when the anchors carry none)."""
        if self.layers[0].indices is None:
            return None
        return torch.cat([a.indices for a in self.layers])  # type: ignore[misc]

    def writes_later_layers(self, position: int, d_out: int) -> bool:
        """Whether layer ``position``'s output anchors cover every layer it writes to (``[k, (n_layers -
        position) * d_out]``) rather than its own output only (``[k, d_out]``)."""
        return self.layers[position].d_out != d_out

    def check_fits(self, n_layers: int, d_in: int, d_out: int, d_sae: int) -> None:
        """Raise ValueError when these anchors cannot anchor a CLT of these widths."""
        if self.n_layers != n_layers:
            raise ValueError(
                f"the anchors have {self.n_layers} layers but the CLT has n_layers={n_layers}; give one "
                "AnchorSet per CLT layer"
            )
        for position, anchors in enumerate(self.layers):
            if anchors.d_in != d_in:
                raise ValueError(
                    f"layer {position}'s input anchors have width {anchors.d_in} but the CLT's d_in is {d_in}"
                )
            allowed = {d_out, (n_layers - position) * d_out}
            if anchors.d_out not in allowed:
                raise ValueError(
                    f"layer {position}'s output anchors have width {anchors.d_out}; a CLT with d_out={d_out} "
                    f"over {n_layers} layers takes {d_out} (that layer's own output) or "
                    f"{(n_layers - position) * d_out} (its writes to layers {position}..{n_layers - 1}, "
                    "concatenated)"
                )
            if anchors.k > d_sae:
                raise ValueError(
                    f"layer {position} has {anchors.k} anchors, more than its d_sae={d_sae} latents"
                )

    def to(self, device: str | torch.device) -> CLTAnchors:
        return CLTAnchors([a.to(device) for a in self.layers])

    def save(self, path: str | Path) -> Path:
        """Write every layer's anchors to one safetensors file, atomically."""
        tensors: dict[str, torch.Tensor] = {}
        names: dict[str, list[str] | None] = {}
        for position, anchors in enumerate(self.layers):
            tensors[f"layer_{position}.directions_in"] = anchors.directions_in
            tensors[f"layer_{position}.directions_out"] = anchors.directions_out
            if anchors.indices is not None:
                tensors[f"layer_{position}.indices"] = anchors.indices
            names[str(position)] = anchors.names
        metadata = {"format": CLT_ANCHORS_FORMAT, "n_layers": str(self.n_layers), "names": json.dumps(names)}
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CLTAnchors:
        """Read a file written by :meth:`save`; errors say what is missing or wrong."""
        tensors = read_safetensors(path, "CLT anchor file", device)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != CLT_ANCHORS_FORMAT or "n_layers" not in metadata:
            hint = " (an AnchorSet file: a CLT needs one set per layer)" if "directions_in" in tensors else ""
            raise ValueError(f"{path} is not a CLT anchor file written by CLTAnchors.save{hint}")
        n_layers = int(metadata["n_layers"])
        names = json.loads(metadata.get("names", "{}"))
        layers = []
        for position in range(n_layers):
            key = f"layer_{position}."
            if f"{key}directions_in" not in tensors or f"{key}directions_out" not in tensors:
                raise ValueError(f"{path} has no directions for layer {position} of its {n_layers}")
            layers.append(
                AnchorSet(
                    tensors[f"{key}directions_in"],
                    tensors[f"{key}directions_out"],
                    tensors.get(f"{key}indices"),
                    names.get(str(position)),
                )
            )
        return cls(layers)

    def __repr__(self) -> str:
        return f"CLTAnchors(n_layers={self.n_layers}, ks={self.ks})"
