"""Inference classes for the coder kinds SAELens lacks (DESIGN.md section 3), registered on import.

* ``topk_transcoder`` / ``topk_skip_transcoder``: SAELens's ``Transcoder`` (and ``SkipTranscoder``) with a
  TopK activation. A trained TopK transcoder's decoder norms are folded into its encoder on save, as
  SAELens does for TopK SAEs, so inference selects the top k of the plain pre-activations.
* ``standard_crosscoder``, ``topk_crosscoder``, ``jumprelu_crosscoder``: at inference a crosscoder is an
  SAE over the concatenation of its ``n_sources`` source activations (Lindsey et al. 2024), so each is
  SAELens's own inference SAE of that activation plus ``n_sources`` and helpers that split a
  reconstruction back into its sources. The hooks it reads are kept in ``cfg.metadata.hook_names``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopK, TopKSAE, TopKSAEConfig
from sae_lens.saes.transcoder import SkipTranscoder, Transcoder, TranscoderConfig
from sae_lens.util import filter_valid_dataclass_fields
from typing_extensions import override


@dataclasses.dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """SAELens ``TranscoderConfig`` with a TopK activation keeping ``k`` latents per token."""

    k: int = 100

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_transcoder"

    @override
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoderConfig:
        config = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            config.metadata = SAEMetadata(**config_dict["metadata"])
        return config


class TopKTranscoder(Transcoder):
    """A transcoder whose activation keeps the ``k`` largest pre-activations of each token."""

    cfg: TopKTranscoderConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return TopK(self.cfg.k)

    @override
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoder:
        return cls(TopKTranscoderConfig.from_dict(config_dict))


@dataclasses.dataclass
class TopKSkipTranscoderConfig(TopKTranscoderConfig):
    """A TopK transcoder with SAELens's learned skip connection ``x @ W_skip.T``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_skip_transcoder"


class TopKSkipTranscoder(TopKTranscoder, SkipTranscoder):
    """``W_dec topk(W_enc x + b_enc) + W_skip x + b_dec``."""

    cfg: TopKSkipTranscoderConfig  # type: ignore[assignment]

    @override
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKSkipTranscoder:
        return cls(TopKSkipTranscoderConfig.from_dict(config_dict))


class SourceBlocksMixin:
    """Per-source views of a crosscoder's concatenated input / output (training and inference classes)."""

    cfg: Any

    @property
    def n_sources(self) -> int:
        return self.cfg.n_sources

    @property
    def d_source(self) -> int:
        return self.cfg.d_in // self.cfg.n_sources

    def split_sources(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n_sources * d_source] -> [..., n_sources, d_source]``."""
        return x.unflatten(-1, (self.n_sources, self.d_source))


def validate_n_sources(cfg: Any) -> None:
    if isinstance(cfg.n_sources, bool) or not isinstance(cfg.n_sources, int) or cfg.n_sources < 2:
        raise ValueError(f"a crosscoder needs n_sources >= 2 sources, got {cfg.n_sources!r}")
    if cfg.d_in % cfg.n_sources:
        raise ValueError(
            f"a crosscoder's d_in ({cfg.d_in}) is its {cfg.n_sources} sources concatenated, so it must be "
            "a multiple of n_sources"
        )


@dataclasses.dataclass(kw_only=True)
class CrosscoderConfigFields:
    """``n_sources``: how many source activations sit side by side in ``d_in`` (at least 2)."""

    n_sources: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        validate_n_sources(self)


@dataclasses.dataclass(kw_only=True)
class StandardCrosscoderConfig(CrosscoderConfigFields, StandardSAEConfig):
    """SAELens's ``StandardSAEConfig`` over a crosscoder's concatenated sources."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "standard_crosscoder"


class StandardCrosscoder(SourceBlocksMixin, StandardSAE):
    """A ReLU crosscoder for inference: SAELens's ``StandardSAE`` over the concatenated sources."""

    cfg: StandardCrosscoderConfig  # type: ignore[assignment]


@dataclasses.dataclass(kw_only=True)
class TopKCrosscoderConfig(CrosscoderConfigFields, TopKSAEConfig):
    """SAELens's ``TopKSAEConfig`` over a crosscoder's concatenated sources."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_crosscoder"


class TopKCrosscoder(SourceBlocksMixin, TopKSAE):
    """A TopK crosscoder for inference: SAELens's ``TopKSAE`` over the concatenated sources."""

    cfg: TopKCrosscoderConfig  # type: ignore[assignment]


@dataclasses.dataclass(kw_only=True)
class JumpReLUCrosscoderConfig(CrosscoderConfigFields, JumpReLUSAEConfig):
    """SAELens's ``JumpReLUSAEConfig`` over a crosscoder's concatenated sources."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "jumprelu_crosscoder"


class JumpReLUCrosscoder(SourceBlocksMixin, JumpReLUSAE):
    """A JumpReLU (or trained BatchTopK) crosscoder for inference: SAELens's ``JumpReLUSAE`` over the
    concatenated sources."""

    cfg: JumpReLUCrosscoderConfig  # type: ignore[assignment]


INFERENCE_ARCHITECTURES: dict[str, tuple[type, type]] = {
    "topk_transcoder": (TopKTranscoder, TopKTranscoderConfig),
    "topk_skip_transcoder": (TopKSkipTranscoder, TopKSkipTranscoderConfig),
    "standard_crosscoder": (StandardCrosscoder, StandardCrosscoderConfig),
    "topk_crosscoder": (TopKCrosscoder, TopKCrosscoderConfig),
    "jumprelu_crosscoder": (JumpReLUCrosscoder, JumpReLUCrosscoderConfig),
}
