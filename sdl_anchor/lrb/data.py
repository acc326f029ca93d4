"""LRB data as SAELens ``DataProvider``s (``Iterator[torch.Tensor]``).

``LRBStream`` draws fresh samples forever; ``LRBDataset`` draws ``N`` samples once (paper: 100,000)
and serves shuffled epochs of them forever, as SAELens's ``SAETrainer`` pulls ``next(provider)``
until its sample budget is spent. With ``with_targets=True`` both yield ``(x_in, x_out)`` pairs,
for transcoders.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from sdl_anchor.lrb.codes import SparseCodes

if TYPE_CHECKING:
    from sdl_anchor.lrb.bench import LinearRepresentationBench

_STREAM_SEED_OFFSET = 2_000_003


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class LRBStream(Iterator[torch.Tensor]):
    """Endless fresh batches from a bench, seeded independently of ``bench.sample``."""

    def __init__(
        self,
        bench: LinearRepresentationBench,
        batch_size: int,
        seed: int | None = None,
        with_targets: bool = False,
    ) -> None:
        self.bench = bench
        self.batch_size = _check_batch_size(batch_size)
        self.with_targets = with_targets
        seed = bench.config.seed + _STREAM_SEED_OFFSET if seed is None else seed
        self.generator = torch.Generator(device=bench.device).manual_seed(seed)

    def __iter__(self) -> LRBStream:
        return self

    @torch.no_grad()
    def __next__(self):  # type: ignore[override]
        batch = self.bench.sample(self.batch_size, self.generator)
        return (batch.x_in, batch.x_out) if self.with_targets else batch.x_in


class LRBDataset:
    """``n_samples`` drawn once; ``codes``, ``x_in`` and ``x_out`` are kept for ground truth."""

    def __init__(self, bench: LinearRepresentationBench, n_samples: int, seed: int | None = None) -> None:
        self.bench = bench
        self.n_samples = _check_batch_size(n_samples)
        seed = bench.config.seed + _STREAM_SEED_OFFSET + 1 if seed is None else seed
        generator = torch.Generator(device=bench.device).manual_seed(seed)
        batch = bench.sample(self.n_samples, generator)
        self.sparse_codes: SparseCodes = batch.sparse_codes
        self.x_in = batch.x_in
        self.x_out = batch.x_out

    def __len__(self) -> int:
        return self.n_samples

    def loader(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, with_targets: bool = False
    ) -> Iterator[torch.Tensor]:
        """Endless batches over reshuffled epochs (the last partial batch of an epoch is dropped
        unless the dataset is smaller than one batch, in which case batches wrap around)."""
        _check_batch_size(batch_size)
        generator = torch.Generator(device=self.x_in.device).manual_seed(seed)
        per_epoch = max(1, self.n_samples // batch_size)
        while True:
            order = (
                torch.randperm(self.n_samples, generator=generator, device=self.x_in.device)
                if shuffle
                else torch.arange(self.n_samples, device=self.x_in.device)
            )
            if self.n_samples < batch_size:
                order = order.repeat(batch_size // self.n_samples + 1)
            for i in range(per_epoch):
                rows = order[i * batch_size : (i + 1) * batch_size]
                yield (self.x_in[rows], self.x_out[rows]) if with_targets else self.x_in[rows]
