"""The sparse-backward training step of the TopK family (TopK, BatchTopK, Matryoshka BatchTopK), for SAEs,
transcoders and crosscoders, anchored or not.

SAELens's ``TopKTrainingSAE.training_forward_pass`` is dense end to end. :class:`SparseTopKStepMixin`
computes the same loss (MSE, SAELens's AuxK loss on dead latents, Matryoshka's inner losses, BatchTopK's
threshold update) with :mod:`sdl_anchor.sparse_topk`'s kernels, so that only the encoder's forward product
is dense. Its gradients equal the dense step's to float round-off (``tests/test_sparse_step.py`` checks
every architecture and coder kind against SAELens's own step on the same weights and batch), and the saved
model is the same SAELens model. TopK and BatchTopK cross-layer transcoders take the same step layer by layer
(:mod:`~sdl_anchor.integrations.clt_sparse_step`, decided by :func:`dense_step_reason` too).

Config field ``sparse_backward``: True, False, or None (the default) for "where it is measured faster",
which is the CPU (``bench perf``'s ``sparse`` rows; on a GPU the dense step is kept until measured). The
dense step is used anyway when the sparse one would not be SAELens's step: activation normalisation inside
the SAE (``layer_norm``, ``constant_norm_rescale``, ``covariance_whitening``), ``hook_z`` reshaping,
autocast, ``torch.compile``, a dtype other than float32/float64, SAELens's own ``use_sparse_activations``, Matryoshka's
``use_matryoshka_aux_loss``, and hooks attached to the SAE's hook points.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

from sdl_anchor.kernel_choice import choose_dense_product, cpu_model
from sdl_anchor.sparse_topk import (
    SparseEntries,
    batch_topk_entries,
    dense_pre_activations,
    sampled_pre_activations,
    sparse_decode,
    topk_entries,
)

SPARSE_NORMALIZATIONS = ("none", "expected_average_only_in")  # the trainer scales these outside the SAE


@dataclasses.dataclass(kw_only=True)
class SparseBackwardConfigField:
    """``sparse_backward``: True, False, or None for "where measured faster" (module docstring)."""

    sparse_backward: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.sparse_backward not in (True, False, None):
            raise ValueError(f"sparse_backward must be True, False or None, got {self.sparse_backward!r}")


def dense_step_reason(sae: Any) -> str | None:
    """Why ``sae`` must take SAELens's dense step now (None when the sparse step applies)."""
    cfg = sae.cfg
    wanted = cfg.sparse_backward
    if wanted is False:
        return "sparse_backward=False"
    if wanted is None and sae.W_enc.device.type != "cpu":
        return "sparse_backward=None keeps the dense step off the CPU (not measured faster there)"
    if cfg.normalize_activations not in SPARSE_NORMALIZATIONS:
        return f"normalize_activations={cfg.normalize_activations!r} runs inside the SAE"
    if cfg.reshape_activations != "none":
        return f"reshape_activations={cfg.reshape_activations!r}"
    if sae.W_enc.dtype not in (torch.float32, torch.float64):
        return f"dtype {sae.W_enc.dtype}"
    if torch.is_autocast_enabled(sae.W_enc.device.type):
        return "autocast"
    if torch.compiler.is_compiling():
        return "torch.compile traces the dense step (the sparse kernels are graph breaks)"
    if getattr(cfg, "use_sparse_activations", False):
        return "use_sparse_activations=True (SAELens's own sparse decoder)"
    if getattr(cfg, "use_matryoshka_aux_loss", False):
        return "use_matryoshka_aux_loss=True"
    if any(hook._forward_hooks or hook._backward_hooks for hook in sae.hook_dict.values()):
        return "hooks are attached to the SAE"
    return None


