"""Dead-latent resampling: Bricken et al.'s recipe and a theory-guided split of polysemantic latents."""

from sdl_anchor.resampling.adam import reset_adam_state
from sdl_anchor.resampling.config import STRATEGIES, ResamplingConfig, ResamplingSchedule
from sdl_anchor.resampling.strategies import (
    ResamplePool,
    ResampleUpdate,
    anthropic_resample,
    anthropic_resample_weights,
    mean_live_norms,
    theory_resample,
)

__all__ = [
    "STRATEGIES",
    "ResamplePool",
    "ResampleUpdate",
    "ResamplingConfig",
    "ResamplingSchedule",
    "anthropic_resample",
    "anthropic_resample_weights",
    "mean_live_norms",
    "reset_adam_state",
    "theory_resample",
]
