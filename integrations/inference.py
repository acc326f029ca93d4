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
from sae_lens.registry import get_sae_class
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopK
from sae_lens.saes.transcoder import SkipTranscoder, Transcoder, TranscoderConfig
from sae_lens.util import filter_valid_dataclass_fields

from sdl_anchor.integrations.anchored import camel_name


@dataclasses.dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """SAELens ``TranscoderConfig`` with a TopK activation keeping ``k`` latents per token."""

    k: int = 100

    @classmethod
    def architecture(cls) -> str:
        return "topk_transcoder"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoderConfig:
        config = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            config.metadata = SAEMetadata(**config_dict["metadata"])
        return config


class TopKTranscoder(Transcoder):
    """A transcoder whose activation keeps the ``k`` largest pre-activations of each token."""

    cfg: TopKTranscoderConfig  # type: ignore[assignment]

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return TopK(self.cfg.k)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoder:
        return cls(TopKTranscoderConfig.from_dict(config_dict))


@dataclasses.dataclass
class TopKSkipTranscoderConfig(TopKTranscoderConfig):
    """A TopK transcoder with SAELens's learned skip connection ``x @ W_skip.T``."""

    @classmethod
    def architecture(cls) -> str:
        return "topk_skip_transcoder"


class TopKSkipTranscoder(TopKTranscoder, SkipTranscoder):
    """``W_dec topk(W_enc x + b_enc) + W_skip x + b_dec``."""

    cfg: TopKSkipTranscoderConfig  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKSkipTranscoder:
        return cls(TopKSkipTranscoderConfig.from_dict(config_dict))


CROSSCODER_INFERENCE_BASES = ("standard", "topk", "jumprelu")


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


def make_crosscoder_inference_architecture(base: str) -> tuple[type, type]:
    """``(<Base>Crosscoder, <Base>CrosscoderConfig)``: SAELens's ``base`` inference SAE over concatenated
    sources, named ``<base>_crosscoder``."""
    base_sae, base_config = get_sae_class(base)
    architecture = f"{base}_crosscoder"
    camel = camel_name(base)

    def post_init(self: Any) -> None:
        base_config.__post_init__(self)
        validate_n_sources(self)

    config_class = dataclasses.make_dataclass(
        f"{camel}CrosscoderConfig",
        [("n_sources", int, dataclasses.field(default=2))],
        bases=(base_config,),
        kw_only=True,
        namespace={
            "architecture": classmethod(lambda cls: architecture),
            "__post_init__": post_init,
            "__doc__": f"SAELens {base_config.__name__} over {architecture}'s concatenated sources.",
            "__module__": __name__,
        },
    )
    sae_class = type(
        f"{camel}Crosscoder",
        (SourceBlocksMixin, base_sae),
        {"__doc__": f"A crosscoder for inference: SAELens's {base_sae.__name__}.", "__module__": __name__},
    )
    return sae_class, config_class


def inference_architectures() -> dict[str, tuple[type, type]]:
    """Every inference architecture this module defines, by name."""
    architectures = {
        "topk_transcoder": (TopKTranscoder, TopKTranscoderConfig),
        "topk_skip_transcoder": (TopKSkipTranscoder, TopKSkipTranscoderConfig),
    }
    for base in CROSSCODER_INFERENCE_BASES:
        architectures[f"{base}_crosscoder"] = make_crosscoder_inference_architecture(base)
    return architectures