def kernel_record(sae: Any, batch_size: int) -> dict[str, Any] | None:
    """What the training step of ``sae`` at ``batch_size`` runs on, for its metadata and ``train.json``:
    ``{"step": "sparse", "dense_product": "onednn" | "addmm", "source": ..., "cpu": ..., "threads": ...,
    "seconds": {kernel: median}, "calibration_seconds": ...}`` (:mod:`sdl_anchor.kernel_choice`), or
    ``{"step": "dense", "reason": ...}``; None for a coder without the sparse step. A cross-layer
    transcoder's ``W_enc [n_layers, d_in, d_sae]`` runs one such product per layer, all of one shape."""
    if not isinstance(sae.cfg, SparseBackwardConfigField):
        return None
    reason = dense_step_reason(sae)
    if reason is not None:
        return {"step": "dense", "reason": reason}
    W_enc = sae.W_enc
    choice = choose_dense_product(batch_size, W_enc.shape[-2], W_enc.shape[-1], W_enc.dtype, W_enc.device)
    return {
        "step": "sparse",
        "dense_product": choice.choice,
        "source": choice.source,
        "cpu": cpu_model() if W_enc.device.type == "cpu" else str(W_enc.device),
        "threads": torch.get_num_threads(),
        "seconds": choice.seconds,
        "calibration_seconds": choice.calibration_seconds,
    }


def record_kernels(sae: Any, batch_size: int) -> None:
    """Keep :func:`kernel_record` in ``sae.cfg.metadata.kernels`` (saved with the coder's config)."""
    record = kernel_record(sae, batch_size)
    if record is not None:
        sae.cfg.metadata.kernels = record


class SparseTopKStepMixin:
    """Routes a TopK-family coder's ``training_forward_pass`` through the sparse-backward step."""

    cfg: Any
    W_enc: torch.nn.Parameter
    W_dec: torch.nn.Parameter
    b_enc: torch.nn.Parameter
    b_dec: torch.nn.Parameter

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if dense_step_reason(self) is not None:
            return super().training_forward_pass(step_input)  # type: ignore[misc]
        return sparse_training_forward_pass(self, step_input)

    def reconstruction_target(self, step_input: TrainStepInput) -> torch.Tensor:
        """What the step reconstructs: the input itself (a transcoder overrides this with its target)."""
        return step_input.sae_in

    def skip_output(self, sae_in: torch.Tensor) -> torch.Tensor | None:
        """A transcoder's skip term ``x @ W_skip.T``; None for SAEs and crosscoders."""
        return None


def _select(sae: Any, scores: torch.Tensor) -> SparseEntries:
    if isinstance(sae, BatchTopKTrainingSAE):
        return batch_topk_entries(scores, sae.cfg.k)
    return topk_entries(scores, sae.cfg.k)


