"""Spherical k-means over many small point sets at once, for the ``theory`` strategy's step 2.

Each live candidate latent brings the unit target directions of the inputs it owns (a *segment*); every
segment is clustered independently, but all segments go through the same few tensor operations, so one
event costs a handful of kernel launches per k-means iteration instead of a Python loop per latent.
Points are stored flat, ``directions [N, D]``, with ``segments [N]`` naming each point's segment.

Every k-means step needs each point's cosine with its own segment's centres. Gathering a centre per point
moves an ``[N, D]`` tensor through memory per centre and iteration (most of an LM run's resampling time);
:class:`SegmentLayout` instead lays the points out once as zero-padded blocks of segments of similar size,
so those cosines are one batched matrix product per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _segment_first(
    values: torch.Tensor, segments: torch.Tensor, n_segments: int, mask: torch.Tensor
) -> torch.Tensor:
    """Per segment, the smallest point index where ``mask`` holds (``N`` where it never does)."""
    n = values.shape[0]
    index = torch.where(mask, torch.arange(n, device=values.device), n)
    return torch.full((n_segments,), n, device=values.device).scatter_reduce(0, segments, index, "amin")


class SegmentLayout:
    """The points of each segment as rows of a zero-padded block ``[S_b, M_b, D]``, one block per size class
    (segments of ``2^(c-1) + 1 .. 2^c`` points), so padding at most doubles the memory of the points."""

    def __init__(self, directions: torch.Tensor, segments: torch.Tensor, n_segments: int) -> None:
        self.n_points = directions.shape[0]
        order = torch.argsort(segments, stable=True)
        counts = torch.bincount(segments, minlength=n_segments)
        starts = torch.cumsum(counts, 0) - counts
        size_class = torch.ceil(torch.log2(counts.clamp(min=1).double())).long()
        padded_points = torch.cat([directions, directions.new_zeros(1, directions.shape[1])])
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for c in torch.unique(size_class[counts > 0]).tolist():
            members = torch.nonzero((size_class == c) & (counts > 0)).flatten()
            width = torch.arange(int(counts[members].max()), device=directions.device)
            filled = width[None, :] < counts[members, None]  # [S_b, M_b]
            sorted_index = (starts[members, None] + width[None, :]).clamp(max=max(self.n_points - 1, 0))
            point = torch.where(filled, order[sorted_index], self.n_points)
            self.blocks.append((members, filled, point[filled], padded_points[point]))

    def dots(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[N, k]``: each point's dot product with its segment's ``k`` vectors (``vectors [S, k, D]``)."""
        out = vectors.new_empty(self.n_points, vectors.shape[1])
        for members, filled, points, block in self.blocks:
            out[points] = torch.bmm(block, vectors[members].transpose(1, 2))[filled]
        return out

    def dot(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[N]``: each point's dot product with its segment's vector (``vectors [S, D]``)."""
        return self.dots(vectors[:, None, :])[:, 0]


def segment_spherical_kmeans(
    directions: torch.Tensor, segments: torch.Tensor, n_segments: int, k: int, iterations: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [N], usable [S, k])``: spherical k-means with ``k`` centres in every segment, seeded by
    farthest-point selection, starting from the point farthest from the one closest to the segment's mean
    direction (deterministic, and independent of the order of the points). A segment with fewer than
    ``k`` points uses as many centres as it has points (``usable`` marks the centres in use). Stops early
    once an iteration leaves every label unchanged (one host sync per iteration)."""
    counts = torch.bincount(segments, minlength=n_segments)
    usable = torch.arange(k, device=directions.device)[None, :] < counts[:, None]
    layout = SegmentLayout(directions, segments, n_segments)
    # the first centre: the point closest to its segment's mean direction (the bulk of the segment)
    means = torch.zeros(n_segments, directions.shape[1], device=directions.device, dtype=directions.dtype)
    means = F.normalize(means.index_add_(0, segments, directions), dim=1)
    typical = layout.dot(means)
    highest = torch.full(
        (n_segments,), -2.0, device=directions.device, dtype=directions.dtype
    ).scatter_reduce(0, segments, typical, "amax")
    start = _segment_first(directions, segments, n_segments, typical == highest[segments])
    # ...whose farthest point starts the farthest-point seeding (the mean may sit between clusters)
    away = layout.dot(directions[start.clamp(max=directions.shape[0] - 1)])
    lowest = torch.full((n_segments,), 2.0, device=directions.device, dtype=directions.dtype).scatter_reduce(
        0, segments, away, "amin"
    )
    first = _segment_first(directions, segments, n_segments, away == lowest[segments])
    centres = directions[first.clamp(max=directions.shape[0] - 1)][:, None, :].repeat(1, k, 1)  # [S, k, D]
    best = layout.dot(centres[:, 0])
    for j in range(1, k):
        lowest = torch.full(
            (n_segments,), 2.0, device=directions.device, dtype=directions.dtype
        ).scatter_reduce(0, segments, best, "amin")
        farthest = _segment_first(directions, segments, n_segments, best == lowest[segments])
        centres[:, j] = directions[farthest.clamp(max=directions.shape[0] - 1)]
        best = torch.maximum(best, layout.dot(centres[:, j]))
    previous = None
    for _ in range(iterations):
        labels = layout.dots(centres).masked_fill(~usable[segments], -2.0).argmax(1)
        if previous is not None and torch.equal(labels, previous):
            return labels, usable  # converged: the centres these labels give are the current ones
        previous = labels
        sums = torch.zeros(
            n_segments * k, directions.shape[1], device=directions.device, dtype=directions.dtype
        )
        sums.index_add_(0, segments * k + labels, directions)
        occupied = torch.bincount(segments * k + labels, minlength=n_segments * k).view(n_segments, k) > 0
        centres = torch.where(occupied[..., None], F.normalize(sums.view(n_segments, k, -1), dim=-1), centres)
    labels = layout.dots(centres).masked_fill(~usable[segments], -2.0).argmax(1)
    return labels, usable


def segment_clusters(
    directions: torch.Tensor,
    segments: torch.Tensor,
    n_segments: int,
    k: int,
    merge_cosine: float,
    min_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct clusters of every segment: ``(ranks [N], sizes [S, k])``.

    After k-means, a cluster whose mean direction has cosine above ``merge_cosine`` with an earlier one's
    joins it; clusters with fewer than ``max(2, min_fraction x segment size)`` points are dropped. Clusters
    are ranked largest first: ``ranks`` is each point's cluster rank (-1 when dropped) and ``sizes[s, r]``
    the size of segment ``s``'s rank-``r`` cluster (0 past its last kept cluster)."""
    labels, usable = segment_spherical_kmeans(directions, segments, n_segments, k)
    flat = segments * k + labels
    sums = torch.zeros(n_segments * k, directions.shape[1], device=directions.device, dtype=directions.dtype)
    sums = sums.index_add_(0, flat, directions).view(n_segments, k, -1)
    sizes = torch.bincount(flat, minlength=n_segments * k).view(n_segments, k)
    owner = torch.arange(k, device=directions.device).repeat(n_segments, 1)  # the cluster each one joined
    for c in range(1, k):
        for i in range(c):
            joins = (
                (owner[:, c] == c)
                & (owner[:, i] == i)
                & (sizes[:, c] > 0)
                & (sizes[:, i] > 0)
                & ((F.normalize(sums[:, i], dim=-1) * F.normalize(sums[:, c], dim=-1)).sum(-1) > merge_cosine)
            )
            sums[:, i] += joins[:, None] * sums[:, c]
            sizes[:, i] += joins * sizes[:, c]
            sizes[:, c] = torch.where(joins, 0, sizes[:, c])
            owner[:, c] = torch.where(joins, i, owner[:, c])
    minimum = (min_fraction * torch.bincount(segments, minlength=n_segments)).clamp(min=2)
    sizes = torch.where((sizes >= minimum[:, None]) & usable, sizes, 0)
    order = torch.argsort(-sizes, dim=1, stable=True)  # rank -> cluster
    rank_of = torch.argsort(order, dim=1)  # cluster -> rank
    cluster = owner[segments, labels]
    ranks = torch.where(sizes[segments, cluster] > 0, rank_of[segments, cluster], -1)
    return ranks, torch.gather(sizes, 1, order)
