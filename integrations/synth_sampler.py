"""An exact, fast sampler for a SAELens ``SyntheticModel``'s data (SynthSAEBench and its kin).

SAELens's ``ActivationGenerator`` draws a Gaussian copula over every feature of every sample (16.7M normal
draws per 1,024 samples at 16,384 features), writes a dense code matrix, applies the hierarchy to it and
multiplies it into the feature dictionary densely. :class:`FastSyntheticSampler` draws the same
distribution while touching the dense batch once, for one comparison:

- **Firing.** SAELens fires feature i of a sample when ``g_i = u_i + s_i * eta_i > t_i``, where
  ``u = eps @ F^T`` is the rank-r common factor (``eps ~ N(0, I_r)``), ``s_i`` the square root of the
  diagonal term, ``eta_i ~ N(0, 1)`` and ``t_i = Phi^-1(1 - p_i)``. Given ``eps`` the features fire
  independently, and a child's firing matters only where its parent is active (elsewhere the hierarchy
  zeroes it), so only the parentless features are drawn over the whole batch. For them, with ``V`` uniform on
  (0, 1), feature i fires when ``V < Q(z_i)``, ``z_i = (t_i - u_i) / s_i``, ``Q`` the normal upper tail.
  Split ``V`` at ``rho`` (here 1/256): an entry is "low" (``V <= rho``) with probability ``rho``,
  independently of ``u``; those entries are drawn as a Poisson process over the batch (an entry is low when it
  receives at least one of ``Poisson(B n lambda)`` uniform points, ``lambda = -log(1 - rho)``). An entry that
  is not low has ``V > rho`` and can fire only if ``Q(z_i) > rho``, i.e. ``u_i > t_i - s_i Phi^-1(1 - rho)``:
  one comparison per entry on the computed ``u``. Every candidate (low, or above that threshold) then draws
  its ``V`` from the right interval and is tested exactly. Nothing is approximated; the dense work is one
  rank-r product and one comparison per entry, and the exact tests run on a few percent of entries.
- **Magnitudes** ``relu(mean_i + std_i * N(0, 1))`` on the firing entries, as SAELens draws them; an entry
  that comes out 0 is inactive.
- **Hierarchy**, level by level in SAELens's order: each active entry's children are tested where it is
  active (``g_c > t_c`` with their own ``eta``), get their magnitudes, each mutually exclusive sibling group
  keeps one uniformly chosen active child, and a child is multiplied by its parent's value over the parent's
  mean magnitude (``scale_children_by_parent``).
- **Hidden activations** ``x = z W + b`` by a weighted embedding bag over the active entries.

Full (non-low-rank) correlation matrices are not supported: use SAELens's generator for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.synthetic import ActivationGenerator, SyntheticModel

LOW_BUCKET = 1.0 / 256.0  # rho: the probability that an entry is drawn as a candidate regardless of u
FEATURE_CHUNK = 2048  # features per dense comparison block (keeps the block in cache)


@dataclass
class SparseSample:
    """A batch of feature activations as sorted COO entries (row-major), plus the batch size."""

    rows: torch.Tensor  # [nnz] long, non-decreasing
    features: torch.Tensor  # [nnz] long
    values: torch.Tensor  # [nnz] float, > 0
    batch_size: int
    num_features: int

    def dense(self) -> torch.Tensor:
        out = torch.zeros(
            self.batch_size, self.num_features, dtype=self.values.dtype, device=self.values.device
        )
        out[self.rows, self.features] = self.values
        return out


@dataclass
class _Hierarchy:
    """SAELens's hierarchy as per-feature arrays."""

    is_child: torch.Tensor  # [n] bool: the feature has a parent (it is sampled only where its parent fires)
    children: torch.Tensor  # [n, max_children] child features, -1 padded
    exclusive: torch.Tensor  # [n] bool: the feature's children are mutually exclusive
    rescales: torch.Tensor  # [n] bool: the feature scales its children by its value / its mean magnitude


