"""Match an SAE's L0 to a target by steering its sparsity coefficient while it trains.

ReLU (L1) and JumpReLU SAEs set their sparsity through a coefficient, not a k, so comparing them with TopK
SAEs at a fixed L0 (as SynthSAEBench does, at L0 = 25 and 20) needs the coefficient found for each run.
:class:`L0Controller` is a multiplicative integral controller on SAELens's coefficient scheduler: after
every step it multiplies the coefficient by ``(L0 / target) ** gain``, clipped to ``[1 / max_step,
max_step]`` (at most 2% a step, so the weights can follow), where ``L0`` is the step's mean number of
active latents per input; the coefficient stays within ``bound`` times its starting value either way (no
wind-up when the L0 cannot follow, e.g. a JumpReLU threshold that moves at the learning rate). Too many
active latents raise the penalty, too few lower it; the coefficient settles where the batch L0 is the
target. Attach it to
a :class:`~sdl_anchor.integrations.paired_trainer.PairedSAETrainer` with ``trainer.step_callbacks.append``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

COEFFICIENT_NAMES = {"standard": "l1", "jumprelu": "l0"}  # SAELens's coefficient of each architecture


def check_l0_target(value: object, name: str = "l0_target") -> float:
    """``value`` as a float when it is a positive, finite number of active latents per input; else a
    ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of active latents per input, got {value!r}")
    return float(value)


@dataclass
class L0Controller:
    """Steers SAELens's coefficient ``coefficient`` ("l1" for ReLU SAEs, "l0" for JumpReLU) toward
    ``target`` active latents per input; ``history`` keeps (step, L0, coefficient) every ``record_every``."""

    target: float
    coefficient: str
    gain: float = 0.05
    max_step: float = 1.02
    bound: float = 1e4
    record_every: int = 50
    history: list[tuple[int, float, float]] = field(default_factory=list)
    last: tuple[int, float, float] | None = None  # the latest (step, L0, coefficient)
    initial: float | None = None  # the coefficient before the first step

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"the L0 target must be positive, got {self.target!r}")
        if not self.gain > 0 or not self.max_step > 1 or not self.bound > 1:
            raise ValueError("gain must be positive, and max_step and bound above 1")

    def __call__(self, trainer: Any, output: Any) -> None:
        schedulers = trainer.coefficient_schedulers
        if self.coefficient not in schedulers:
            raise ValueError(
                f"the SAE has no {self.coefficient!r} coefficient to steer (it has {sorted(schedulers)}); "
                "L0 control applies to ReLU ('l1') and JumpReLU ('l0') SAEs"
            )
        l0 = float((output.feature_acts != 0).float().sum(dim=-1).mean())
        ratio = max(l0, 1e-3) / self.target
        factor = min(max(math.exp(self.gain * math.log(ratio)), 1 / self.max_step), self.max_step)
        scheduler = schedulers[self.coefficient]
        if self.initial is None:
            self.initial = float(scheduler.final_value)
        low, high = self.initial / self.bound, self.initial * self.bound
        new_value = min(max(scheduler.final_value * factor, low), high)
        scheduler.current_value *= new_value / scheduler.final_value
        scheduler.final_value = new_value
        self.last = (trainer.n_training_steps, l0, scheduler.final_value)
        if trainer.n_training_steps % self.record_every == 0:
            self.history.append(self.last)
