"""Samples per second of :class:`~sdl_anchor.integrations.synth_sampler.FastSyntheticSampler` against SAELens's
own ``SyntheticModel.sample`` on the same model (hidden activations, the same batch size), in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdl_anchor.eval.lrb_throughput import median_seconds
from sdl_anchor.integrations.synth_sampler import FastSyntheticSampler
from sdl_anchor.integrations.synthsaebench import load_or_build_model, synthsaebench_16k_config


def measure_synth_generator(
    num_features: int = 16_384,
    hidden_dim: int = 768,
    batch_size: int = 1024,
    repeats: int = 5,
    seed: int = 42,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Median seconds per batch of both generators and their ratio (SAELens / ours: higher is better)."""
    model, record = load_or_build_model(
        synthsaebench_16k_config(seed, num_features, hidden_dim), cache_dir=cache_dir, show_progress=False
    )
    model = model.to(device)
    sampler = FastSyntheticSampler(model, seed=0)
    torch.manual_seed(0)
    where = torch.device(device)
    saelens = median_seconds(lambda: model.sample(batch_size), repeats, where)
    ours = median_seconds(lambda: sampler.sample(batch_size), repeats, where)
    return {
        "ratio": saelens / ours,
        "saelens_seconds": saelens,
        "ours_seconds": ours,
        "ours_samples_per_second": batch_size / ours,
        "num_features": num_features,
        "hidden_dim": hidden_dim,
        "batch_size": batch_size,
        "model_cache": record["path"],
    }
