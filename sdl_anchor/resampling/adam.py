"""Reset Adam's moments for exactly the latents a resampling event rewrote.

A resampled latent's old moments describe gradients of weights that no longer exist, so Bricken et al.
(2023) zero them; every other latent's state must stay bit for bit as it was. Adam's step count is one
scalar per parameter and is left alone: with zeroed moments and a late step count the first update of a
reset slice is about ``lr * 0.1 / sqrt(0.001) ~ 3 lr``, which the optional learning-rate re-warm-up
(``ResamplingConfig.rewarm_steps``) softens.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reset_adam_state(
    optimizer: torch.optim.Optimizer,
    latent_params: list[tuple[torch.Tensor, int]],
    latents: torch.Tensor,
    layer: int | None = None,
) -> int:
    """Zero ``exp_avg`` / ``exp_avg_sq`` (and ``max_exp_avg_sq``) of ``latents`` along each parameter's
    latent dimension (``(param, dim)`` pairs); return how many state tensors were touched. With ``layer``,
    each parameter stacks one slice per layer along its first dimension and only ``param[layer]``'s moments
    are zeroed, ``dim`` counting within that slice (a cross-layer transcoder's ``W_enc [n_layers, d_in,
    d_sae]``: ``(W_enc, 1)``)."""
    touched = 0
    for param, dim in latent_params:
        state = optimizer.state.get(param)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            moment = state.get(key)
            if isinstance(moment, torch.Tensor) and moment.shape == param.shape:
                (moment if layer is None else moment[layer]).index_fill_(dim, latents.to(moment.device), 0.0)
                touched += 1
    return touched
