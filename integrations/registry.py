"""Registration of sdl-anchor's architectures with SAELens's registry (idempotent, on ``import sdl_anchor``)."""

from __future__ import annotations

from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

from sdl_anchor.integrations.anchored import make_anchored_architecture
from sdl_anchor.integrations.transcoder import TRANSCODER_ACTIVATIONS, make_transcoder_architecture

ANCHORED_ACTIVATIONS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")


def register_all() -> dict[str, tuple[type, type]]:
    """Register every ``anchored_<activation>`` and ``<activation>_transcoder`` training architecture
    once; return them by name."""
    factories = {f"anchored_{a}": (make_anchored_architecture, a) for a in ANCHORED_ACTIVATIONS}
    factories.update({f"{a}_transcoder": (make_transcoder_architecture, a) for a in TRANSCODER_ACTIVATIONS})
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
