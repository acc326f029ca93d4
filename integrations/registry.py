"""Registration of sdl-anchor's architectures with SAELens's registries, on ``import sdl_anchor``.

Training architectures: ``anchored_<activation>`` (:mod:`.anchored`), ``<activation>_transcoder``
(:mod:`.transcoder`), ``<activation>_crosscoder`` (:mod:`.crosscoder`), ``<activation>_clt``
(:mod:`.cross_layer_transcoder`). Inference architectures (kinds SAELens lacks, :mod:`.inference`):
``topk_transcoder``, ``topk_skip_transcoder``, ``<standard|topk|jumprelu>_crosscoder`` and
``cross_layer_transcoder``.

Registering is idempotent: a name already held by the same class (or by the same class reloaded, i.e. the
same module and qualified name) is left as it is. A name held by a *different* class, e.g. another plugin's
``topk_transcoder``, raises a ValueError naming both, instead of leaving our users with the other class.
"""

from __future__ import annotations

from collections.abc import Callable

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sdl_anchor.integrations.anchored import ANCHORED_ARCHITECTURES
from sdl_anchor.integrations.cross_layer_transcoder import CLT_ARCHITECTURES, CLT_INFERENCE_ARCHITECTURES
from sdl_anchor.integrations.crosscoder import CROSSCODER_ARCHITECTURES
from sdl_anchor.integrations.inference import INFERENCE_ARCHITECTURES
from sdl_anchor.integrations.transcoder import TRANSCODER_ARCHITECTURES

TRAINING_ARCHITECTURES: dict[str, tuple[type, type]] = {
    **ANCHORED_ARCHITECTURES,
    **TRANSCODER_ARCHITECTURES,
    **CROSSCODER_ARCHITECTURES,
    **CLT_ARCHITECTURES,
}
ANCHORED_ACTIVATIONS = tuple(name.removeprefix("anchored_") for name in ANCHORED_ARCHITECTURES)


def _same_class(a: type, b: type) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(
    registry: dict[str, tuple[type, type]],
    register: Callable[[str, type, type], None],
    name: str,
    classes: tuple[type, type],
) -> None:
    held = registry.get(name)
    if held is None or all(_same_class(a, b) for a, b in zip(held, classes, strict=True)):
        if held is None or held != classes:
            registry.pop(name, None)
            register(name, *classes)
        return
    raise ValueError(
        f"SAELens's registry already holds {name!r} as {held[0].__module__}.{held[0].__qualname__}, not "
        f"sdl-anchor's {classes[0].__module__}.{classes[0].__qualname__}; another package registered the "
        "same architecture name. Import sdl_anchor before it, or remove one of the two"
    )


def register_all() -> dict[str, tuple[type, type]]:
    """Register every inference and training architecture of ours; return the training ones by name."""
    for name, classes in {**INFERENCE_ARCHITECTURES, **CLT_INFERENCE_ARCHITECTURES}.items():
        _register(SAE_CLASS_REGISTRY, register_sae_class, name, classes)
    for name, classes in TRAINING_ARCHITECTURES.items():
        _register(SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class, name, classes)
    return TRAINING_ARCHITECTURES
