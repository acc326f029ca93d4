"""Trainable crosscoders (Lindsey et al. 2024; DESIGN.md section 3), from SAELens's own SAE training classes.

A crosscoder reads ``n_sources`` activations (layers, or models) at once and reconstructs every one of them
from a single set of latents. With the sources concatenated, ``x = [x^1, ..., x^L]`` (``d_in = L * d``),

    f(x) = act(sum_l W_enc^l x^l + b_enc) = act(x W_enc + b_enc),    x_hat^l = f(x) W_dec^l + b_dec^l,

so the forward pass is SAELens's SAE over the concatenation. What makes it a crosscoder is the sparsity
penalty, which weights each latent by the *sum* of its per-source decoder norms,

    L_sparsity = sum_i f_i(x) * sum_l ||W_dec_i^l||,

instead of the norm of the whole decoder row (an L1 over sources, so a latent pays for every source it
writes to). Each ``<Activation>CrosscoderTrainingSAE`` is SAELens's ``<activation>`` training SAE plus
:class:`CrosscoderMixin`, which swaps this norm into the activation's own penalty terms: the L1 loss of ``standard``, and the ``tanh``
sparsity loss and pre-activation loss of ``jumprelu`` (its ``step`` L0 loss does not use decoder norms).
TopK and BatchTopK have no sparsity penalty; their optional rescaling by decoder norm
(``rescale_acts_by_decoder_norm``) keeps SAELens's whole-row norm, which is what makes the saved model an
exact SAELens TopK / JumpReLU SAE over the concatenation.

Every training step also reports the reconstruction loss of each source (``metrics/mse_source_<l>``). The
saved inference model is ours (``standard_crosscoder``, ``topk_crosscoder``, ``jumprelu_crosscoder``, see
:mod:`sdl_anchor.integrations.inference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, calculate_pre_act_loss
from sae_lens.saes.sae import SAEConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from typing_extensions import override

from sdl_anchor.integrations.anchor_mixin import AnchorConfigFields, AnchoredMixin
from sdl_anchor.integrations.inference import (
    CrosscoderConfigFields,
    JumpReLUCrosscoderConfig,
    SourceBlocksMixin,
    StandardCrosscoderConfig,
    TopKCrosscoderConfig,
)
from sdl_anchor.integrations.sparse_step import SparseBackwardConfigField, SparseTopKStepMixin


def source_decoder_norms(W_dec: torch.Tensor, n_sources: int) -> torch.Tensor:
    """``||W_dec_i^l||`` for every latent ``i`` and source ``l``: ``[d_sae, n_sources]``."""
    return W_dec.unflatten(-1, (n_sources, -1)).norm(dim=-1)


def crosscoder_decoder_norm(W_dec: torch.Tensor, n_sources: int) -> torch.Tensor:
    """The crosscoder's latent weight ``sum_l ||W_dec_i^l||`` (Lindsey et al. 2024): ``[d_sae]``."""
    return source_decoder_norms(W_dec, n_sources).sum(dim=-1)


class CrosscoderMixin(SourceBlocksMixin):
    """The block decoder-norm penalty and per-source losses, on any SAELens TrainingSAE."""

    W_dec: torch.nn.Parameter

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if isinstance(self, StandardTrainingSAE):
            weighted = feature_acts * crosscoder_decoder_norm(self.W_dec, self.n_sources)
            sparsity = weighted.norm(p=self.cfg.lp_norm, dim=-1)
            return {"l1_loss": (step_input.coefficients["l1"] * sparsity).mean()}
        losses = super().calculate_aux_loss(  # type: ignore[misc]
            step_input=step_input, feature_acts=feature_acts, hidden_pre=hidden_pre, sae_out=sae_out
        )
        if not isinstance(self, JumpReLUTrainingSAE):
            return losses
        norm = crosscoder_decoder_norm(self.W_dec, self.n_sources)
        if self.cfg.jumprelu_sparsity_loss_mode == "tanh":
            per_item = torch.tanh(self.cfg.jumprelu_tanh_scale * feature_acts * norm).sum(dim=-1)
            losses["l0_loss"] = (step_input.coefficients["l0"] * per_item).mean()
        if self.cfg.pre_act_loss_coefficient is not None:
            losses["pre_act_loss"] = calculate_pre_act_loss(
                self.cfg.pre_act_loss_coefficient,
                self.threshold.to(hidden_pre.dtype),  # type: ignore[attr-defined]
                hidden_pre,
                step_input.dead_neuron_mask,
                norm,
            )
        return losses

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)  # type: ignore[misc]
        residual = (output.sae_out - output.sae_in).detach()
        for source in range(self.n_sources):
            block = slice(source * self.d_source, (source + 1) * self.d_source)
            output.metrics[f"mse_source_{source}"] = lambda block=block: (
                residual[:, block].pow(2).sum(dim=-1).mean()
            )
        return output


