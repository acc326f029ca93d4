"""Feature-recovery metrics on the LRB (paper section 5.1, Table 1; DESIGN.md section 4).

For every ground-truth feature ``w_i`` not excluded (anchors are excluded, as in the paper):

    s_i = max_j |cos(W_enc[:, j], w_i)|,   M_GT = mean_i 1{s_i > tau},   M_IP = mean_i s_i

on the encoder columns (SAELens layout ``W_enc [d_in, d_sae]``), and the same on the decoder rows
(``W_dec [d_sae, d_out]``) against the output-side features. ``MCC`` is SAELens's mean correlation
coefficient (Hungarian matching of decoder rows to features), averaged, as SAELens defines it, over the
``min(d_sae, n)`` matched pairs: a coder narrower than the features scored is judged on its own latents only
(two latents on two of 20 features read 1.0), so compare MCC between coders of one width.

The max runs over every latent, as in the paper. A dead latent whose encoder column sits on a feature
therefore counts although it never fires (resampling plants such columns); ``live_recovery`` scores the
latents that fire on a sample instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from sdl_anchor.feature_indices import check_feature_indices

if TYPE_CHECKING:
    from sdl_anchor.lrb.bench import LinearRepresentationBench


def max_abs_cosine(features: torch.Tensor, directions: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """``s_i = max_j |cos(features[i], directions[j])|`` for rows of both, chunked over ``directions``."""
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    best = torch.zeros(feats.shape[0], device=feats.device)
    for start in range(0, directions.shape[0], chunk_size):
        block = torch.nn.functional.normalize(directions[start : start + chunk_size].float(), dim=1)
        best = torch.maximum(best, (feats @ block.T).abs().max(dim=1).values)
    return best


def recovery_scores(s: torch.Tensor, tau: float) -> tuple[float, float]:
    """``(M_GT, M_IP)`` from per-feature best cosines ``s``."""
    return float((s > tau).float().mean()), float(s.mean())


@torch.no_grad()
def recovery(
    sae: Any,
    bench: LinearRepresentationBench,
    tau: float = 0.95,
    exclude: Sequence[int] | torch.Tensor | None = None,
    mcc: bool = True,
    latents: torch.Tensor | None = None,
) -> dict[str, float]:
    """M_GT / M_IP on encoder columns, their decoder-side versions and MCC, anchors excluded.

    ``sae`` is any SAELens SAE or TrainingSAE (anything with ``W_enc [d_in, d_sae]`` and
    ``W_dec [d_sae, d_out]``). ``exclude``: the feature indices left out of every score (the anchors'
    ``AnchorSet.indices``); a boolean mask is refused, pass ``mask.nonzero().flatten()``. ``latents`` (a
    boolean mask over latents) restricts the max to those latents; by default every latent counts.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    w_enc, w_dec = _weights(sae)
    _check_fits_bench(w_enc, w_dec, bench)
    if latents is not None:
        if latents.dtype != torch.bool or latents.shape != (w_enc.shape[1],):
            raise ValueError(f"latents must be a boolean mask of shape ({w_enc.shape[1]},)")
        if not bool(latents.any()):
            raise ValueError("latents selects no latent; nothing is left to score with")
        w_enc, w_dec = w_enc[:, latents.to(w_enc.device)], w_dec[latents.to(w_dec.device)]
    keep = _kept_features(bench.n_features, exclude)
    device = w_enc.device
    feats_in = bench.features_in.to(device)[keep]
    feats_out = bench.features_out.to(device)[keep]
    m_gt, m_ip = recovery_scores(max_abs_cosine(feats_in, w_enc.T), tau)
    m_gt_dec, m_ip_dec = recovery_scores(max_abs_cosine(feats_out, w_dec), tau)
    result = {"M_GT": m_gt, "M_IP": m_ip, "M_GT_dec": m_gt_dec, "M_IP_dec": m_ip_dec}
    if mcc:
        from sae_lens.synthetic import mean_correlation_coefficient

        result["MCC"] = mean_correlation_coefficient(w_dec.float().cpu(), feats_out.float().cpu())
    result["n_scored"] = int(keep.numel())
    return result