@torch.no_grad()
def _ranking_scores(
    sae: Any, x: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``(shift, scores, norms)``: SAELens's decoder bias where ``apply_b_dec_to_input`` subtracts it (else
    None), the dense pre-activations the selection ranks (``hidden_pre``, times the decoder row norms
    ``norms`` when the coder rescales by them; else ``norms`` is None), computed without a graph."""
    shift = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    scores = dense_pre_activations(x - shift if shift is not None else x, sae.W_enc, sae.b_enc)
    norms = sae.W_dec.norm(dim=-1) if sae.cfg.rescale_acts_by_decoder_norm else None
    if norms is not None:
        scores.mul_(norms)
    return shift, scores, norms


def _pre_activations(
    sae: Any,
    scores: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor | None,
    norms: torch.Tensor | None,
    entries: SparseEntries,
) -> torch.Tensor:
    """The pre-activations ``h`` at ``entries``, differentiable in the encoder's weights. ``scores`` is
    what the selection ranked: SAELens's ``hidden_pre``, which is ``h * ||W_dec||`` when it rescales by
    decoder norm (``norms``)."""
    with torch.no_grad():
        values = entries.gather(scores)
        if norms is not None:
            values = values / norms[entries.cols]
    return sampled_pre_activations(values, x, shift, sae.W_enc, sae.b_enc, entries)


def sparse_training_forward_pass(sae: Any, step_input: TrainStepInput) -> TrainStepOutput:
    """SAELens's TopK-family ``training_forward_pass`` on the selected latents only.

    With decoder-norm rescaling SAELens decodes ``relu(h * s) * (1 / s) @ W_dec`` (``s = ||W_dec||``) and
    its AuxK loss ``(h * s) * (1 / s) @ W_dec``; the two factors of ``s`` cancel exactly, so the decoder
    input here is ``relu(h)`` (and ``h``), and ``s`` only ranks the latents. The gradient SAELens's
    autograd sends into ``W_dec`` through ``s`` is zero up to round-off, and is not computed.
    """
    x = sae.hook_sae_input(step_input.sae_in.to(sae.dtype))
    target = sae.reconstruction_target(step_input)
    shift, scores, norms = _ranking_scores(sae, x)
    entries = _select(sae, scores)
    decoder_in = _pre_activations(sae, scores, x, shift, norms, entries).relu()
    sae_out = sparse_decode(decoder_in, sae.W_dec, entries) + sae.b_dec
    skip = sae.skip_output(x)
    if skip is not None:
        sae_out = sae_out + skip
    losses = {"mse_loss": sae.mse_loss_fn(sae_out, target).sum(dim=-1).mean()}
    losses["auxiliary_reconstruction_loss"] = _auxk_loss(
        sae, step_input, x, shift, scores, norms, target, sae_out
    )
    if isinstance(sae, MatryoshkaBatchTopKTrainingSAE):
        losses.update(_matryoshka_inner_losses(sae, entries, decoder_in, target))
    acts = entries.gather(scores).relu()  # SAELens's feature_acts: the kept scores, after ReLU
    output = TrainStepOutput(
        sae_in=target,
        sae_out=sae_out,
        feature_acts=entries.coo(acts),  # sparse COO, as SAELens's use_sparse_activations
        hidden_pre=scores,
        loss=sum(losses.values()),  # type: ignore[arg-type]
        losses=losses,
    )
    if isinstance(sae, BatchTopKTrainingSAE):
        sae.update_topk_threshold(acts)  # the minimum positive activation, as from the dense acts
        output.metrics["topk_threshold"] = sae.topk_threshold
    return output


@torch.no_grad()
def sparse_forward(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(feature_acts, output)`` of a TopK-family coder on ``x``, as ``encode`` and ``decode`` (a
    transcoder's ``transcode``) give them, the decoder run on the selected latents only: the resampler's
    pass over its pool, where SAELens's dense decoder multiplies a ``[B, d_sae]`` matrix of almost all zeros.
    For coders whose ``dense_step_reason`` is None (the same conditions as the sparse step)."""
    x = sae.hook_sae_input(x.to(sae.dtype))
    _, scores, norms = _ranking_scores(sae, x)
    entries = _select(sae, scores)
    acts = entries.gather(scores).relu()
    decoder_in = acts / norms[entries.cols] if norms is not None else acts
    output = sparse_decode(decoder_in, sae.W_dec, entries) + sae.b_dec
    skip = sae.skip_output(x)
    return entries.scatter(acts), output if skip is None else output + skip


def _auxk_loss(
    sae: Any,
    step_input: TrainStepInput,
    x: torch.Tensor,
    shift: torch.Tensor | None,
    scores: torch.Tensor,
    norms: torch.Tensor | None,
    target: torch.Tensor,
    sae_out: torch.Tensor,
) -> torch.Tensor:
    """SAELens's ``calculate_topk_aux_loss``: the top ``d / 2`` dead latents reconstruct the residual."""
    dead = step_input.dead_neuron_mask
    if dead is None or (num_dead := int(dead.sum())) == 0:
        return sae_out.new_tensor(0.0)
    residual = (target - sae_out).detach()
    k_aux = target.shape[-1] // 2
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    with torch.no_grad():
        entries = topk_entries(torch.where(dead[None], scores, -torch.inf), k_aux)
    decoder_in = _pre_activations(sae, scores, x, shift, norms, entries)
    recons = sparse_decode(decoder_in, sae.W_dec, entries)
    return sae.cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(dim=-1).mean()


def _matryoshka_inner_losses(
    sae: Any, entries: SparseEntries, decoder_in: torch.Tensor, target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Matryoshka's nested reconstruction losses, one per inner width (the outer one is ``mse_loss``)."""
    losses = {}
    decoded = sae.b_dec
    previous = 0
    for width in sae.cfg.matryoshka_widths[:-1]:
        level = (entries.cols >= previous) & (entries.cols < width)
        decoded = sparse_decode(decoder_in[level], sae.W_dec, entries.select(level)) + decoded
        losses[f"inner_mse_loss_{width}"] = sae.mse_loss_fn(decoded, target).sum(dim=-1).mean()
        previous = width
    return losses
