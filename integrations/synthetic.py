"""Run SAELens's own synthetic tooling on LRB data.

``to_synthetic_model(bench)`` returns a ``sae_lens.synthetic.SyntheticModel`` whose feature
dictionary is the bench's ``features_in`` (no bias) and whose activation generator samples the LRB's
exact code distribution, so ``SyntheticSAERunner(cfg, override_synthetic_model=model)`` and
``eval_sae_on_synthetic_data(sae, model.feature_dict, model.activation_generator)`` run on LRB data.

What SAELens cannot represent exactly (only matters after ``SyntheticModel.save``, which stores a
config rather than our sampler): SAELens draws magnitudes as ``relu(mean + std * N(0, 1))``, so the
saved config approximates ``c_min + Exp(beta)`` by a folded Gaussian with the same mean and standard
deviation. Firing probabilities (per feature, children included), the hierarchy and its mutual
exclusion are saved exactly (SAELens needs two or more children for exclusion, which one child makes
moot). Transcoder and crosscoder benches have no SAELens synthetic counterpart.
"""

from __future__ import annotations

import torch
from sae_lens.synthetic import (
    ActivationGenerator,
    ConstantFiringProbabilityConfig,
    FeatureDictionary,
    HierarchyNode,
    SyntheticModel,
    SyntheticModelConfig,
    hierarchy_modifier,
)
from sae_lens.synthetic.hierarchy import Hierarchy

from sdl_anchor.lrb.bench import LinearRepresentationBench
from sdl_anchor.lrb.hierarchy import FeatureHierarchy

_EXPORT_SEED_OFFSET = 3_000_017


class LRBActivationGenerator(ActivationGenerator):
    """A SAELens ``ActivationGenerator`` that draws the LRB's exact codes (dense, as SAELens expects)."""

    def __init__(self, bench: LinearRepresentationBench, seed: int | None = None) -> None:
        config = bench.config
        probabilities = torch.full((config.n_features,), config.firing_probability)
        if config.hierarchy is not None and config.child_firing_probability is not None:
            probabilities[list(config.hierarchy.parent_of)] = config.child_firing_probability
        super().__init__(
            num_features=config.n_features,
            firing_probabilities=probabilities,
            std_firing_magnitudes=config.beta,
            mean_firing_magnitudes=config.c_min + config.beta,
            device=bench.device,
        )
        self.bench = bench
        seed = config.seed + _EXPORT_SEED_OFFSET if seed is None else seed
        self.generator = torch.Generator(device=bench.device).manual_seed(seed)

    @torch.no_grad()
    def sample(self, batch_size: int) -> torch.Tensor:
        return self.bench.sample_codes(batch_size, self.generator).dense()


def to_synthetic_model(bench: LinearRepresentationBench, seed: int | None = None) -> SyntheticModel:
    """A SAELens ``SyntheticModel`` that samples this (SAE-kind) bench exactly."""
    if bench.kind != "sae":
        raise ValueError(
            f"SAELens's synthetic tooling models SAE data only (x = W z); a {bench.kind!r} bench has "
            "no SyntheticModel counterpart. Use bench.stream(...) with our trainer instead."
        )
    config = bench.config
    generator = LRBActivationGenerator(bench, seed)
    feature_dict = FeatureDictionary(
        config.n_features, bench.d_in, bias=False, initializer=None, device=bench.device
    )
    feature_dict.feature_vectors.data = bench.features_in.clone()
    model_config = SyntheticModelConfig(
        num_features=config.n_features,
        hidden_dim=bench.d_in,
        firing_probability=ConstantFiringProbabilityConfig(probability=config.firing_probability),
        std_firing_magnitudes=config.beta,
        mean_firing_magnitudes=config.c_min + config.beta,
        bias=False,
        seed=config.seed,
    )
    return SyntheticModel(
        model_config,
        feature_dict=feature_dict,
        activation_generator=generator,
        hierarchy=_sae_lens_hierarchy(config.hierarchy),
        device=str(bench.device),
    )


def _sae_lens_hierarchy(tree: FeatureHierarchy | None) -> Hierarchy | None:
    if tree is None or not tree.children:
        return None

    def node(feature: int) -> HierarchyNode:
        kids = tree.children.get(feature, ())
        return HierarchyNode(
            feature_index=feature,
            children=[node(k) for k in kids],
            mutually_exclusive_children=tree.mutually_exclusive and len(kids) >= 2,
        )

    roots = [node(p) for p in sorted(tree.children) if p not in tree.parent_of]
    return Hierarchy(roots=roots, modifier=hierarchy_modifier(roots))