def _hierarchy_arrays(roots: list[Any], num_features: int) -> _Hierarchy:
    """Per-feature children, exclusivity and rescaling of SAELens's trees (every node must be a feature)."""
    kids: dict[int, list[int]] = {}
    exclusive = torch.zeros(num_features, dtype=torch.bool)
    rescales = torch.zeros(num_features, dtype=torch.bool)
    is_child = torch.zeros(num_features, dtype=torch.bool)
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.feature_index is None or any(child.feature_index is None for child in node.children):
            raise ValueError(
                "the fast sampler needs every hierarchy node to be a feature (as generate_hierarchy builds "
                "them); this hierarchy has organisational nodes, so sample it with SAELens's own generator"
            )
        children = [child.feature_index for child in node.children]
        if children:
            kids[node.feature_index] = children
            is_child[children] = True
            exclusive[node.feature_index] = node.mutually_exclusive_children and len(children) >= 2
            rescales[node.feature_index] = node.scale_children_by_parent
        stack.extend(node.children)
    width = max((len(c) for c in kids.values()), default=0)
    table = torch.full((num_features, max(width, 1)), -1, dtype=torch.long)
    for parent, children in kids.items():
        table[parent, : len(children)] = torch.tensor(children)
    return _Hierarchy(is_child=is_child, children=table, exclusive=exclusive, rescales=rescales)


