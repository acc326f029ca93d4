"""The anchor loss (paper section 4, Eq. 22) in SAELens's weight layout.

Paper form, with ``k`` anchors ``A_p [k, d_in]`` (input side) and ``A_r [k, d_out]`` (output side):

    L_anchor = ||W_E[1:k] - A_p||_F^2 + ||W_D[:, 1:k] - A_r||_F^2

SAELens stores the encoder as ``W_enc [d_in, d_sae]`` and the decoder as ``W_dec [d_sae, d_out]``, so the
anchored slices are ``W_enc[:, :k]`` (columns) and ``W_dec[:k]`` (rows). The training objective is
``L = L_SDL + lambda * L_anchor``.

Self-anchoring ties every other latent's encoder column to a direction of its own,
``sum_{j >= k} (1 - cos(W_enc[:, j], sg(v_j)))`` with ``v_j`` held fixed (``sg``: stop-gradient): its decoder
row ``W_dec[j]`` (SAEs, crosscoders), or the mean input it fires on, centred (``inputs``: any coder, the
only choice for a transcoder, whose decoder writes another space). The global-minimum configuration of the
paper's Theorem 3.2 has ``W_E = W_D^T``; without a tie, the MSE loss pulls each encoder column from the
feature its decoder found towards the interference-cancelling linear readout of that feature
(``(W W^T)^{-1} w_i`` up to scale), which at the paper's n=1000, d=768 has cosine ~0.5 with ``w_i``.

The direction (cosine) form ties only directions, ``sum_i (1 - cos(W_enc[:, i], a_i)) +
(1 - cos(W_dec[i], r_i))``, for architectures that rescale latents by decoder norm, where the
magnitude the paper form imposes is arbitrary.
"""

from __future__ import annotations

from typing import Any

import torch

ANCHOR_LOSSES = ("mse", "cosine")


def anchor_loss_mse(
    w_enc: torch.Tensor, w_dec: torch.Tensor, anchors_in: torch.Tensor, anchors_out: torch.Tensor
) -> torch.Tensor:
    """Eq. 22: squared Frobenius distance of ``W_enc[:, :k]`` and ``W_dec[:k]`` to the anchors."""
    k = anchors_in.shape[0]
    enc = (w_enc[:, :k] - anchors_in.T.to(w_enc.dtype)).pow(2).sum()
    dec = (w_dec[:k] - anchors_out.to(w_dec.dtype)).pow(2).sum()
    return enc + dec


def anchor_cosines(
    w_enc: torch.Tensor, w_dec: torch.Tensor, anchors_in: torch.Tensor, anchors_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([k] cos(W_enc[:, i], a_i), [k] cos(W_dec[i], r_i))``."""
    k = anchors_in.shape[0]
    enc_cos = torch.nn.functional.cosine_similarity(w_enc[:, :k].T, anchors_in.to(w_enc.dtype), dim=1)
    dec_cos = torch.nn.functional.cosine_similarity(w_dec[:k], anchors_out.to(w_dec.dtype), dim=1)
    return enc_cos, dec_cos


def anchor_loss_cosine(
    w_enc: torch.Tensor, w_dec: torch.Tensor, anchors_in: torch.Tensor, anchors_out: torch.Tensor
) -> torch.Tensor:
    """Direction form: ``sum_i (1 - cos(W_enc[:, i], a_i)) + (1 - cos(W_dec[i], r_i))``."""
    enc_cos, dec_cos = anchor_cosines(w_enc, w_dec, anchors_in, anchors_out)
    return (1.0 - enc_cos).sum() + (1.0 - dec_cos).sum()


# latents per block of the self-anchoring pass on CPU: a block of encoder columns and its targets stay in cache
SELF_ANCHOR_BLOCK = 256


class _SelfAnchorGaps(torch.autograd.Function):
    """``sum_j weights_j (1 - cos(enc[:, j], targets[j]))`` and its gradient in ``enc``, computed together in
    one pass over blocks of latents: autograd of the plain formula re-reads the ``[d_in, d_sae]`` encoder
    about ten times (slice, products, norms and their backwards) and costs more than the SAE's own sparse step
    at d_sae 16,000 on CPU. ``d/de (1 - cos(e, t)) = cos e / |e|^2 - t / (|e| |t|)``."""

    @staticmethod
    def forward(ctx: Any, enc: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        tiny = torch.finfo(enc.dtype).tiny
        block = SELF_ANCHOR_BLOCK if enc.device.type == "cpu" else enc.shape[1]
        gaps = enc.new_empty(enc.shape[1])
        grad = torch.empty_like(enc) if ctx.needs_input_grad[0] else None
        for start in range(0, enc.shape[1], block):
            end = start + block
            columns, target, weight = enc[:, start:end], targets[start:end].T.contiguous(), weights[start:end]
            enc_norm, target_norm = columns.norm(dim=0), target.norm(dim=0)
            inverse = 1.0 / (enc_norm * target_norm).clamp_min(tiny)
            cos = torch.linalg.vecdot(columns, target, dim=0) * inverse
            gaps[start:end] = weight * (1.0 - cos)
            if grad is not None:
                grad[:, start:end] = columns * (weight * cos / (enc_norm * enc_norm).clamp_min(tiny))
                grad[:, start:end] -= target * (weight * inverse)
        ctx.save_for_backward(grad)
        return gaps.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def self_anchor_loss(
    w_enc: torch.Tensor, directions: torch.Tensor, start: int = 0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_{j >= start} (1 - cos(W_enc[:, j], sg(directions[j])))``: each encoder column towards its own
    latent's direction (its decoder row, or the mean input it fires on), held fixed (module docstring).
    ``mask [d_sae]`` keeps only the latents that have a direction yet."""
    weights = torch.ones(w_enc.shape[1], dtype=w_enc.dtype, device=w_enc.device)
    weights[:start] = 0.0
    if mask is not None:
        weights = weights * mask.to(weights)
    return _SelfAnchorGaps.apply(w_enc, directions.detach().to(w_enc.dtype), weights)


def anchor_loss(
    kind: str,
    w_enc: torch.Tensor,
    w_dec: torch.Tensor,
    anchors_in: torch.Tensor,
    anchors_out: torch.Tensor,
) -> torch.Tensor:
    """Dispatch on ``kind`` ("mse": Eq. 22, "cosine": the direction form)."""
    if kind == "mse":
        return anchor_loss_mse(w_enc, w_dec, anchors_in, anchors_out)
    if kind == "cosine":
        return anchor_loss_cosine(w_enc, w_dec, anchors_in, anchors_out)
    raise ValueError(f"anchor_loss must be one of {ANCHOR_LOSSES}, got {kind!r}")


@torch.no_grad()
def mean_anchor_cosine(
    w_enc: torch.Tensor, w_dec: torch.Tensor, anchors_in: torch.Tensor, anchors_out: torch.Tensor
) -> torch.Tensor:
    """Mean over anchors and both sides of ``cos(W_enc[:, i], a_i)`` and ``cos(W_dec[i], r_i)``."""
    enc_cos, dec_cos = anchor_cosines(w_enc, w_dec, anchors_in, anchors_out)
    return 0.5 * (enc_cos.mean() + dec_cos.mean())
