"""The sparse-backward training step of TopK and BatchTopK cross-layer transcoders (``topk_clt``,
``batchtopk_clt``): the CLT's version of :mod:`~sdl_anchor.integrations.sparse_step`, on the same kernels
(:mod:`sdl_anchor.sparse_topk`) and under the same decision (:func:`~sdl_anchor.integrations.sparse_step.
dense_step_reason`: config field ``sparse_backward`` True, False or None, the default, for "on the CPU, where
measured faster"; the dense step whenever the sparse one would not be the dense step's computation).

For each layer position ``l``:

* the dense pre-activations ``x_l W_enc[l] + b_enc[l]`` (times the decoder norms with
  ``rescale_acts_by_decoder_norm``), computed without a graph, rank the latents
  (:func:`~sdl_anchor.sparse_topk.dense_pre_activations`, the step's only dense products);
* TopK keeps each token's ``k`` largest (:func:`~sdl_anchor.sparse_topk.topk_entries`), BatchTopK the batch's
  ``k * B`` largest after ReLU (:func:`~sdl_anchor.sparse_topk.batch_topk_entries`), as the dense step's
  ``TopK`` / ``BatchTopK`` on that layer's latents;
* the kept pre-activations come back differentiable through
  :func:`~sdl_anchor.sparse_topk.sampled_pre_activations` (a sparse encoder backward into ``W_enc[l]``,
  ``b_enc[l]``);
* :func:`~sdl_anchor.sparse_topk.sparse_decode` multiplies them by ``W_dec[l]`` viewed as
  ``[d_sae, (n_layers - l) * d_out]``, which writes layers ``l ..``; the layers' writes are summed, plus
  ``b_dec``.

The AuxK loss is the dense step's (each layer's top ``d_out / 2`` dead latents by their ranking score, decoded
the same way, reconstruct the residual of every layer, scaled by ``min(dead / (k_aux * n_layers), 1)``), the
anchor loss is unchanged, and a BatchTopK CLT updates its per-layer thresholds from the kept activations as
from the dense ones. ``feature_acts`` is a sparse COO ``[batch, n_layers * d_sae]`` matrix (as the other
coders' sparse step returns it), ``hidden_pre`` the dense ranking scores without a graph.

With decoder-norm rescaling the dense step decodes ``relu(h * s) / s`` (``s`` the norm); here the decoder
input is ``relu(h)``: the factors cancel exactly, and the gradient the dense step sends into ``W_dec``
through ``s`` is zero up to round-off and is not computed (as in the other coders' sparse step).
``tests/test_sparse_step.py`` checks the loss, every loss term, every gradient and the threshold update
against the dense CLT step on the same weights and batch.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.saes.sae import TrainStepInput
from torch import nn

from sdl_anchor.sparse_topk import (
    SparseEntries,
    batch_topk_entries,
    dense_pre_activations,
    sampled_pre_activations,
    sparse_decode,
    topk_entries,
)


class _Layer:
    """One layer position's share of the step: its input, its (differentiable) weights, its ranking scores
    and decoder norms."""

    def __init__(
        self,
        layer: int,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        scores: torch.Tensor,
        norms: torch.Tensor | None,
    ) -> None:
        self.layer = layer
        self.x = x  # [B, d_in], contiguous
        self.W_enc = W_enc  # [d_in, d_sae]
        self.b_enc = b_enc  # [d_sae]
        self.W_dec = W_dec  # [d_sae, (n_layers - layer) * d_out]
        self.scores = scores  # [B, d_sae]: the ranking scores (no graph)
        self.norms = norms  # [d_sae], or None without decoder-norm rescaling

    def pre_activations(self, entries: SparseEntries) -> torch.Tensor:
        """The pre-activations ``h`` at ``entries``, differentiable in ``W_enc[l]`` and ``b_enc[l]`` (the
        scores divided by the decoder norms they were ranked with)."""
        with torch.no_grad():
            values = entries.gather(self.scores)
            if self.norms is not None:
                values = values / self.norms[entries.cols]
        return sampled_pre_activations(values, self.x, None, self.W_enc, self.b_enc, entries)

    def decode(self, values: torch.Tensor, entries: SparseEntries, d_out: int) -> torch.Tensor:
        """``[B, n_layers * d_out]``: what these latents write, zero for the layers before ``l``."""
        written = sparse_decode(values, self.W_dec, entries)
        return nn.functional.pad(written, (self.layer * d_out, 0))


def _layers(sae: Any, x: torch.Tensor) -> tuple[list[_Layer], torch.Tensor]:
    """Each layer's share of the step, and ``hidden_pre [B, n_layers, d_sae]`` (the ranking scores; each
    layer's ``scores`` is a view of it). The encoder's weights are split with ``unbind``, whose backward
    stacks the layers' gradients once (indexing would add a zero-filled ``W_enc``-sized gradient per layer)."""
    L, d_in, d_sae = sae.n_layers, sae.cfg.d_in, sae.cfg.d_sae
    inputs = sae.split_layers(x, d_in, "inputs")
    W_encs, b_encs = sae.W_enc.unbind(0), sae.b_enc.unbind(0)
    with torch.no_grad():
        norms = sae._decoder_scale()
        hidden_pre = x.new_empty(x.shape[0], L, d_sae)
    layers = []
    for layer in range(L):
        x_l = inputs[:, layer].contiguous()
        with torch.no_grad():
            hidden_pre[:, layer] = dense_pre_activations(x_l, W_encs[layer], b_encs[layer])
            scores = hidden_pre[:, layer]
            if norms is not None:
                scores.mul_(norms[layer])
        W_dec = sae.W_dec[layer].flatten(1)
        layer_norms = None if norms is None else norms[layer]
        layers.append(_Layer(layer, x_l, W_encs[layer], b_encs[layer], W_dec, scores, layer_norms))
    return layers, hidden_pre


