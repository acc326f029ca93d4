"""Registration of sdl-anchor's architectures with SAELens's registry (idempotent, on ``import sdl_anchor``)."""

from __future__ import annotations

from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

from sdl_anchor.integrations.anchored import make_anchored_architecture

ANCHORED_ACTIVATIONS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")


def register_all() -> dict[str, tuple[type, type]]:
    """Register every ``anchored_<activation>`` training architecture once; return them by name."""
    registered: dict[str, tuple[type, type]] = {}
    for activation in ANCHORED_ACTIVATIONS:
        name = f"anchored_{activation}"
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, *make_anchored_architecture(activation))
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