@torch.no_grad()
def live_recovery(
    sae: Any,
    bench: LinearRepresentationBench,
    n_samples: int = 16_384,
    seed: int = 12345,
    **kwargs: Any,
) -> dict[str, float]:
    """``recovery`` over the latents that fire on ``n_samples`` fresh bench inputs, keys suffixed ``_live``,
    plus ``n_live``. All zeros when no latent fires."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(
            f"n_samples must be a positive integer (the inputs to find live latents on), got {n_samples!r}"
        )
    _check_fits_bench(*_weights(sae), bench)  # before encoding the bench's inputs with it
    generator = torch.Generator(device=bench.device).manual_seed(seed)
    n_latents = getattr(sae, "n_latents", sae.cfg.d_sae)  # a CLT's latents over every layer
    device = sae.W_enc.device
    fired = torch.zeros(n_latents, dtype=torch.bool, device=device)
    for start in range(0, n_samples, 4096):
        x_in = bench.sample(min(4096, n_samples - start), generator).x_in.to(device)
        fired |= (sae.encode(x_in) != 0).reshape(-1, n_latents).any(dim=0)
    keys = ("M_GT", "M_IP", "M_GT_dec", "M_IP_dec")
    if not bool(fired.any()):
        return {**{f"{k}_live": 0.0 for k in keys}, "n_live": 0}
    scores = recovery(sae, bench, mcc=False, latents=fired, **kwargs)
    return {**{f"{k}_live": scores[k] for k in keys}, "n_live": int(fired.sum())}


def _check_fits_bench(w_enc: torch.Tensor, w_dec: torch.Tensor, bench: LinearRepresentationBench) -> None:
    if w_enc.shape[0] != bench.d_in:
        raise ValueError(
            f"the SAE's W_enc has d_in={w_enc.shape[0]} but the bench's inputs have width "
            f"{bench.d_in}; train the SAE on this bench"
        )
    if w_dec.shape[1] != bench.d_out:
        raise ValueError(
            f"the SAE's W_dec has d_out={w_dec.shape[1]} but the bench's targets have width {bench.d_out}"
        )


def clt_flat_weights(clt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A cross-layer transcoder's weights in the spaces of every layer concatenated (the LRB's ``"clt"``
    kind): ``W_enc [n_layers * d_in, n_layers * d_sae]``, block diagonal (layer ``l``'s latents read layer
    ``l``'s input only), and ``W_dec [n_layers * d_sae, n_layers * d_out]``, layer ``l``'s rows holding
    ``W_dec[l]`` in the blocks of layers ``l ..`` and zeros before. A latent's cosine with a ground-truth
    feature's concatenated direction is then the cosine of the recovery metric (DESIGN.md section 4) over
    every layer: an encoder column matches only a feature read at its own layer, a decoder row only a feature
    writing where (and only where) it writes."""
    L, d_sae, d_out = clt.cfg.n_layers, clt.cfg.d_sae, clt.cfg.d_out
    w_enc = torch.block_diag(*clt.W_enc.detach())
    w_dec = torch.zeros(L * d_sae, L * d_out, dtype=w_enc.dtype, device=w_enc.device)
    for layer in range(L):
        w_dec[layer * d_sae : (layer + 1) * d_sae, layer * d_out :] = clt.W_dec[layer].detach().flatten(1)
    return w_enc, w_dec


def _weights(sae: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(getattr(sae, "W_dec", None), torch.nn.ParameterList) and hasattr(sae.cfg, "n_layers"):
        check_finite_weights(sae, "recovery")
        return clt_flat_weights(sae)
    w_enc = getattr(sae, "W_enc", None)
    w_dec = getattr(sae, "W_dec", None)
    if not isinstance(w_enc, torch.Tensor) or not isinstance(w_dec, torch.Tensor):
        raise ValueError("recovery needs an SAE with W_enc [d_in, d_sae] and W_dec [d_sae, d_out] tensors")
    if w_enc.ndim != 2 or w_dec.ndim != 2 or w_enc.shape[1] != w_dec.shape[0]:
        raise ValueError(
            f"W_enc {tuple(w_enc.shape)} and W_dec {tuple(w_dec.shape)} are not [d_in, d_sae] and [d_sae, d_out]"
        )
    check_finite_weights(sae, "recovery", (("W_enc", w_enc), ("W_dec", w_dec)))
    return w_enc.detach(), w_dec.detach()


def check_finite_weights(sae: Any, measurement: str, named: Any = None) -> None:
    """Raise ValueError naming the first of the SAE's floating-point weights (every parameter, or ``named``:
    ``(name, tensor)`` pairs) that holds a NaN or an infinite value: no score of such an SAE means anything,
    and most would come out as a quiet 0."""
    if named is None:
        named = sae.named_parameters() if hasattr(sae, "named_parameters") else ()
    for name, weight in named:
        if weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
            bad = int((~torch.isfinite(weight)).sum())
            raise ValueError(
                f"the SAE's {name} holds {bad} NaN or infinite values, so its {measurement} cannot be measured; "
                "training diverged (lower the learning rate) or the weights were corrupted"
            )


def _kept_features(n_features: int, exclude: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    keep = torch.ones(n_features, dtype=torch.bool)
    if exclude is not None:
        keep[check_feature_indices(exclude, "exclude", n_features).flatten()] = False
    if not keep.any():
        raise ValueError("exclude removes every feature; nothing is left to score")
    return torch.nonzero(keep).flatten()
