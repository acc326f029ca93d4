"""Trainable crosscoders (Lindsey et al. 2024; DESIGN.md section 3), from SAELens's own SAE training classes.

A crosscoder reads ``n_sources`` activations (layers, or models) at once and reconstructs every one of them
from a single set of latents. With the sources concatenated, ``x = [x^1, ..., x^L]`` (``d_in = L * d``),

    f(x) = act(sum_l W_enc^l x^l + b_enc) = act(x W_enc + b_enc),    x_hat^l = f(x) W_dec^l + b_dec^l,

so the forward pass is SAELens's SAE over the concatenation. What makes it a crosscoder is the sparsity
penalty, which weights each latent by the *sum* of its per-source decoder norms,

    L_sparsity = sum_i f_i(x) * sum_l ||W_dec_i^l||,

instead of the norm of the whole decoder row (an L1 over sources, so a latent pays for every source it
writes to). ``make_crosscoder_architecture(activation)`` subclasses SAELens's ``<activation>`` training SAE
and swaps this norm into the activation's own penalty terms: the L1 loss of ``standard``, and the ``tanh``
sparsity loss and pre-activation loss of ``jumprelu`` (its ``step`` L0 loss does not use decoder norms).
TopK and BatchTopK have no sparsity penalty; their optional rescaling by decoder norm
(``rescale_acts_by_decoder_norm``) keeps SAELens's whole-row norm, which is what makes the saved model an
exact SAELens TopK / JumpReLU SAE over the concatenation.

Every training step also reports the reconstruction loss of each source (``metrics/mse_source_<l>``). The
saved inference model is ours (``standard_crosscoder``, ``topk_crosscoder``, ``jumprelu_crosscoder``, see
:mod:`sdl_anchor.integrations.inference`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.jumprelu_sae import calculate_pre_act_loss
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from sdl_anchor.integrations.anchored import (
    ANCHOR_CONFIG_FIELDS,
    AnchoredMixin,
    camel_name,
    derive_training_config,
    step_config_fields,
    step_mixins,
    validate_anchor_fields,
)
from sdl_anchor.integrations.inference import SourceBlocksMixin, validate_n_sources

CROSSCODER_ACTIVATIONS = ("standard", "topk", "batchtopk", "jumprelu")
# training activation -> inference architecture of the saved crosscoder
INFERENCE_ARCHITECTURES = {
    "standard": "standard_crosscoder",
    "topk": "topk_crosscoder",
    "batchtopk": "jumprelu_crosscoder",
    "jumprelu": "jumprelu_crosscoder",
}


def source_decoder_norms(W_dec: torch.Tensor, n_sources: int) -> torch.Tensor:
    """``||W_dec_i^l||`` for every latent ``i`` and source ``l``: ``[d_sae, n_sources]``."""
    return W_dec.unflatten(-1, (n_sources, -1)).norm(dim=-1)


def crosscoder_decoder_norm(W_dec: torch.Tensor, n_sources: int) -> torch.Tensor:
    """The crosscoder's latent weight ``sum_l ||W_dec_i^l||`` (Lindsey et al. 2024): ``[d_sae]``."""
    return source_decoder_norms(W_dec, n_sources).sum(dim=-1)


class CrosscoderMixin(SourceBlocksMixin):
    """The block decoder-norm penalty and per-source losses, on any SAELens TrainingSAE."""

    W_dec: torch.nn.Parameter

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        activation = self.cfg.crosscoder_activation
        if activation == "standard":
            weighted = feature_acts * crosscoder_decoder_norm(self.W_dec, self.n_sources)
            sparsity = weighted.norm(p=self.cfg.lp_norm, dim=-1)
            return {"l1_loss": (step_input.coefficients["l1"] * sparsity).mean()}
        losses = super().calculate_aux_loss(  # type: ignore[misc]
            step_input=step_input, feature_acts=feature_acts, hidden_pre=hidden_pre, sae_out=sae_out
        )
        if activation != "jumprelu":
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

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)  # type: ignore[misc]
        residual = (output.sae_out - output.sae_in).detach()
        for source in range(self.n_sources):
            block = slice(source * self.d_source, (source + 1) * self.d_source)
            output.metrics[f"mse_source_{source}"] = lambda block=block: (
                residual[:, block].pow(2).sum(dim=-1).mean()
            )
        return output


def make_crosscoder_architecture(activation: str) -> tuple[type, type]:
    """``(<Activation>CrosscoderTrainingSAE, config)`` built on SAELens's ``activation`` classes."""
    if activation not in CROSSCODER_ACTIVATIONS:
        raise ValueError(f"no crosscoder for activation {activation!r}; choose from {CROSSCODER_ACTIVATIONS}")
    base_sae, base_config = get_sae_training_class(activation)
    architecture = f"{activation}_crosscoder"
    camel = camel_name(activation)

    def post_init(self: Any) -> None:
        base_config.__post_init__(self)
        validate_n_sources(self)
        validate_anchor_fields(self)

    def get_inference_config_class(self: Any) -> type:
        return get_sae_class(INFERENCE_ARCHITECTURES[activation])[1]

    config_class = derive_training_config(
        base_config,
        f"{camel}CrosscoderTrainingSAEConfig",
        architecture,
        [
            ("n_sources", int, dataclasses.field(default=2)),
            *ANCHOR_CONFIG_FIELDS,
            *step_config_fields(activation),
        ],
        post_init=post_init,
        get_inference_config_class=get_inference_config_class,
        doc=f"SAELens {base_config.__name__} as a crosscoder over n_sources concatenated sources "
        "(d_in = n_sources * d_source), with anchoring fields.",
        module=__name__,
        crosscoder_activation=activation,
    )
    sae_class = type(
        f"{camel}CrosscoderTrainingSAE",
        (AnchoredMixin, CrosscoderMixin, *step_mixins(activation), base_sae),
        {
            "__doc__": f"SAELens {base_sae.__name__} trained as a crosscoder (block decoder-norm penalty).",
            "__module__": __name__,
        },
    )
    return sae_class, config_class
