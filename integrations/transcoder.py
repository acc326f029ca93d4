"""Trainable transcoders (DESIGN.md section 3): ``<activation>_transcoder``, one explicit class per activation.

A transcoder encodes ``x_in [d_in]`` and reconstructs a different target ``x_out [d_out]`` (an MLP's
output from its input, or the LRB's ``W_r z`` from ``W_p z``): ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_out]``, loss ``||x_out - W_dec f(W_enc x_in + b_enc) - b_dec||^2`` plus the
activation's own sparsity / auxiliary losses, which see the target wherever they use a residual. With
``skip_connection=True`` the output gains SAELens ``SkipTranscoder``'s learned linear term ``x_in @ W_skip.T``
(``W_skip [d_out, d_in]``, initialised at zero).

Each class is SAELens's own training class of that activation (activation, aux loss, threshold clamps and
updates, coefficient schedules all SAELens's, run by its own ``training_forward_pass``) plus
:class:`TranscoderMixin`, which swaps the target in wherever the step reconstructs; the TopK family also
takes the sparse-backward step. Each config adds :class:`TranscoderConfigFields` (``d_out``,
``skip_connection``) and the anchoring fields. :class:`~sdl_anchor.integrations.paired_trainer.
PairedSAETrainer` hands the target over with each batch. Saved inference formats are SAELens's
``transcoder`` / ``skip_transcoder`` (ReLU) and ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder``
(JumpReLU and BatchTopK), and our ``topk_transcoder`` / ``topk_skip_transcoder`` (TopK;
:mod:`sdl_anchor.integrations.inference`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import SAEConfig, TrainStepInput, TrainStepOutput, mse_loss
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.transcoder import (
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoderConfig,
    SkipTranscoderConfig,
    TranscoderConfig,
)
from torch import nn
from typing_extensions import override

from sdl_anchor.integrations.anchor_mixin import AnchorConfigFields, AnchoredMixin
from sdl_anchor.integrations.inference import TopKSkipTranscoderConfig, TopKTranscoderConfig
from sdl_anchor.integrations.paired_trainer import check_training_target, take_training_target
from sdl_anchor.integrations.sparse_step import SparseBackwardConfigField, SparseTopKStepMixin


@dataclasses.dataclass(kw_only=True)
class TranscoderConfigFields:
    """``d_out`` (default ``d_in``), ``skip_connection``; ``b_dec`` lives in the output space, so it is never
    subtracted from the input, and inputs and targets are trained raw."""

    d_out: int | None = None
    apply_b_dec_to_input: bool = False
    skip_connection: bool = False

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in  # type: ignore[attr-defined]
        if isinstance(self.d_out, bool) or not isinstance(self.d_out, int) or self.d_out < 1:
            raise ValueError(f"d_out must be a positive integer, got {self.d_out!r}")
        if self.apply_b_dec_to_input:
            raise ValueError(
                "apply_b_dec_to_input must be False for a transcoder: b_dec lives in the output space"
            )
        if self.normalize_activations != "none":  # type: ignore[attr-defined]
            raise ValueError(
                "transcoders train on raw activations: normalize_activations must be 'none' "
                f"(got {self.normalize_activations!r}); normalise inputs and targets yourself if needed"  # type: ignore[attr-defined]
            )
        super().__post_init__()  # type: ignore[misc]
        if (
            getattr(self, "self_anchor_coefficient", 0) > 0
            and getattr(self, "self_anchor_target", "") == "decoder"
        ):
            raise ValueError(
                "self_anchor_target='decoder' ties each encoder column to its decoder row, but a transcoder's "
                "encoder reads inputs and its decoder writes outputs (different spaces); use "
                "self_anchor_target='inputs'"
            )


class TranscoderMixin:
    """Output-space decoder and a target-aware training step for any SAELens TrainingSAE."""

    cfg: Any
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    W_skip: nn.Parameter
    _training_target: torch.Tensor | None = None
    _step: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, target) during a training step

    def __init__(self, cfg: Any, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)  # type: ignore[call-arg]
        self.mse_loss_fn = self.target_mse_loss

    @override
    @torch.no_grad()
    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]
        d_sae, d_out = self.cfg.d_sae, self.cfg.d_out
        if self.cfg.skip_connection:
            self.W_skip = nn.Parameter(
                torch.zeros(d_out, self.cfg.d_in, dtype=self.W_dec.dtype, device=self.W_dec.device)
            )
        if self.W_dec.shape == (d_sae, d_out):
            return
        w_dec = torch.empty(d_sae, d_out, dtype=self.W_dec.dtype, device=self.W_dec.device)
        nn.init.kaiming_uniform_(w_dec)
        if self.cfg.decoder_init_norm is not None:
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * self.cfg.decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=w_dec.dtype, device=w_dec.device))

    @override
    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """As SAELens's ``Transcoder``: no decoder-bias subtraction (``b_dec`` lives in the output space)."""
        sae_in = self.hook_sae_input(sae_in.to(self.W_dec.dtype))  # type: ignore[attr-defined]
        return self.run_time_activation_norm_fn_in(sae_in)  # type: ignore[attr-defined]

    def transcode(self, sae_in: torch.Tensor, feature_acts: torch.Tensor) -> torch.Tensor:
        """The output ``decode(feature_acts)``, plus ``sae_in @ W_skip.T`` with a skip connection."""
        sae_out = self.decode(feature_acts)  # type: ignore[attr-defined]
        if self.cfg.skip_connection:
            sae_out = sae_out + sae_in @ self.W_skip.T
        return sae_out

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x_in [..., d_in] -> x_out [..., d_out]``, as SAELens's inference transcoders compute it."""
        return self.transcode(x.to(self.W_dec.dtype), self.encode(x))  # type: ignore[attr-defined]

    def set_training_target(self, target: torch.Tensor) -> None:
        """The target ``[batch, d_out]`` of the next training step (set by PairedSAETrainer)."""
        expected = f"transcoder targets must be [batch, {self.cfg.d_out}]"
        self._training_target = check_training_target(target, self.cfg.d_out, expected)

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """SAELens's own step of the base architecture (its threshold clamps and updates, aux losses and
        coefficient handling included), with the target in place of the input wherever the step
        reconstructs: the MSE loss, the aux losses' residual and the output's ``sae_in``."""
        target = take_training_target(
            self,
            step_input,
            "a transcoder trains on (input, target) pairs: train it with sdl_anchor's PairedSAETrainer "
            "or train_on_bench on a transcoder bench",
        ).to(step_input.sae_in.device, step_input.sae_in.dtype)
        self._step = (step_input.sae_in, target)
        try:
            output = super().training_forward_pass(step_input)  # type: ignore[misc]
        finally:
            self._step = None
        output.sae_in = target  # SAELens logs explained variance of sae_out against this
        return output

    def reconstruction_target(self, step_input: TrainStepInput) -> torch.Tensor:
        return self._step[1] if self._step is not None else step_input.sae_in

    def skip_output(self, sae_in: torch.Tensor) -> torch.Tensor | None:
        return sae_in @ self.W_skip.T if self.cfg.skip_connection else None

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """The base decoder; inside a training step, plus the skip term of that step's input."""
        sae_out = super().decode(feature_acts)  # type: ignore[misc]
        if self._step is not None and self.cfg.skip_connection:
            sae_out = sae_out + self.skip_output(self._step[0].to(sae_out.dtype))
        return sae_out

    def target_mse_loss(self, sae_out: torch.Tensor, sae_in: torch.Tensor) -> torch.Tensor:
        """SAELens's ``mse_loss`` against the step's target (the base step passes its input)."""
        return mse_loss(sae_out, self._step[1] if self._step is not None else sae_in)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> Any:
        """The base aux losses, with the target as the residual's reference."""
        return super().calculate_aux_loss(  # type: ignore[misc]
            step_input=dataclasses.replace(step_input, sae_in=self.reconstruction_target(step_input)),
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            sae_out=sae_out,
        )


