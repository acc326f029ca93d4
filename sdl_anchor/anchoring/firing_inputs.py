"""The mean input each latent fires on, kept as a decaying average during training.

For latent ``j`` with activations ``a_bj`` on inputs ``x_b``, ``m_j = sum_b a_bj x_b / sum_b a_bj`` averaged
over recent steps, minus the mean input ``mu``: the direction a matched filter for ``j``'s feature points in.
On the LRB, a latent that reads feature ``i`` has ``m_j - mu ~ (E[c_i^2] / E[c_i]) w_i``, whatever space its
decoder writes to, which makes it the self-anchoring target of transcoders (:mod:`.loss`).
"""

from __future__ import annotations

import torch


class FiringInputMeans:
    """Decaying sums of ``a_bj x_b`` and ``a_bj`` per latent, and of the inputs, on the coder's device."""

    def __init__(self, d_sae: int, d_in: int, decay: float, like: torch.Tensor) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.weighted_inputs = like.new_zeros(d_sae, d_in)
        self.weights = like.new_zeros(d_sae)
        self.input_sum = like.new_zeros(d_in)
        self.input_count = like.new_zeros(())

    @torch.no_grad()
    def update(self, feature_acts: torch.Tensor, x: torch.Tensor) -> None:
        """Add one batch: ``feature_acts [B, d_sae]`` (dense or sparse COO) on inputs ``x [B, d_in]``."""
        acts = feature_acts.detach().to(x.dtype)
        if acts.is_sparse:
            acts = acts.coalesce()
            weighted = torch.sparse.mm(acts.t(), x)
            weights = torch.sparse.sum(acts, dim=0).to_dense()
        else:
            weighted, weights = acts.T @ x, acts.sum(dim=0)
        keep = 1.0 - self.decay
        self.weighted_inputs.mul_(self.decay).add_(weighted, alpha=keep)
        self.weights.mul_(self.decay).add_(weights, alpha=keep)
        self.input_sum.mul_(self.decay).add_(x.sum(dim=0), alpha=keep)
        self.input_count.mul_(self.decay).add_(x.shape[0] * keep)

    STATE_NAMES = ("weighted_inputs", "weights", "input_sum", "input_count")

    def state(self) -> dict[str, torch.Tensor]:
        """The running sums, for a checkpoint (:meth:`load_state` restores them exactly)."""
        return {name: getattr(self, name) for name in self.STATE_NAMES}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the sums :meth:`state` gave; raises ValueError on missing names or other shapes."""
        for name in self.STATE_NAMES:
            current = getattr(self, name)
            if name not in tensors or tensors[name].shape != current.shape:
                found = None if name not in tensors else tuple(tensors[name].shape)
                raise ValueError(
                    f"firing-input state {name}: expected shape {tuple(current.shape)}, found {found}; the "
                    "checkpoint was written by a coder of another size"
                )
            setattr(self, name, tensors[name].to(current.device, current.dtype).clone())

    @torch.no_grad()
    def forget(self, latents: torch.Tensor) -> None:
        """Drop what ``latents`` fired on (they were just resampled): they count as not yet fired, so no
        stale target pulls their new direction back to the one they died on."""
        self.weighted_inputs[latents] = 0
        self.weights[latents] = 0

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([d_sae, d_in] m_j - mu, [d_sae] bool: latents that have fired)``."""
        seen = self.weights > 0
        means = self.weighted_inputs / self.weights.clamp_min(torch.finfo(self.weights.dtype).tiny)[:, None]
        centre = self.input_sum / self.input_count.clamp_min(1e-12)
        return means - centre, seen
