"""Registration of sdl-anchor's architectures with SAELens's registries (idempotent, on ``import sdl_anchor``).

Training architectures: ``anchored_<activation>``, ``<activation>_transcoder``, ``<activation>_crosscoder``.
Inference architectures (kinds SAELens lacks): ``topk_transcoder``, ``topk_skip_transcoder`` and
``<standard|topk|jumprelu>_crosscoder``.
"""

from __future__ import annotations

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sdl_anchor.integrations.anchored import make_anchored_architecture
from sdl_anchor.integrations.crosscoder import CROSSCODER_ACTIVATIONS, make_crosscoder_architecture
from sdl_anchor.integrations.inference import inference_architectures
from sdl_anchor.integrations.transcoder import TRANSCODER_ACTIVATIONS, make_transcoder_architecture

ANCHORED_ACTIVATIONS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")


def register_all() -> dict[str, tuple[type, type]]:
    """Register every training and inference architecture of ours once; return the training ones by name."""
    for name, classes in inference_architectures().items():
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, *classes)
    factories = {f"anchored_{a}": (make_anchored_architecture, a) for a in ANCHORED_ACTIVATIONS}
    factories.update({f"{a}_transcoder": (make_transcoder_architecture, a) for a in TRANSCODER_ACTIVATIONS})
    factories.update({f"{a}_crosscoder": (make_crosscoder_architecture, a) for a in CROSSCODER_ACTIVATIONS})
    registered: dict[str, tuple[type, type]] = {}
    for name, (factory, activation) in factories.items():
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, *factory(activation))
        registered[name] = SAE_TRAINING_CLASS_REGISTRY[name]
    return registered


ARCHITECTURES = register_all()
AnchoredStandardTrainingSAE, AnchoredStandardTrainingSAEConfig = ARCHITECTURES["anchored_standard"]
AnchoredTopKTrainingSAE, AnchoredTopKTrainingSAEConfig = ARCHITECTURES["anchored_topk"]
AnchoredBatchTopKTrainingSAE, AnchoredBatchTopKTrainingSAEConfig = ARCHITECTURES["anchored_batchtopk"]
AnchoredJumpReLUTrainingSAE, AnchoredJumpReLUTrainingSAEConfig = ARCHITECTURES["anchored_jumprelu"]
AnchoredMatryoshkaBatchTopKTrainingSAE, AnchoredMatryoshkaBatchTopKTrainingSAEConfig = ARCHITECTURES[
    "anchored_matryoshka_batchtopk"
]
StandardTranscoderTrainingSAE, StandardTranscoderTrainingSAEConfig = ARCHITECTURES["standard_transcoder"]
TopKTranscoderTrainingSAE, TopKTranscoderTrainingSAEConfig = ARCHITECTURES["topk_transcoder"]
BatchTopKTranscoderTrainingSAE, BatchTopKTranscoderTrainingSAEConfig = ARCHITECTURES["batchtopk_transcoder"]
JumpReLUTranscoderTrainingSAE, JumpReLUTranscoderTrainingSAEConfig = ARCHITECTURES["jumprelu_transcoder"]
StandardCrosscoderTrainingSAE, StandardCrosscoderTrainingSAEConfig = ARCHITECTURES["standard_crosscoder"]
TopKCrosscoderTrainingSAE, TopKCrosscoderTrainingSAEConfig = ARCHITECTURES["topk_crosscoder"]
BatchTopKCrosscoderTrainingSAE, BatchTopKCrosscoderTrainingSAEConfig = ARCHITECTURES["batchtopk_crosscoder"]
JumpReLUCrosscoderTrainingSAE, JumpReLUCrosscoderTrainingSAEConfig = ARCHITECTURES["jumprelu_crosscoder"]
