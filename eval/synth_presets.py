"""Presets of ``sdl-anchor bench synth`` and SynthSAEBench-16k's published numbers.

Protocol (SAELens docs, "SynthSAEBench"): SAE width 4,096, lr 3e-4 (constant), batch 1,024, 200M samples,
compared at L0 = 25 and L0 = 20. BatchTopK-family SAEs reach an L0 by their k; ReLU and JumpReLU SAEs by
:class:`~sdl_anchor.integrations.l0_control.L0Controller` on their sparsity coefficient.

Settings that are ours, documented: SAELens's AuxK dead-latent window is 1/16 of the run (as in ``bench
lrb``, so the stock BatchTopK baseline's dead-latent loss is active in a short run); Matryoshka widths
128, 512, 2,048, 4,096; 100 ground-truth anchors drawn uniformly (seeded by the model seed) from the
4,096 most frequent features (the features a 4,096-wide SAE can hold), the paper's Eq. 22 on them with
lambda 0.1; theory resampling with ``ResamplingConfig``'s defaults (4 events in the first half of the
run). No setting was tuned on any model seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

METHODS = ("batchtopk", "matryoshka_batchtopk", "jumprelu", "standard")
K_METHODS = ("batchtopk", "matryoshka_batchtopk")
# variant -> (ground-truth anchors, theory resampling, aligned encoder)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "stock": (False, False, False),
    "anchored": (True, False, False),
    "theory": (False, True, False),
    "anchored+theory": (True, True, False),
    "aligned+theory": (False, True, True),
}
PUBLISHED_SAMPLES = 200_000_000
DEV_MODEL_SEED = 42  # the published model; the held-out seed is any other

# SynthSAEBench-16k at L0 = 25, 200M samples, mean over seeds (std <= 0.007), arXiv 2602.14687:
# (MCC, F1, uniqueness, explained variance)
PUBLISHED_L0_25: dict[str, tuple[float, float, float, float]] = {
    "batchtopk": (0.757, 0.732, 0.984, 0.792),
    "matryoshka_batchtopk": (0.793, 0.879, 0.999, 0.779),
    "jumprelu": (0.753, 0.732, 0.989, 0.795),
    "standard": (0.604, 0.556, 0.898, 0.765),
}
PUBLISHED_KEYS = ("mcc", "f1", "uniqueness", "explained_variance")


@dataclass(frozen=True)
class SynthPreset:
    name: str
    description: str
    model_seeds: tuple[int, ...]
    num_features: int = 16_384
    hidden_dim: int = 768
    d_sae: int = 4096
    batch_size: int = 1024
    lr: float = 3e-4
    training_samples: int = PUBLISHED_SAMPLES
    eval_samples: int = 500_000
    l0_targets: tuple[int, ...] = (25, 20)
    methods: tuple[str, ...] = METHODS
    variants: tuple[str, ...] = tuple(VARIANTS)
    n_anchors: int = 100
    anchor_pool: int = 4096  # anchors are drawn from this many most frequent features
    anchor_coefficient: float = 0.1
    matryoshka_widths: tuple[int, ...] = (128, 512, 2048, 4096)
    dead_window_fraction: int = 16

    @property
    def n_steps(self) -> int:
        return self.training_samples // self.batch_size

    @property
    def published_protocol(self) -> bool:
        return (
            self.training_samples >= PUBLISHED_SAMPLES
            and self.num_features == 16_384
            and self.hidden_dim == 768
            and self.d_sae == 4096
        )

    def with_samples(self, training_samples: int) -> SynthPreset:
        return replace(self, training_samples=training_samples)


PRESETS: dict[str, SynthPreset] = {
    "smoke": SynthPreset(
        name="smoke",
        description="seconds: a 1,024-feature model of the same family, width 256",
        model_seeds=(DEV_MODEL_SEED,),
        num_features=1024,
        hidden_dim=64,
        d_sae=256,
        batch_size=256,
        training_samples=256 * 40,
        eval_samples=4096,
        l0_targets=(12,),
        methods=("batchtopk",),
        n_anchors=8,
        anchor_pool=256,
        matryoshka_widths=(32, 128, 256),
    ),
    "synth-cpu": SynthPreset(
        name="synth-cpu",
        description="SynthSAEBench-16k on 2 CPU cores: 409,600 samples per SAE (0.2% of the published "
        "budget), L0 = 25, the published model (seed 42) and a held-out model seed (43)",
        model_seeds=(DEV_MODEL_SEED, 43),
        training_samples=1024 * 400,
        eval_samples=51_200,
        l0_targets=(25,),
        methods=K_METHODS,
    ),
    "synth": SynthPreset(
        name="synth",
        description="the published protocol (200M samples, 500k evaluation samples): for a GPU",
        model_seeds=(DEV_MODEL_SEED, 43),
    ),
}