@dataclass(kw_only=True)
class StandardCrosscoderTrainingSAEConfig(
    AnchorConfigFields, CrosscoderConfigFields, StandardTrainingSAEConfig
):
    """SAELens's ``StandardTrainingSAEConfig`` (ReLU + L1) as a crosscoder over ``n_sources`` concatenated
    sources (``d_in = n_sources * d_source``), with the anchoring fields; saves as ``standard_crosscoder``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "standard_crosscoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return StandardCrosscoderConfig


class StandardCrosscoderTrainingSAE(AnchoredMixin, CrosscoderMixin, StandardTrainingSAE):
    """SAELens's ``StandardTrainingSAE`` trained as a crosscoder (block decoder-norm L1 penalty)."""

    cfg: StandardCrosscoderTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TopKCrosscoderTrainingSAEConfig(
    AnchorConfigFields, CrosscoderConfigFields, SparseBackwardConfigField, TopKTrainingSAEConfig
):
    """SAELens's ``TopKTrainingSAEConfig`` as a crosscoder, with the anchoring fields and
    ``sparse_backward``; saves as ``topk_crosscoder``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_crosscoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKCrosscoderConfig


class TopKCrosscoderTrainingSAE(AnchoredMixin, CrosscoderMixin, SparseTopKStepMixin, TopKTrainingSAE):
    """SAELens's ``TopKTrainingSAE`` trained as a crosscoder, with the sparse-backward step."""

    cfg: TopKCrosscoderTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class BatchTopKCrosscoderTrainingSAEConfig(
    AnchorConfigFields, CrosscoderConfigFields, SparseBackwardConfigField, BatchTopKTrainingSAEConfig
):
    """SAELens's ``BatchTopKTrainingSAEConfig`` as a crosscoder, with the anchoring fields and
    ``sparse_backward``; saves as ``jumprelu_crosscoder``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "batchtopk_crosscoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUCrosscoderConfig


class BatchTopKCrosscoderTrainingSAE(
    AnchoredMixin, CrosscoderMixin, SparseTopKStepMixin, BatchTopKTrainingSAE
):
    """SAELens's ``BatchTopKTrainingSAE`` trained as a crosscoder, with the sparse-backward step."""

    cfg: BatchTopKCrosscoderTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class JumpReLUCrosscoderTrainingSAEConfig(
    AnchorConfigFields, CrosscoderConfigFields, JumpReLUTrainingSAEConfig
):
    """SAELens's ``JumpReLUTrainingSAEConfig`` as a crosscoder, with the anchoring fields; saves as
    ``jumprelu_crosscoder``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "jumprelu_crosscoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUCrosscoderConfig


class JumpReLUCrosscoderTrainingSAE(AnchoredMixin, CrosscoderMixin, JumpReLUTrainingSAE):
    """SAELens's ``JumpReLUTrainingSAE`` trained as a crosscoder (block decoder-norm penalties)."""

    cfg: JumpReLUCrosscoderTrainingSAEConfig  # type: ignore[assignment]


CROSSCODER_ARCHITECTURES: dict[str, tuple[type, type]] = {
    "standard_crosscoder": (StandardCrosscoderTrainingSAE, StandardCrosscoderTrainingSAEConfig),
    "topk_crosscoder": (TopKCrosscoderTrainingSAE, TopKCrosscoderTrainingSAEConfig),
    "batchtopk_crosscoder": (BatchTopKCrosscoderTrainingSAE, BatchTopKCrosscoderTrainingSAEConfig),
    "jumprelu_crosscoder": (JumpReLUCrosscoderTrainingSAE, JumpReLUCrosscoderTrainingSAEConfig),
}
