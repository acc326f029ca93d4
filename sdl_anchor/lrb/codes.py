"""Sparse ground-truth codes for the LRB (paper App. E, Assumption 2.3).

Each feature fires independently, ``m_i ~ Bernoulli(1 - S)``, with magnitude
``c_min + Exp(beta)`` (``beta`` is the exponential's scale, i.e. its mean). At ``S = 0.99`` only 1% of
the codes are non-zero, so we never draw ``n`` uniforms per sample: the gaps between successive
successes of a Bernoulli(p) sequence are Geometric(p), so the firing positions of a whole batch are
the cumulative sum of about ``B * n * p`` geometric draws over the flattened ``[B, n]`` grid. The
draw count is fixed in advance (mean + 10 standard deviations), so sampling has no data-dependent
shapes and no host round trip on CUDA; unused slots carry value 0.

Hierarchies gate children by their parents level by level, and ``mutually_exclusive`` keeps one
uniformly chosen firing child per (sample, parent).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from sdl_anchor.lrb.hierarchy import FeatureHierarchy

# Above this firing probability a dense Bernoulli draw is as cheap as the geometric skips.
_DENSE_DRAW_PROBABILITY = 0.25


@dataclass(frozen=True)
class SparseCodes:
    """A batch of codes as (row, feature, value) triples sorted by row; value-0 slots are padding."""

    rows: torch.Tensor  # [nnz] long
    cols: torch.Tensor  # [nnz] long
    values: torch.Tensor  # [nnz] float
    batch_size: int
    n_features: int

    def dense(self) -> torch.Tensor:
        """``[batch_size, n_features]`` codes."""
        out = torch.zeros(
            self.batch_size, self.n_features, device=self.values.device, dtype=self.values.dtype
        )
        return out.index_put_((self.rows, self.cols), self.values, accumulate=True)

    def project(self, directions: torch.Tensor) -> torch.Tensor:
        """``sum_i z_i w_i`` for every sample: ``[batch_size, n_features] @ directions [n, D]``,
        as a CSR sparse-dense product (rows are sorted, so the row pointers are a searchsorted)."""
        row_pointers = torch.searchsorted(
            self.rows, torch.arange(self.batch_size + 1, device=self.rows.device)
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            sparse = torch.sparse_csr_tensor(
                row_pointers,
                self.cols,
                self.values.to(directions.dtype),
                (self.batch_size, self.n_features),
                check_invariants=False,
            )
        return sparse @ directions


def bernoulli_positions(
    total: int, p: float, generator: torch.Generator, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in ``range(total)`` of i.i.d. Bernoulli(p) successes.

    Returns ``(positions, valid)`` of a fixed length; ``valid`` marks the real successes.
    """
    if p <= 0.0 or total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.bool()
    if p >= _DENSE_DRAW_PROBABILITY:
        fired = torch.rand(total, generator=generator, device=device) < p
        return torch.arange(total, device=device), fired
    mean = total * p
    slots = math.ceil(mean + 10.0 * math.sqrt(mean * (1.0 - p)) + 16)
    uniform = torch.rand(slots, generator=generator, device=device, dtype=torch.float64)
    gaps = torch.floor(torch.log(uniform.clamp_min(1e-300)) / math.log1p(-p)).long() + 1
    positions = torch.cumsum(gaps, 0) - 1
    # Coverage fails with probability < 1e-20; fail loudly rather than bias the sample.
    torch._assert_async(positions[-1] >= total, "LRB sampler ran out of geometric draws")
    valid = positions < total
    return positions.clamp(max=total - 1), valid


def sample_codes(
    batch_size: int,
    n_features: int,
    firing_probability: float,
    c_min: float,
    beta: float,
    generator: torch.Generator,
    device: torch.device | str,
    hierarchy: FeatureHierarchy | None = None,
    child_firing_probability: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> SparseCodes:
    """Draw ``batch_size`` code vectors (Bernoulli masks times ``c_min + Exp(beta)``)."""
    groups: list[tuple[torch.Tensor | None, float]]
    if hierarchy is None or not hierarchy.children:
        groups = [(None, firing_probability)]
    else:
        is_child = torch.zeros(n_features, dtype=torch.bool)
        is_child[list(hierarchy.parent_of)] = True
        child_p = firing_probability if child_firing_probability is None else child_firing_probability
        groups = [
            (torch.nonzero(~is_child).flatten().to(device), firing_probability),
            (torch.nonzero(is_child).flatten().to(device), child_p),
        ]
    rows_parts, cols_parts, valid_parts = [], [], []
    for members, p in groups:
        width = n_features if members is None else len(members)
        positions, valid = bernoulli_positions(batch_size * width, p, generator, device)
        rows_parts.append(positions // width)
        local = positions % width
        cols_parts.append(local if members is None else members[local])
        valid_parts.append(valid)
    rows = torch.cat(rows_parts)
    cols = torch.cat(cols_parts)
    valid = torch.cat(valid_parts)
    if len(groups) > 1:
        order = torch.argsort(rows * n_features + cols)
        rows, cols, valid = rows[order], cols[order], valid[order]
    magnitude = torch.empty(rows.shape[0], device=device, dtype=dtype)
    magnitude.exponential_(1.0, generator=generator)
    values = (c_min + beta * magnitude) * valid
    if hierarchy is not None and hierarchy.children:
        values = _apply_hierarchy(rows, cols, values, n_features, hierarchy, generator)
    return SparseCodes(rows, cols, values, batch_size, n_features)


def _apply_hierarchy(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    n_features: int,
    hierarchy: FeatureHierarchy,
    generator: torch.Generator,
) -> torch.Tensor:
    """Silence children whose parent is silent (shallowest level first), then, if mutually
    exclusive, keep one random firing child per (sample, parent)."""
    device = rows.device
    parent = hierarchy.parent_lookup(device)[cols]
    keys = rows * n_features + cols
    sentinel = torch.iinfo(torch.long).max
    depth_of = torch.zeros(n_features, dtype=torch.long)
    for depth, level in enumerate(hierarchy.levels, start=1):
        depth_of[level] = depth
    entry_depth = depth_of.to(device)[cols]
    for depth in range(1, len(hierarchy.levels) + 1):
        active_keys = torch.sort(torch.where(values != 0, keys, sentinel)).values
        at_level = (entry_depth == depth) & (values != 0)
        query = rows * n_features + parent.clamp_min(0)
        hit = torch.searchsorted(active_keys, query).clamp(max=active_keys.numel() - 1)
        parent_fires = active_keys[hit] == query
        values = torch.where(at_level & ~parent_fires, torch.zeros_like(values), values)
        if hierarchy.mutually_exclusive:
            values = _keep_one_child(rows, parent, values, at_level, n_features, generator)
    return values


def _keep_one_child(
    rows: torch.Tensor,
    parent: torch.Tensor,
    values: torch.Tensor,
    at_level: torch.Tensor,
    n_features: int,
    generator: torch.Generator,
) -> torch.Tensor:
    competing = at_level & (values != 0)
    priority = torch.rand(rows.shape[0], generator=generator, device=rows.device)
    priority = torch.where(competing, priority, torch.full_like(priority, -1.0))
    group = torch.where(competing, rows * n_features + parent, torch.full_like(rows, -1))
    order = torch.argsort(priority, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    last_in_group = torch.ones_like(sorted_group, dtype=torch.bool)
    last_in_group[:-1] = sorted_group[:-1] != sorted_group[1:]
    winner = torch.zeros_like(competing)
    winner[order] = last_in_group
    return torch.where(competing & ~winner, torch.zeros_like(values), values)
