"""Median training-step times of several SAELens trainers, measured alternately on the same batches.

Machines are noisy, so every comparison in ``eval/`` runs its trainers in one process, interleaving
their steps over identical batches after a warm-up, and reports the ratio of medians.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig

from sdl_anchor.integrations.paired_trainer import PairedSAETrainer


def trainer_for_timing(sae: Any, batch_size: int, device: str, autocast: bool = False) -> PairedSAETrainer:
    """A trainer (SAELens's ``SAETrainer`` accepting paired batches) whose steps we call by hand;
    ``autocast=True`` is SAELens's bf16 autocast of the forward pass."""
    config = SAETrainerConfig(
        autocast=autocast,
        total_training_samples=10**9,
        train_batch_size_samples=batch_size,
        lr_end=3e-5,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return PairedSAETrainer(cfg=config, sae=sae, data_provider=iter(()))


def step_seconds(
    trainers: dict[str, tuple[PairedSAETrainer, list[Any]]], steps: int, device: str, warm_up: int = 3
) -> dict[str, list[float]]:
    """``{name: [seconds of trainer.step] * steps}`` after ``warm_up`` untimed rounds; each trainer cycles
    through its own batches and the trainers take turns at every step, in an order that reverses every
    step (so neither always runs first, on colder caches)."""
    times: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for i in range(steps + warm_up):
        for name in names if i % 2 == 0 else names[::-1]:
            trainer, batches = trainers[name]
            batch = batches[i % len(batches)]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            trainer.step(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warm_up:
                times[name].append(time.perf_counter() - started)
    return times


def median_step_seconds(
    trainers: dict[str, tuple[PairedSAETrainer, list[Any]]], steps: int, device: str, warm_up: int = 3
) -> dict[str, float]:
    """``{name: median seconds of trainer.step}`` (see :func:`step_seconds`)."""
    times = step_seconds(trainers, steps, device, warm_up)
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratio(times: dict[str, list[float]], ours: str, baseline: str) -> float:
    """The median over rounds of ``ours / baseline`` step time within the round: the two steps of a round
    run back to back, so the machine's slow drift cancels out of each ratio."""
    return statistics.median(a / b for a, b in zip(times[ours], times[baseline], strict=True))
