"""Batched spherical k-means (the theory strategy's clustering) on planted point sets."""

import torch
import torch.nn.functional as F

from sdl_anchor.resampling.clustering import SegmentLayout, grouped_row_sums, segment_clusters


def noisy(direction, n, generator, noise=0.05):
    return F.normalize(direction + noise * torch.randn(n, direction.numel(), generator=generator), dim=1)


def test_each_segment_gets_its_own_planted_clusters():
    generator = torch.Generator().manual_seed(0)
    a, b, c = torch.eye(16)[:3]
    points = [
        noisy(a, 12, generator),  # segment 0: 12 near a, 6 near b -> two clusters, largest first
        noisy(b, 6, generator),
        noisy(c, 10, generator),  # segment 1: one direction -> the two k-means halves merge
        noisy(a, 20, generator),  # segment 2: 20 near a and one stray point near b -> the stray is dropped
        noisy(b, 1, generator),
    ]
    segments = torch.tensor([0] * 18 + [1] * 10 + [2] * 21)
    ranks, sizes = segment_clusters(torch.cat(points), segments, 3, k=2, merge_cosine=0.9, min_fraction=0.1)
    assert sizes.tolist() == [[12, 6], [10, 0], [20, 0]]
    assert ranks.tolist() == [0] * 12 + [1] * 6 + [0] * 10 + [0] * 20 + [-1]


def test_segments_are_independent_of_their_neighbours_and_of_order():
    generator = torch.Generator().manual_seed(1)
    directions = F.normalize(torch.randn(40, 8, generator=generator), dim=1)
    segments = torch.arange(40) // 10
    ranks, sizes = segment_clusters(directions, segments, 4, k=3, merge_cosine=0.9, min_fraction=0.05)
    for s in range(4):
        alone_ranks, alone_sizes = segment_clusters(
            directions[segments == s],
            torch.zeros(10, dtype=torch.long),
            1,
            k=3,
            merge_cosine=0.9,
            min_fraction=0.05,
        )
        assert torch.equal(alone_ranks, ranks[segments == s]) and torch.equal(alone_sizes[0], sizes[s])
    assert (sizes.sum(dim=1) <= 10).all() and (sizes[:, 0] >= sizes[:, 1]).all()


def test_a_segment_smaller_than_k_uses_one_centre_per_point():
    directions = torch.eye(4)[:2].repeat_interleave(2, dim=0)  # two points twice
    ranks, sizes = segment_clusters(
        directions, torch.tensor([0, 0, 0, 1]), 2, k=3, merge_cosine=0.9, min_fraction=0
    )
    assert sizes.tolist() == [[2, 0, 0], [0, 0, 0]]  # segment 0: the pair at e0 (e1 alone is too small)
    assert ranks.tolist() == [0, 0, -1, -1]


def test_the_padded_layout_gives_each_point_its_own_segments_dot_products():
    """Ragged, shuffled and empty segments (sizes 0, 1, 3, 4, 5, 17, 64): the batched products equal a
    per-point gather of the segment's vectors."""
    generator = torch.Generator().manual_seed(2)
    sizes = [0, 1, 3, 4, 5, 17, 64]
    segments = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    segments = segments[torch.randperm(segments.numel(), generator=generator)]
    directions = torch.randn(segments.numel(), 6, generator=generator)
    vectors = torch.randn(len(sizes), 3, 6, generator=generator)
    layout = SegmentLayout(directions, segments, len(sizes))
    expected = torch.einsum("nd,nkd->nk", directions, vectors[segments])
    torch.testing.assert_close(layout.dots(vectors), expected)
    torch.testing.assert_close(layout.dot(vectors[:, 0]), expected[:, 0])
    assert SegmentLayout(directions[:0], segments[:0], 3).dots(vectors[:3]).shape == (0, 3)


def test_grouped_row_sums_equal_index_add_of_the_gathered_rows():
    """Repeated rows, groups out of order, an empty group, and no points at all."""
    generator = torch.Generator().manual_seed(3)
    source = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    rows = torch.tensor([3, 3, 0, 6, 1, 3, 2])
    groups = torch.tensor([2, 0, 2, 3, 0, 3, 2])  # group 1 is empty
    expected = torch.zeros(4, 5, dtype=torch.float64).index_add_(0, groups, source[rows])
    torch.testing.assert_close(grouped_row_sums(source, rows, groups, 4), expected)
    none = torch.zeros(0, dtype=torch.long)
    assert grouped_row_sums(source, none, none, 3).abs().sum() == 0
    assert grouped_row_sums(source, none, none, 0).shape == (0, 5)


def test_points_given_as_rows_of_a_table_cluster_as_the_gathered_points_do():
    """A theory event's points are pool rows owned by several latents: clustering ``(table, rows)`` must give
    the same ranks and sizes as clustering the gathered ``table[rows]``, and the layout the same products."""
    generator = torch.Generator().manual_seed(4)
    a, b = torch.eye(12)[:2]
    table = torch.cat([noisy(a, 30, generator), noisy(b, 20, generator), noisy(a + b, 10, generator)])
    rows = torch.randint(0, 60, (150,), generator=generator)
    segments = torch.sort(torch.randint(0, 5, (150,), generator=generator)).values
    gathered = segment_clusters(table[rows], segments, 5, k=2, merge_cosine=0.9, min_fraction=0.05)
    from_rows = segment_clusters(table, segments, 5, k=2, merge_cosine=0.9, min_fraction=0.05, rows=rows)
    assert torch.equal(gathered[0], from_rows[0]) and torch.equal(gathered[1], from_rows[1])
    vectors = torch.randn(5, 2, 12, generator=generator)
    torch.testing.assert_close(
        SegmentLayout(table, segments, 5, rows).dots(vectors),
        SegmentLayout(table[rows], segments, 5).dots(vectors),
    )
