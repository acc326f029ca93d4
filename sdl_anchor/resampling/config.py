"""``ResamplingConfig``: which resampler, when it runs, and what counts as a dead latent.

Defaults scale with the run's length so that a short run (a few thousand steps) still resamples: an event
every ``total_steps // intervals`` steps (8 intervals by default), at most ``max_events`` of them, none in the
last ``stop_fraction`` of training (the model needs time to settle after the last one), and a latent counts as
dead when it has not fired for half an event interval. ``dead_tokens`` counts that window in tokens instead,
as sparsify and dictionary_learning do (SAELens counts steps).
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("anthropic", "theory")


def _is_fraction(value: object) -> bool:
    """A real number (not a bool), so that range checks on it can run."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ResamplingSchedule:
    """A config resolved for a run of ``total_steps``: the steps after which an event runs."""

    event_steps: tuple[int, ...]
    dead_steps: int
    dead_tokens: int | None
    rewarm_steps: int


@dataclass
class ResamplingConfig:
    """Dead-latent resampling (:mod:`sdl_anchor.resampling`).

    strategy: "theory" (split polysemantic latents, the paper's Theorem 3.5) or "anthropic" (Bricken et al.).
    every_n_steps / max_events / stop_fraction: the schedule (default interval ``total_steps // intervals``).
    intervals: how many intervals the run is cut into when ``every_n_steps`` is None (8); more intervals put
        more events into the same run, and the interval keeps scaling with the run's length.
    dead_steps / dead_tokens: a latent is dead when it has not fired for this many steps (default half an
        interval) or, when ``dead_tokens`` is set, this many tokens.
    pool_size: how many recent training inputs the resampler chooses from.
    encoder_scale: a resampled encoder's norm, as a multiple of the mean live encoder norm (0.2 in Bricken
        et al.; the theory strategy uses 1, since its latents must win their own inputs at once).
    rewarm_steps: after an event, ramp the learning rate back up linearly over this many steps (0: off).
    n_clusters / merge_cosine / min_cluster_fraction: the theory strategy's clustering of a live latent's
        inputs (clusters tried, cosine above which two directions are one, smallest cluster kept). The
        default 2 splits a latent in two per event (a latent with more features splits again at a later
        event): with 3, inputs where other features fire beside the latent's own form spurious clusters.
    duplicate_cosine / duplicate_cofiring: the theory strategy's step 0 (None: off): live latents whose
        decoder rows have cosine above ``duplicate_cosine`` and that fire together (on at least
        ``duplicate_cofiring`` of the rarer one's inputs) are one feature's copies, and merge into one
        (:mod:`sdl_anchor.resampling.duplicates`); the latents this frees take splits, or are parked.
    """

    strategy: str = "theory"
    every_n_steps: int | None = None
    intervals: int = 8
    max_events: int = 4
    stop_fraction: float = 0.5
    dead_steps: int | None = None
    dead_tokens: int | None = None
    pool_size: int = 32_768
    encoder_scale: float = 0.2
    rewarm_steps: int = 0
    n_clusters: int = 2
    merge_cosine: float = 0.9
    min_cluster_fraction: float = 0.05
    duplicate_cosine: float | None = None
    duplicate_cofiring: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"resampling strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("every_n_steps", "dead_steps", "dead_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("intervals", "max_events", "pool_size", "n_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.rewarm_steps, bool)
            or not isinstance(self.rewarm_steps, int)
            or self.rewarm_steps < 0
        ):
            raise ValueError(f"rewarm_steps must be a non-negative integer, got {self.rewarm_steps!r}")
        if not 0.0 <= self.stop_fraction < 1.0:
            raise ValueError(f"stop_fraction must be in [0, 1), got {self.stop_fraction!r}")
        if not self.encoder_scale > 0:
            raise ValueError(f"encoder_scale must be positive, got {self.encoder_scale!r}")
        if not 0.0 < self.merge_cosine < 1.0 or not 0.0 <= self.min_cluster_fraction < 0.5:
            raise ValueError("merge_cosine must be in (0, 1) and min_cluster_fraction in [0, 0.5)")
        if self.duplicate_cosine is not None:
            if self.strategy != "theory":
                raise ValueError(
                    "duplicate_cosine merges duplicated latents, the theory strategy's step 0; use "
                    f"strategy='theory' or leave duplicate_cosine None (strategy is {self.strategy!r})"
                )
            if not _is_fraction(self.duplicate_cosine) or not 0.0 < self.duplicate_cosine < 1.0:
                raise ValueError(f"duplicate_cosine must be in (0, 1) or None, got {self.duplicate_cosine!r}")
        if not _is_fraction(self.duplicate_cofiring) or not 0.0 < self.duplicate_cofiring <= 1.0:
            raise ValueError(f"duplicate_cofiring must be in (0, 1], got {self.duplicate_cofiring!r}")

    def schedule(self, total_steps: int) -> ResamplingSchedule:
        """The event steps of a run of ``total_steps`` (ValueError if none falls inside training)."""
        every = self.every_n_steps or max(1, total_steps // self.intervals)
        last_allowed = int(total_steps * (1.0 - self.stop_fraction))
        events = tuple(every * (i + 1) for i in range(self.max_events) if every * (i + 1) <= last_allowed)
        if not events:
            raise ValueError(
                f"the resampling schedule never runs: its first event is after step {every}, but a run of "
                f"{total_steps} steps stops resampling after step {last_allowed} (stop_fraction="
                f"{self.stop_fraction}); lower every_n_steps or stop_fraction"
            )
        dead_steps = self.dead_steps or max(1, every // 2)
        if self.dead_tokens is None and dead_steps > events[0]:
            raise ValueError(
                f"dead_steps={dead_steps} is longer than the first event's {events[0]} steps, so no latent "
                "can count as dead there; lower dead_steps"
            )
        return ResamplingSchedule(events, dead_steps, self.dead_tokens, self.rewarm_steps)
