"""Activation patterns (the paper's Definition 3.4): which latents fire for each ground-truth feature alone.

For latent ``j`` the pattern is ``P_j = {i : latent j fires on x = c w_i}``, the features that switch it on
when each is active in isolation at magnitude ``c``. Then ``|P_j| = 1`` is a monosemantic latent,
``|P_j| > 1`` a polysemantic one (the spurious partial minima of Theorem 3.5 are made of these), and
``P_j = {}`` a latent dead to every isolated feature. A feature is *recovered* when some latent's pattern is
exactly that feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdl_anchor.metrics import check_finite_weights


@dataclass
class ActivationPatterns:
    """``fires[i, j]``: latent ``j`` fires on feature ``i`` alone at ``magnitude``."""

    fires: torch.Tensor  # [n_features, d_sae] bool
    magnitude: float

    @property
    def pattern_sizes(self) -> torch.Tensor:
        """``|P_j|`` per latent."""
        return self.fires.sum(dim=0)

    def pattern(self, latent: int) -> list[int]:
        """``P_j``: the features that fire ``latent`` on their own."""
        return torch.nonzero(self.fires[:, latent]).flatten().tolist()

    @property
    def monosemantic(self) -> torch.Tensor:
        return torch.nonzero(self.pattern_sizes == 1).flatten()

    @property
    def polysemantic(self) -> torch.Tensor:
        return torch.nonzero(self.pattern_sizes > 1).flatten()

    @property
    def dead(self) -> torch.Tensor:
        return torch.nonzero(self.pattern_sizes == 0).flatten()

    @property
    def unrecovered(self) -> torch.Tensor:
        """Features no latent is monosemantic for."""
        exclusive = self.fires[:, self.pattern_sizes == 1].any(dim=1)
        return torch.nonzero(~exclusive).flatten()

    def to_dict(self) -> dict[str, Any]:
        """Counts, and the polysemantic latents with their patterns (JSON-ready)."""
        return {
            "magnitude": self.magnitude,
            "n_monosemantic": int(self.monosemantic.numel()),
            "n_polysemantic": int(self.polysemantic.numel()),
            "n_dead": int(self.dead.numel()),
            "n_unrecovered_features": int(self.unrecovered.numel()),
            "unrecovered_features": self.unrecovered.tolist(),
            "polysemantic_patterns": {int(j): self.pattern(int(j)) for j in self.polysemantic},
        }


@torch.no_grad()
def activation_patterns(
    sae: Any, features: Any, magnitude: float | None = None, batch_size: int = 4096
) -> ActivationPatterns:
    """The activation patterns of ``sae`` over ground-truth features (module docstring).

    ``features``: a :class:`~sdl_anchor.lrb.bench.LinearRepresentationBench` (its input-side features; the
    magnitude defaults to its mean code value ``c_min + beta``) or a ``[n_features, d_in]`` tensor of
    feature directions in the SAE's input space (then the magnitude defaults to 1)."""
    if hasattr(features, "features_in"):
        config = features.config
        directions = features.features_in
        default = config.c_min + config.beta
    else:
        directions, default = features, 1.0
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2:
        raise ValueError("features must be a LinearRepresentationBench or a [n_features, d_in] tensor")
    if not bool(torch.isfinite(directions).all()):
        raise ValueError("the feature directions hold NaN or infinite values; pass finite directions")
    check_finite_weights(sae, "activation patterns")
    d_in = sae.cfg.d_in
    if directions.shape[1] != d_in:
        raise ValueError(f"the features have width {directions.shape[1]} but the SAE has d_in={d_in}")
    magnitude = default if magnitude is None else float(magnitude)
    if not 0 < magnitude < float("inf"):
        raise ValueError(f"magnitude must be a positive finite number, got {magnitude}")
    directions = directions.to(sae.W_enc.device, sae.W_enc.dtype)
    fires = torch.cat(
        [
            sae.encode(magnitude * directions[start : start + batch_size]) > 0
            for start in range(0, directions.shape[0], batch_size)
        ]
    )
    return ActivationPatterns(fires.cpu(), magnitude)
