"""Absorption diagnostics: activation patterns and ground-truth absorption on synthetic hierarchies."""

from sdl_anchor.absorption.hierarchy import hierarchy_absorption, hierarchy_from_sae_lens
from sdl_anchor.absorption.patterns import ActivationPatterns, activation_patterns

__all__ = ["ActivationPatterns", "activation_patterns", "hierarchy_absorption", "hierarchy_from_sae_lens"]