class FastSyntheticSampler:
    """Samples a ``SyntheticModel``'s feature activations and hidden activations (see the module doc)."""

    def __init__(self, model: SyntheticModel, seed: int = 0) -> None:
        generator = model.activation_generator
        if generator.correlation_matrix is not None:
            raise ValueError(
                "the fast sampler supports low-rank correlations (LowRankCorrelationConfig) or none; this "
                "model has a full correlation matrix, so sample it with SAELens's own generator"
            )
        if generator.modify_activations is not None and model.hierarchy is None:
            raise ValueError(
                "this model's activation generator has a custom modifier the fast sampler cannot reproduce; "
                "sample it with SAELens's own generator"
            )
        self.model = model
        self.num_features = generator.num_features
        self.device = generator.firing_probabilities.device
        probabilities = generator.firing_probabilities.double()
        if generator.low_rank_correlation is not None:
            factor, diag_sqrt = generator.low_rank_correlation
            self.factor = factor.float()
            self.noise_scale = diag_sqrt.double()
        else:
            self.factor = torch.zeros(self.num_features, 1, device=self.device)
            self.noise_scale = torch.ones(self.num_features, dtype=torch.float64, device=self.device)
        # t_i = Phi^-1(1 - p_i), SAELens's threshold (p_i = 1 fires always, p_i = 0 never)
        self.thresholds = math.sqrt(2) * torch.erfinv(1 - 2 * probabilities)
        z_low = math.sqrt(2) * float(torch.erfinv(torch.tensor(1 - 2 * LOW_BUCKET, dtype=torch.float64)))
        self.mean = generator.mean_firing_magnitudes.float()
        self.std = generator.std_firing_magnitudes.float()
        self.feature_vectors = model.feature_dict.feature_vectors.detach()
        self.bias = model.feature_dict.bias.detach()
        self.hierarchy = (
            _hierarchy_arrays(list(model.hierarchy.roots), self.num_features)
            if model.hierarchy is not None
            else None
        )
        # features without a parent are drawn over the whole batch; children only where their parent fires
        self.free = (
            torch.arange(self.num_features)
            if self.hierarchy is None
            else (~self.hierarchy.is_child).nonzero(as_tuple=True)[0]
        ).to(self.device)
        self.free_candidate_threshold = (
            self.thresholds[self.free] - self.noise_scale[self.free] * z_low
        ).float()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def sample_codes(self, batch_size: int) -> SparseSample:
        """A batch of feature activations (after magnitudes and the hierarchy), as sorted sparse entries."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        eps = torch.randn(batch_size, self.factor.shape[1], generator=self.generator, device=self.device)
        rows, features = self._free_firing(eps)
        values = self._magnitudes(features)
        active = values > 0
        rows, features, values = rows[active], features[active], values[active]
        parts = [(rows, features, values)]
        while self.hierarchy is not None and rows.numel():
            rows, features, values = self._children(eps, rows, features, values)
            parts.append((rows, features, values))
        rows, features, values = (torch.cat(column) for column in zip(*parts, strict=True))
        order = torch.argsort(rows * self.num_features + features)
        return SparseSample(rows[order], features[order], values[order], batch_size, self.num_features)

    @torch.no_grad()
    def hidden(self, codes: SparseSample) -> torch.Tensor:
        """``x = z W + b`` for a sparse batch."""
        counts = torch.bincount(codes.rows, minlength=codes.batch_size)
        offsets = torch.cumsum(counts, 0) - counts
        x = F.embedding_bag(
            codes.features, self.feature_vectors, offsets, mode="sum", per_sample_weights=codes.values
        )
        return x + self.bias

    def sample(self, batch_size: int) -> torch.Tensor:
        """Hidden activations ``[batch_size, hidden_dim]`` (what an SAE trains on)."""
        return self.hidden(self.sample_codes(batch_size))

    def _magnitudes(self, features: torch.Tensor) -> torch.Tensor:
        """SAELens's ``relu(mean + std * N(0, 1))`` for firing entries (an entry that comes out 0 is inactive)."""
        noise = torch.randn(features.numel(), generator=self.generator, device=self.device)
        return (self.mean[features] + noise * self.std[features]).relu()

    def _fires(self, eps_rows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Exact copula test ``u + s * eta > t`` for the given (row, feature) entries."""
        common = (eps_rows * self.factor[features]).sum(dim=1)
        eta = torch.randn(features.numel(), generator=self.generator, device=self.device, dtype=torch.float64)
        return common.double() + self.noise_scale[features] * eta > self.thresholds[features]

    def _free_firing(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Firing of the parentless features over the whole batch (the thinned copula of the module doc)."""
        generator, device = self.generator, self.device
        batch_size = eps.shape[0]
        rate = -math.log1p(-LOW_BUCKET)
        found_rows, found_features = [], []
        for start in range(0, self.free.numel(), FEATURE_CHUNK):
            block = self.free[start : start + FEATURE_CHUNK]
            width = block.numel()
            common = eps @ self.factor[block].T  # u, [B, width]
            n_points = int(torch.poisson(torch.tensor(batch_size * width * rate), generator=generator))
            low = torch.zeros(batch_size * width, dtype=torch.bool, device=device)
            low[torch.randint(0, batch_size * width, (n_points,), generator=generator, device=device)] = True
            low = low.view(batch_size, width)
            threshold = self.free_candidate_threshold[start : start + FEATURE_CHUNK]
            rows, cols = ((common > threshold) | low).nonzero(as_tuple=True)
            is_low = low[rows, cols]
            features = block[cols]
            z = (self.thresholds[features] - common[rows, cols].double()) / self.noise_scale[features]
            uniform = torch.rand(rows.numel(), generator=generator, device=device, dtype=torch.float64)
            v = torch.where(is_low, LOW_BUCKET * uniform, LOW_BUCKET + (1 - LOW_BUCKET) * uniform)
            fires = v < torch.special.ndtr(-z)
            found_rows.append(rows[fires])
            found_features.append(features[fires])
        return torch.cat(found_rows), torch.cat(found_features)

    def _children(
        self, eps: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next level: each active entry's children, drawn where it fires, then SAELens's mutual exclusion
        (one uniformly chosen active sibling) and parent scaling, in SAELens's order."""
        h = self.hierarchy
        assert h is not None
        children = h.children[features]  # [m, c]
        slot, position = (children >= 0).nonzero(as_tuple=True)
        child_rows, child_features = rows[slot], children[slot, position]
        fires = self._fires(eps[child_rows], child_features)
        slot, child_rows, child_features = slot[fires], child_rows[fires], child_features[fires]
        magnitude = self._magnitudes(child_features)
        active = magnitude > 0
        slot, child_rows, child_features, magnitude = (
            slot[active],
            child_rows[active],
            child_features[active],
            magnitude[active],
        )
        parents = features[slot]
        exclusive = h.exclusive[parents]
        if exclusive.any():
            score = torch.rand(slot.numel(), generator=self.generator, device=self.device)
            best = torch.full((rows.numel(),), -1.0, device=self.device)
            best.scatter_reduce_(0, slot[exclusive], score[exclusive], reduce="amax")
            keep = ~exclusive | (score >= best[slot])
            slot, child_rows, child_features, magnitude, parents = (
                slot[keep],
                child_rows[keep],
                child_features[keep],
                magnitude[keep],
                parents[keep],
            )
        scale = torch.where(
            h.rescales[parents], values[slot] / self.mean[parents], torch.ones_like(magnitude)
        )
        return child_rows, child_features, magnitude * scale


class FastActivationGenerator(ActivationGenerator):
    """A SAELens ``ActivationGenerator`` backed by :class:`FastSyntheticSampler` (dense codes out), so
    SAELens's ``eval_sae_on_synthetic_data`` scores on the same distribution at the fast sampler's speed."""

    def __init__(self, model: SyntheticModel, seed: int = 0) -> None:
        source = model.activation_generator
        super().__init__(
            num_features=source.num_features,
            firing_probabilities=source.firing_probabilities,
            std_firing_magnitudes=source.std_firing_magnitudes,
            mean_firing_magnitudes=source.mean_firing_magnitudes,
            device=source.firing_probabilities.device,
        )
        self.sampler = FastSyntheticSampler(model, seed=seed)

    @torch.no_grad()
    def sample(self, batch_size: int) -> torch.Tensor:
        return self.sampler.sample_codes(batch_size).dense()