def _select(sae: Any, scores: torch.Tensor) -> SparseEntries:
    from sdl_anchor.integrations.cross_layer_transcoder import BatchTopKCLTTrainingSAE

    if isinstance(sae, BatchTopKCLTTrainingSAE):
        return batch_topk_entries(scores, sae.cfg.k)
    return topk_entries(scores, int(sae.cfg.k))


def _flat_coo(selected: list[tuple[SparseEntries, torch.Tensor]], n_rows: int, d_sae: int) -> torch.Tensor:
    """The sparse COO ``[n_rows, n_layers * d_sae]`` matrix of every layer's kept activations, row-major."""
    rows = torch.cat([entries.rows for entries, _ in selected])
    cols = torch.cat([entries.cols + layer * d_sae for layer, (entries, _) in enumerate(selected)])
    values = torch.cat([acts for _, acts in selected])
    order = torch.argsort(rows, stable=True)  # layers in order within a row: columns ascending
    return SparseEntries(rows[order], cols[order], n_rows, len(selected) * d_sae).coo(values[order])


def sparse_clt_step(
    sae: Any, step_input: TrainStepInput, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(sae_out, feature_acts, hidden_pre, losses)`` of a TopK or BatchTopK CLT's training step on the
    selected latents only (module docstring): ``losses`` holds ``mse_loss`` and
    ``auxiliary_reconstruction_loss``, as the dense step's; the anchor loss is the caller's."""
    sae.check_k()
    d_out = sae.cfg.d_out
    x = sae.hook_sae_input(step_input.sae_in.to(sae.dtype))
    layers, hidden_pre = _layers(sae, x)
    total = None
    selected = []
    for part in layers:
        entries = _select(sae, part.scores)
        written = part.decode(part.pre_activations(entries).relu(), entries, d_out)
        total = written if total is None else total + written
        with torch.no_grad():
            selected.append((entries, entries.gather(part.scores).relu()))  # the dense step's feature_acts
    sae_out = total + sae.b_dec.flatten()  # type: ignore[operator]
    losses = {
        "mse_loss": sae.mse_loss_fn(sae_out, target).sum(dim=-1).mean(),
        "auxiliary_reconstruction_loss": _auxk_loss(sae, step_input, layers, target, sae_out),
    }
    return sae_out, _flat_coo(selected, x.shape[0], sae.cfg.d_sae), hidden_pre.flatten(1), losses


def _auxk_loss(
    sae: Any, step_input: TrainStepInput, layers: list[_Layer], target: torch.Tensor, sae_out: torch.Tensor
) -> torch.Tensor:
    """The dense CLT step's AuxK loss (``TopKCLTTrainingSAE.calculate_aux_loss``) on each layer's top
    ``k_aux`` dead latents only."""
    dead = step_input.dead_neuron_mask
    if dead is None or (num_dead := int(dead.sum())) == 0:
        return sae_out.new_tensor(0.0)
    dead = dead.reshape(sae.n_layers, sae.cfg.d_sae).bool()
    residual = (target - sae_out).detach()
    k_aux = min(sae.cfg.d_out // 2, sae.cfg.d_sae)
    scale = min(num_dead / (k_aux * sae.n_layers), 1.0)
    recons = None
    for part in layers:
        layer_dead = dead[part.layer]
        if not layer_dead.any():
            continue
        with torch.no_grad():
            entries = topk_entries(torch.where(layer_dead[None], part.scores, -torch.inf), k_aux)
            entries = entries.select(layer_dead[entries.cols])  # a layer with fewer dead latents than k_aux
        written = part.decode(part.pre_activations(entries), entries, sae.cfg.d_out)
        recons = written if recons is None else recons + written
    loss = (recons - residual).pow(2).sum(dim=-1).mean()  # type: ignore[operator]
    return sae.cfg.aux_loss_coefficient * scale * loss
