"""Anchored SAELens SAEs (paper section 4; DESIGN.md sections 3 and 5): ``anchored_<activation>``.

Each class is SAELens's own training class of that activation plus :class:`~sdl_anchor.integrations.
anchor_mixin.AnchoredMixin` (the anchor and self-anchoring losses); the TopK family also takes the
sparse-backward step (:class:`~sdl_anchor.integrations.sparse_step.SparseTopKStepMixin`). Each config is
SAELens's config plus :class:`~sdl_anchor.integrations.anchor_mixin.AnchorConfigFields` (and
``sparse_backward`` for the TopK family). A trained anchored SAE saves as its stock SAELens inference
architecture (``standard``, ``topk``, ``jumprelu``), which ``SAE.load_from_disk`` reads without this package.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig, JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEConfig
from sae_lens.saes.standard_sae import StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from typing_extensions import override

from sdl_anchor.integrations.anchor_mixin import AnchorConfigFields, AnchoredMixin
from sdl_anchor.integrations.sparse_step import SparseBackwardConfigField, SparseTopKStepMixin


@dataclass(kw_only=True)
class AnchoredStandardTrainingSAEConfig(AnchorConfigFields, StandardTrainingSAEConfig):
    """SAELens's ``StandardTrainingSAEConfig`` (ReLU + L1) plus the anchoring fields."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "anchored_standard"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return StandardSAEConfig


class AnchoredStandardTrainingSAE(AnchoredMixin, StandardTrainingSAE):
    """SAELens's ``StandardTrainingSAE`` with the anchor loss of Eq. 22."""

    cfg: AnchoredStandardTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class AnchoredTopKTrainingSAEConfig(AnchorConfigFields, SparseBackwardConfigField, TopKTrainingSAEConfig):
    """SAELens's ``TopKTrainingSAEConfig`` plus the anchoring fields and ``sparse_backward``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "anchored_topk"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKSAEConfig


class AnchoredTopKTrainingSAE(AnchoredMixin, SparseTopKStepMixin, TopKTrainingSAE):
    """SAELens's ``TopKTrainingSAE`` with the anchor loss of Eq. 22 and the sparse-backward step."""

    cfg: AnchoredTopKTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class AnchoredBatchTopKTrainingSAEConfig(
    AnchorConfigFields, SparseBackwardConfigField, BatchTopKTrainingSAEConfig
):
    """SAELens's ``BatchTopKTrainingSAEConfig`` plus the anchoring fields and ``sparse_backward``; saves as
    SAELens's ``jumprelu``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "anchored_batchtopk"


class AnchoredBatchTopKTrainingSAE(AnchoredMixin, SparseTopKStepMixin, BatchTopKTrainingSAE):
    """SAELens's ``BatchTopKTrainingSAE`` with the anchor loss of Eq. 22 and the sparse-backward step."""

    cfg: AnchoredBatchTopKTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class AnchoredJumpReLUTrainingSAEConfig(AnchorConfigFields, JumpReLUTrainingSAEConfig):
    """SAELens's ``JumpReLUTrainingSAEConfig`` plus the anchoring fields."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "anchored_jumprelu"

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUSAEConfig


class AnchoredJumpReLUTrainingSAE(AnchoredMixin, JumpReLUTrainingSAE):
    """SAELens's ``JumpReLUTrainingSAE`` with the anchor loss of Eq. 22."""

    cfg: AnchoredJumpReLUTrainingSAEConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class AnchoredMatryoshkaBatchTopKTrainingSAEConfig(
    AnchorConfigFields, SparseBackwardConfigField, MatryoshkaBatchTopKTrainingSAEConfig
):
    """SAELens's ``MatryoshkaBatchTopKTrainingSAEConfig`` plus the anchoring fields and
    ``sparse_backward``; saves as SAELens's ``jumprelu``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "anchored_matryoshka_batchtopk"


class AnchoredMatryoshkaBatchTopKTrainingSAE(
    AnchoredMixin, SparseTopKStepMixin, MatryoshkaBatchTopKTrainingSAE
):
    """SAELens's ``MatryoshkaBatchTopKTrainingSAE`` with the anchor loss of Eq. 22 and the sparse step."""

    cfg: AnchoredMatryoshkaBatchTopKTrainingSAEConfig  # type: ignore[assignment]


ANCHORED_ARCHITECTURES: dict[str, tuple[type, type]] = {
    "anchored_standard": (AnchoredStandardTrainingSAE, AnchoredStandardTrainingSAEConfig),
    "anchored_topk": (AnchoredTopKTrainingSAE, AnchoredTopKTrainingSAEConfig),
    "anchored_batchtopk": (AnchoredBatchTopKTrainingSAE, AnchoredBatchTopKTrainingSAEConfig),
    "anchored_jumprelu": (AnchoredJumpReLUTrainingSAE, AnchoredJumpReLUTrainingSAEConfig),
    "anchored_matryoshka_batchtopk": (
        AnchoredMatryoshkaBatchTopKTrainingSAE,
        AnchoredMatryoshkaBatchTopKTrainingSAEConfig,
    ),
}