@dataclasses.dataclass(kw_only=True)
class StandardTranscoderTrainingSAEConfig(
    AnchorConfigFields, TranscoderConfigFields, StandardTrainingSAEConfig
):
    """SAELens's ``StandardTrainingSAEConfig`` (ReLU + L1) as a transcoder, with the anchoring fields; saves as
    SAELens's ``transcoder`` (``skip_transcoder``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "standard_transcoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return SkipTranscoderConfig if self.skip_connection else TranscoderConfig


class StandardTranscoderTrainingSAE(AnchoredMixin, TranscoderMixin, StandardTrainingSAE):
    """SAELens's ``StandardTrainingSAE`` trained as a transcoder."""

    cfg: StandardTranscoderTrainingSAEConfig  # type: ignore[assignment]


@dataclasses.dataclass(kw_only=True)
class TopKTranscoderTrainingSAEConfig(
    AnchorConfigFields, TranscoderConfigFields, SparseBackwardConfigField, TopKTrainingSAEConfig
):
    """SAELens's ``TopKTrainingSAEConfig`` as a transcoder, with the anchoring fields and ``sparse_backward``;
    saves as our ``topk_transcoder`` (``topk_skip_transcoder``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_transcoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKSkipTranscoderConfig if self.skip_connection else TopKTranscoderConfig


class TopKTranscoderTrainingSAE(AnchoredMixin, TranscoderMixin, SparseTopKStepMixin, TopKTrainingSAE):
    """SAELens's ``TopKTrainingSAE`` trained as a transcoder, with the sparse-backward step."""

    cfg: TopKTranscoderTrainingSAEConfig  # type: ignore[assignment]


