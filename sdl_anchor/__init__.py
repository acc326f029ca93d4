"""sdl-anchor: feature anchoring, theory-guided resampling, absorption diagnostics and the Linear
Representation Bench for SAELens / TransformerLens (Tang et al., arXiv 2512.05534).

Importing the package registers its architectures with SAELens (idempotently).
"""

from sdl_anchor._version import __version__
from sdl_anchor.absorption import ActivationPatterns, activation_patterns, hierarchy_absorption
from sdl_anchor.anchoring import AnchorSet, class_mean_anchors, probe_anchors
from sdl_anchor.integrations.anchored import (
    AnchoredBatchTopKTrainingSAE,
    AnchoredBatchTopKTrainingSAEConfig,
    AnchoredJumpReLUTrainingSAE,
    AnchoredJumpReLUTrainingSAEConfig,
    AnchoredMatryoshkaBatchTopKTrainingSAE,
    AnchoredMatryoshkaBatchTopKTrainingSAEConfig,
    AnchoredStandardTrainingSAE,
    AnchoredStandardTrainingSAEConfig,
    AnchoredTopKTrainingSAE,
    AnchoredTopKTrainingSAEConfig,
)
from sdl_anchor.integrations.crosscoder import (
    BatchTopKCrosscoderTrainingSAE,
    BatchTopKCrosscoderTrainingSAEConfig,
    JumpReLUCrosscoderTrainingSAE,
    JumpReLUCrosscoderTrainingSAEConfig,
    StandardCrosscoderTrainingSAE,
    StandardCrosscoderTrainingSAEConfig,
    TopKCrosscoderTrainingSAE,
    TopKCrosscoderTrainingSAEConfig,
)
from sdl_anchor.integrations.registry import register_all
from sdl_anchor.integrations.training import train_on_bench
from sdl_anchor.integrations.transcoder import (
    BatchTopKTranscoderTrainingSAE,
    BatchTopKTranscoderTrainingSAEConfig,
    JumpReLUTranscoderTrainingSAE,
    JumpReLUTranscoderTrainingSAEConfig,
    StandardTranscoderTrainingSAE,
    StandardTranscoderTrainingSAEConfig,
    TopKTranscoderTrainingSAE,
    TopKTranscoderTrainingSAEConfig,
)
from sdl_anchor.lrb import LinearRepresentationBench, LRBBatch
from sdl_anchor.metrics import live_recovery, recovery
from sdl_anchor.resampling import ResamplingConfig

register_all()  # idempotent: importing twice (or reloading) registers nothing new

__all__ = [
    "ActivationPatterns",
    "AnchorSet",
    "AnchoredBatchTopKTrainingSAE",
    "AnchoredBatchTopKTrainingSAEConfig",
    "AnchoredJumpReLUTrainingSAE",
    "AnchoredJumpReLUTrainingSAEConfig",
    "AnchoredMatryoshkaBatchTopKTrainingSAE",
    "AnchoredMatryoshkaBatchTopKTrainingSAEConfig",
    "AnchoredStandardTrainingSAE",
    "AnchoredStandardTrainingSAEConfig",
    "AnchoredTopKTrainingSAE",
    "AnchoredTopKTrainingSAEConfig",
    "BatchTopKCrosscoderTrainingSAE",
    "BatchTopKCrosscoderTrainingSAEConfig",
    "BatchTopKTranscoderTrainingSAE",
    "BatchTopKTranscoderTrainingSAEConfig",
    "JumpReLUCrosscoderTrainingSAE",
    "JumpReLUCrosscoderTrainingSAEConfig",
    "JumpReLUTranscoderTrainingSAE",
    "JumpReLUTranscoderTrainingSAEConfig",
    "LRBBatch",
    "LinearRepresentationBench",
    "ResamplingConfig",
    "StandardCrosscoderTrainingSAE",
    "StandardCrosscoderTrainingSAEConfig",
    "StandardTranscoderTrainingSAE",
    "StandardTranscoderTrainingSAEConfig",
    "TopKCrosscoderTrainingSAE",
    "TopKCrosscoderTrainingSAEConfig",
    "TopKTranscoderTrainingSAE",
    "TopKTranscoderTrainingSAEConfig",
    "__version__",
    "activation_patterns",
    "class_mean_anchors",
    "hierarchy_absorption",
    "live_recovery",
    "probe_anchors",
    "recovery",
    "train_on_bench",
]
