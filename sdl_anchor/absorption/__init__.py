"""Absorption diagnostics: activation patterns and ground-truth absorption on synthetic hierarchies, and the
first-letter (or any concept hierarchy) absorption metric on real models."""

from sdl_anchor.absorption.concepts import ConceptSet, first_letter_concepts
from sdl_anchor.absorption.hierarchy import hierarchy_absorption, hierarchy_from_sae_lens
from sdl_anchor.absorption.patterns import ActivationPatterns, activation_patterns
from sdl_anchor.absorption.real import concept_absorption

__all__ = [
    "ActivationPatterns",
    "ConceptSet",
    "activation_patterns",
    "concept_absorption",
    "first_letter_concepts",
    "hierarchy_absorption",
    "hierarchy_from_sae_lens",
]