@dataclasses.dataclass(kw_only=True)
class BatchTopKTranscoderTrainingSAEConfig(
    AnchorConfigFields, TranscoderConfigFields, SparseBackwardConfigField, BatchTopKTrainingSAEConfig
):
    """SAELens's ``BatchTopKTrainingSAEConfig`` as a transcoder, with the anchoring fields and
    ``sparse_backward``; saves as SAELens's ``jumprelu_transcoder`` (``jumprelu_skip_transcoder``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "batchtopk_transcoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUSkipTranscoderConfig if self.skip_connection else JumpReLUTranscoderConfig


class BatchTopKTranscoderTrainingSAE(
    AnchoredMixin, TranscoderMixin, SparseTopKStepMixin, BatchTopKTrainingSAE
):
    """SAELens's ``BatchTopKTrainingSAE`` trained as a transcoder, with the sparse-backward step."""

    cfg: BatchTopKTranscoderTrainingSAEConfig  # type: ignore[assignment]


@dataclasses.dataclass(kw_only=True)
class JumpReLUTranscoderTrainingSAEConfig(
    AnchorConfigFields, TranscoderConfigFields, JumpReLUTrainingSAEConfig
):
    """SAELens's ``JumpReLUTrainingSAEConfig`` as a transcoder, with the anchoring fields; saves as SAELens's
    ``jumprelu_transcoder`` (``jumprelu_skip_transcoder``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "jumprelu_transcoder"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUSkipTranscoderConfig if self.skip_connection else JumpReLUTranscoderConfig


class JumpReLUTranscoderTrainingSAE(AnchoredMixin, TranscoderMixin, JumpReLUTrainingSAE):
    """SAELens's ``JumpReLUTrainingSAE`` trained as a transcoder."""

    cfg: JumpReLUTranscoderTrainingSAEConfig  # type: ignore[assignment]


TRANSCODER_ARCHITECTURES: dict[str, tuple[type, type]] = {
    "standard_transcoder": (StandardTranscoderTrainingSAE, StandardTranscoderTrainingSAEConfig),
    "topk_transcoder": (TopKTranscoderTrainingSAE, TopKTranscoderTrainingSAEConfig),
    "batchtopk_transcoder": (BatchTopKTranscoderTrainingSAE, BatchTopKTranscoderTrainingSAEConfig),
    "jumprelu_transcoder": (JumpReLUTranscoderTrainingSAE, JumpReLUTranscoderTrainingSAEConfig),
}
