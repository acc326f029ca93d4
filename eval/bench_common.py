"""What the benches that train SAELens SAEs on fixed data share: preset lookup, SAELens's trainer config for a
constant learning rate, a fit with or without its bar, and the facts a resampling run reports."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypeVar

from sae_lens.config import LoggingConfig, SAETrainerConfig

from sdl_anchor.integrations.compat import quiet_trainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer

Preset = TypeVar("Preset")


def pick_preset(preset: Preset | str, presets: Mapping[str, Preset]) -> Preset:
    """``preset`` itself, or the preset of that name (ValueError naming the choices)."""
    if not isinstance(preset, str):
        return preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    return presets[preset]


def constant_lr_config(
    n_steps: int, batch_size: int, lr: float, device: str, dead_window_fraction: int
) -> SAETrainerConfig:
    """SAELens's trainer config for ``n_steps`` batches at a constant ``lr``, no W&B; SAELens's AuxK dead window
    ``1 / dead_window_fraction`` of the run (its default of 1,000 steps never fires in a short run)."""
    return SAETrainerConfig(
        total_training_samples=n_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        lr_decay_steps=0,
        device=device,
        autocast=False,
        dead_feature_window=max(1, n_steps // dead_window_fraction),
        feature_sampling_window=max(1, min(2000, n_steps)),
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
    )


def fit(trainer: Any, progress: bool) -> float:
    """``trainer.fit()`` (its progress bar only with ``progress``); returns the seconds it took."""
    started = time.perf_counter()
    if progress:
        trainer.fit()
    else:
        with quiet_trainer():
            trainer.fit()
    return time.perf_counter() - started


def resampling_facts(trainer: Any) -> dict[str, Any]:
    """Events, latents resampled and the seconds the events took (empty for a trainer that does not resample)."""
    if not isinstance(trainer, ResamplingSAETrainer):
        return {}
    log = trainer.resample_log
    return {
        "resampling_events": len(log),
        "resampled_latents": int(sum(event["resample/latents"] for event in log)),
        "resampling_seconds": round(sum(event["resample/seconds"] for event in log), 1),
    }
