"""Dead-latent resampling strategies: pure functions from weights and a pool of inputs to new latent weights.

Notation (SAELens layout): encoder ``W_enc [d_in, d_sae]``, decoder ``W_dec [d_sae, d_out]``. A pool holds
recent training inputs as the encoder sees them (``x_enc``, after any decoder-bias subtraction), what the
latents must add to reconstruct them (``t = x_out - b_dec``), which latents fired, and the squared error
``loss_p = ||x_out - x_hat||^2``.

``anthropic`` (Bricken et al. 2023, "Towards Monosemanticity", neuron resampling), as written there:
sample one pool input per dead latent with probability proportional to the *square* of its loss, set the
decoder to the normalised input (scaled to the mean live decoder norm, which is 1 in their unit-norm
setting), the encoder to the same direction scaled to ``0.2 x`` the mean live encoder norm, and the encoder
bias to 0. The pool spans many batches (not one), inputs are drawn without replacement, and the encoder is
normalised (three deviations found in other libraries).

``theory`` (the paper's Theorem 3.5 / Example 3.5). At a spurious partial minimum a live latent ``j`` is
polysemantic: it fires for a set ``S_j`` of ground-truth features and its decoder is the weighted mean of
their directions, ``W_dec[j] ~ sum_{i in S_j} p_i w_i / sum p_i``, while dead latents get no gradient. Then
(i) the inputs on which ``j`` fires (in practice those it dominates; see ``pool_statistics``), taken as
unit target directions ``t / ||t||``, form ``|S_j|`` clusters
(one per feature, up to noise and interference), and (ii) those inputs carry ``j``'s residual error: for a
feature ``a`` in ``S_j`` the residual ``c w_a - f_j W_dec[j]`` is non-zero whenever ``|S_j| > 1``. So:

1. rank live latents by the loss on the inputs they fire on, ``E_j = sum_p 1[f_pj > 0] loss_p``;
2. cluster each candidate's firing inputs by spherical k-means on ``t / ||t||``, merging clusters whose
   centroids have cosine above ``merge_cosine`` and dropping those under ``min_cluster_fraction``;
3. a candidate with two or more clusters is split: it keeps its largest cluster (its encoder and decoder
   re-pointed there, norms kept) and each other cluster goes to its own dead latent, whose decoder is the
   cluster's mean target direction and whose encoder is the cluster's mean encoder-input direction at the
   mean live encoder norm, with a bias ``-(s_in + s_out) / 2`` halfway between the median projection of its
   own cluster (``s_in``) and of the split latent's other inputs (``s_out``), so it fires on its cluster only;
4. a direction within ``merge_cosine`` of a live decoder or of one already assigned is skipped (distinct,
   not duplicated); dead latents left over after every split get the ``anthropic`` recipe.

This moves the weights from the spurious minimum straight to the split the theorem says a better minimum
has, instead of hoping a random high-loss input lands near a missing feature.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdl_anchor.resampling.clustering import grouped_row_sums, segment_clusters
from sdl_anchor.sparse_topk import run_offsets


@dataclass
class ResamplePool:
    """Recent inputs, as the resampler sees them (module docstring). Which latents fired is kept sparse,
    as ``(row, latent)`` pairs sorted by latent: a dense ``[P, d_sae]`` mask would not fit at real widths."""

    encoder_inputs: torch.Tensor  # [P, d_in]
    targets: torch.Tensor  # [P, d_out]: x_out - b_dec
    loss: torch.Tensor  # [P]: squared reconstruction error
    fire_rows: torch.Tensor  # [nnz] long, grouped by latent
    fire_latents: torch.Tensor  # [nnz] long, sorted
    d_sae: int

    def __post_init__(self) -> None:
        n = self.encoder_inputs.shape[0]
        if not (self.targets.shape[0] == self.loss.shape[0] == n):
            raise ValueError("the pool's tensors must have one row per input")
        counts = torch.bincount(self.fire_latents, minlength=self.d_sae)
        self._offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()

    @classmethod
    def from_firing(
        cls, encoder_inputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, fires: torch.Tensor
    ) -> ResamplePool:
        """A pool from a dense ``fires [P, d_sae]`` mask (or the concatenation of per-chunk masks)."""
        rows, latents = torch.nonzero(fires, as_tuple=True)
        return cls.from_pairs(encoder_inputs, targets, loss, rows, latents, fires.shape[1])

    @classmethod
    def from_pairs(
        cls,
        encoder_inputs: torch.Tensor,
        targets: torch.Tensor,
        loss: torch.Tensor,
        rows: torch.Tensor,
        latents: torch.Tensor,
        d_sae: int,
    ) -> ResamplePool:
        order = torch.argsort(latents, stable=True)
        return cls(encoder_inputs, targets, loss, rows[order], latents[order], d_sae)

    def members(self, latent: int) -> torch.Tensor:
        """The rows on which ``latent`` fired."""
        return self.fire_rows[self._offsets[latent] : self._offsets[latent + 1]]

    def energy(self) -> torch.Tensor:
        """``E_j = sum_p 1[latent j fired on p] loss_p``, ``[d_sae]``."""
        return self.loss.new_zeros(self.d_sae).index_add_(0, self.fire_latents, self.loss[self.fire_rows])

    def finite(self) -> ResamplePool:
        """The pool without rows holding NaN or inf (dropped with a warning)."""
        keep = (
            torch.isfinite(self.encoder_inputs).all(dim=1)
            & torch.isfinite(self.targets).all(dim=1)
            & torch.isfinite(self.loss)
        )
        if bool(keep.all()):
            return self
        warnings.warn(
            f"the resampling pool held {int((~keep).sum())} non-finite inputs; they were left out",
            stacklevel=2,
        )
        new_index = keep.long().cumsum(0) - 1
        kept_pairs = keep[self.fire_rows]
        return ResamplePool(
            self.encoder_inputs[keep],
            self.targets[keep],
            self.loss[keep],
            new_index[self.fire_rows[kept_pairs]],
            self.fire_latents[kept_pairs],
            self.d_sae,
        )


@dataclass
class ResampleUpdate:
    """New weights for ``latents``: ``W_enc[:, latents] = encoder``, ``b_enc[latents] = encoder_bias``,
    ``W_dec[latents] = decoder``."""

    latents: torch.Tensor  # [m] long
    encoder: torch.Tensor  # [d_in, m]
    encoder_bias: torch.Tensor  # [m]
    decoder: torch.Tensor  # [m, d_out]
    n_dead_resampled: int = 0
    n_split: int = 0  # theory: polysemantic latents split
    n_fallback: int = 0  # theory: dead latents given the anthropic recipe
    kept_live: torch.Tensor | None = None  # [m] bool: a split latent that stays live (None: none is)

    def fresh(self) -> torch.Tensor:
        """``[m]`` bool: the latents that start afresh (dead ones given a direction), not the split latents
        that stay live, whose JumpReLU thresholds were tuned on their inputs and are kept."""
        if self.kept_live is None:
            return torch.ones_like(self.latents, dtype=torch.bool)
        return ~self.kept_live

    @classmethod
    def concat(
        cls, updates: list[ResampleUpdate], d_in: int, d_out: int, like: torch.Tensor
    ) -> ResampleUpdate:
        if not updates:
            empty = like.new_zeros
            return cls(
                torch.zeros(0, dtype=torch.long, device=like.device),
                empty(d_in, 0),
                empty(0),
                empty(0, d_out),
            )
        return cls(
            torch.cat([u.latents for u in updates]),
            torch.cat([u.encoder for u in updates], dim=1),
            torch.cat([u.encoder_bias for u in updates]),
            torch.cat([u.decoder for u in updates]),
            sum(u.n_dead_resampled for u in updates),
            sum(u.n_split for u in updates),
            sum(u.n_fallback for u in updates),
            torch.cat([~u.fresh() for u in updates]),
        )


def _check_dead(dead_latents: torch.Tensor, d_sae: int) -> torch.Tensor:
    dead_latents = torch.as_tensor(dead_latents).long().flatten()
    if dead_latents.numel() and (dead_latents.min() < 0 or dead_latents.max() >= d_sae):
        raise ValueError(f"dead latent indices must lie in [0, {d_sae})")
    return dead_latents


def mean_live_norms(W_enc: torch.Tensor, W_dec: torch.Tensor, live: torch.Tensor) -> tuple[float, float]:
    """Mean encoder-column and decoder-row norms over live latents (all latents if none is live, with a
    warning: the fallback for a run whose every latent died)."""
    if not bool(live.any()):
        warnings.warn("no latent is live; resampled norms follow the mean over all latents", stacklevel=2)
        live = torch.ones_like(live)
    return float(W_enc[:, live].norm(dim=0).mean()), float(W_dec[live].norm(dim=1).mean())


def anthropic_resample(
    dead_latents: torch.Tensor,
    pool: ResamplePool,
    encoder_norm: float,
    decoder_norm: float,
    encoder_scale: float = 0.2,
    generator: torch.Generator | None = None,
) -> ResampleUpdate:
    """Bricken et al. (2023) resampling of ``dead_latents`` from ``pool`` (module docstring).

    ``encoder_norm`` / ``decoder_norm``: mean live norms. When the pool has fewer inputs with non-zero loss
    than there are dead latents, only that many latents are resampled (the rest wait for the next event)
    and a warning says so."""
    pool = pool.finite()
    dead_latents = _check_dead(dead_latents, pool.d_sae)
    weights = pool.loss.double().pow(2)
    available = int((weights > 0).sum())
    if available == 0:
        raise ValueError("the resampling pool has no input with a non-zero loss to resample from")
    if available < dead_latents.numel():
        warnings.warn(
            f"the resampling pool has {available} usable inputs for {dead_latents.numel()} dead latents; "
            f"resampling {available} of them now (raise pool_size to resample all at once)",
            stacklevel=2,
        )
        dead_latents = dead_latents[:available]
    m = dead_latents.numel()
    rows = torch.multinomial(weights.cpu(), m, replacement=False, generator=generator).to(pool.loss.device)
    encoder = F.normalize(pool.encoder_inputs[rows], dim=1).T * (encoder_scale * encoder_norm)
    decoder = F.normalize(pool.targets[rows], dim=1) * decoder_norm
    return ResampleUpdate(dead_latents, encoder, pool.loss.new_zeros(m), decoder, n_dead_resampled=m)


def anthropic_resample_weights(
    dead_latents: torch.Tensor,
    pool: ResamplePool,
    W_enc: torch.Tensor,
    W_dec: torch.Tensor,
    encoder_scale: float = 0.2,
    generator: torch.Generator | None = None,
) -> ResampleUpdate:
    """:func:`anthropic_resample` at the mean norms (:func:`mean_live_norms`) of the latents of ``W_enc [d_in,
    d_sae]`` and ``W_dec [d_sae, d_out]`` that are not in ``dead_latents``."""
    live = torch.ones(W_dec.shape[0], dtype=torch.bool, device=W_dec.device)
    live[dead_latents] = False
    encoder_norm, decoder_norm = mean_live_norms(W_enc, W_dec, live)
    return anthropic_resample(dead_latents, pool, encoder_norm, decoder_norm, encoder_scale, generator)


def _candidate_pairs(
    pool: ResamplePool, candidates: torch.Tensor, max_members: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, segments)``: the pool rows each candidate owns (at most ``max_members``, drawn at random),
    ``segments`` naming the candidate's position in ``candidates``; grouped by segment."""
    position = torch.full((pool.d_sae,), -1, dtype=torch.long, device=pool.fire_latents.device)
    position[candidates] = torch.arange(candidates.numel(), device=position.device)
    segments = position[pool.fire_latents]
    rows, segments = pool.fire_rows[segments >= 0], segments[segments >= 0]
    shuffle = torch.randperm(rows.numel(), generator=generator).to(rows.device)
    rows, segments = rows[shuffle], segments[shuffle]
    order = torch.argsort(segments, stable=True)
    rows, segments = rows[order], segments[order]
    counts = torch.bincount(segments, minlength=candidates.numel())
    starts = torch.cumsum(counts, 0) - counts
    keep = torch.arange(rows.numel(), device=rows.device) - starts[segments] < max_members
    return rows[keep], segments[keep]


def _chunked_clusters(
    directions: torch.Tensor,
    rows: torch.Tensor,
    segments: torch.Tensor,
    n_segments: int,
    k: int,
    merge_cosine: float,
    min_fraction: float,
    max_points: int = 1 << 18,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``segment_clusters`` of the points ``directions[rows]`` over runs of whole segments of at most
    ``max_points`` points (bounded memory); every segment must hold a point."""
    if n_segments == 0:
        return segments.new_zeros(0), segments.new_zeros(0, k)
    counts = torch.bincount(segments, minlength=n_segments).tolist()
    ranks, sizes = [], []
    first_segment = first_point = 0
    while first_segment < n_segments:
        last_segment, n_points = first_segment, 0
        while last_segment < n_segments and (n_points == 0 or n_points + counts[last_segment] <= max_points):
            n_points += counts[last_segment]
            last_segment += 1
        span = slice(first_point, first_point + n_points)
        chunk_ranks, chunk_sizes = segment_clusters(
            directions,
            segments[span] - first_segment,
            last_segment - first_segment,
            k,
            merge_cosine,
            min_fraction,
            rows=rows[span],
        )
        ranks.append(chunk_ranks)
        sizes.append(chunk_sizes)
        first_segment, first_point = last_segment, first_point + n_points
    return torch.cat(ranks), torch.cat(sizes)


def _max_similarity(
    directions: torch.Tensor, others: torch.Tensor, usable: torch.Tensor, own: torch.Tensor
) -> torch.Tensor:
    """``[R]``: each unit direction's largest cosine with the unit rows of ``others`` where ``usable``
    (``[O]``), leaving out row ``own[r]`` for direction ``r``; in blocks of directions."""
    best = []
    for start in range(0, directions.shape[0], 1024):
        similarity = (directions[start : start + 1024] @ others.T).masked_fill(~usable, -1.0)
        similarity.scatter_(1, own[start : start + 1024, None], -1.0)
        best.append(similarity.max(dim=1).values)
    return torch.cat(best) if best else directions.new_zeros(0)


def theory_resample(
    dead_latents: torch.Tensor,
    pool: ResamplePool,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    *,
    n_clusters: int = 2,
    merge_cosine: float = 0.9,
    min_cluster_fraction: float = 0.05,
    encoder_scale: float = 0.2,
    max_members: int = 4096,
    generator: torch.Generator | None = None,
    frozen: int = 0,
    spare: torch.Tensor | None = None,
    protected: torch.Tensor | None = None,
    fallback: bool = True,
) -> ResampleUpdate:
    """Split polysemantic live latents into ``dead_latents`` (module docstring); the update also re-points
    each split latent at the cluster it keeps. Leftover dead latents get ``anthropic_resample``. The first
    ``frozen`` latents (an anchored SAE's anchored latents) and the ``protected`` ones are never split.
    ``spare`` latents (freed by :func:`~sdl_anchor.resampling.duplicates.merge_duplicates`) take splits after
    the dead ones and are never given the fallback; with ``fallback=False`` neither are the dead ones. The
    latents the update leaves out are then the caller's (to park).

    Steps 1-2 run for every candidate at once (:mod:`~sdl_anchor.resampling.clustering`); only the
    assignment of dead latents (step 4, which depends on earlier assignments) walks the split candidates."""
    pool = pool.finite()
    d_sae, device = W_dec.shape[0], W_dec.device
    dead_latents = _check_dead(dead_latents, d_sae)
    spare = _check_dead(spare if spare is not None else dead_latents[:0], d_sae)
    slots = torch.cat([dead_latents, spare])  # the latents splits may take, dead ones first
    live = torch.ones(d_sae, dtype=torch.bool, device=device)
    live[slots] = False
    encoder_norm, decoder_norm = mean_live_norms(W_enc, W_dec, live)
    energy = pool.energy()
    energy[~live] = -1.0
    energy[:frozen] = -1.0
    if protected is not None:
        energy[protected] = -1.0
    ranked = torch.argsort(energy, descending=True)[: min(int(live.sum()), 2 * slots.numel())]
    candidates = ranked[energy[ranked] > 0]
    rows, segments = _candidate_pairs(pool, candidates, max_members, generator)
    enough = torch.bincount(segments, minlength=candidates.numel()) >= 4  # fewer cannot form two clusters
    candidates, renumber = candidates[enough], torch.cumsum(enough, 0) - 1
    rows, segments = rows[enough[segments]], renumber[segments[enough[segments]]]
    k = n_clusters
    ranks, sizes = _chunked_clusters(
        F.normalize(pool.targets, dim=1),
        rows,
        segments,
        candidates.numel(),
        k,
        merge_cosine,
        min_cluster_fraction,
    )
    clustered = ranks >= 0
    slot = segments[clustered] * k + ranks[clustered]
    n_slots, members = candidates.numel() * k, rows[clustered]
    decoder_dirs = F.normalize(grouped_row_sums(pool.targets, members, slot, n_slots), dim=1)
    decoder_dirs = decoder_dirs.view(candidates.numel(), k, pool.targets.shape[1])
    encoder_dirs = F.normalize(grouped_row_sums(pool.encoder_inputs, members, slot, n_slots), dim=1)
    encoder_dirs = encoder_dirs.view(candidates.numel(), k, pool.encoder_inputs.shape[1])
    splittable = torch.nonzero((sizes > 0).sum(dim=1) >= 2).flatten()
    # each new direction's closest live decoder other than the latent being split
    live_similarity = _max_similarity(
        decoder_dirs[splittable].reshape(-1, decoder_dirs.shape[-1]),
        F.normalize(W_dec, dim=1),
        live,
        candidates[splittable].repeat_interleave(k),
    ).view(-1, k)
    offsets = run_offsets(segments, candidates.numel()).tolist()
    n_free = slots.numel()
    assigned = decoder_dirs.new_zeros(2 * n_free + 1, decoder_dirs.shape[-1])
    n_assigned = 0
    split_segments, new_slots, new_biases = [], [], []
    for position, s in enumerate(splittable.tolist()):
        if len(new_slots) == n_free:
            break
        n_kept = int((sizes[s] > 0).sum())
        chosen = [0]
        for r in range(1, n_kept):
            if float(live_similarity[position, r]) > merge_cosine:
                continue  # a live latent already writes this direction
            if n_assigned and float((assigned[:n_assigned] @ decoder_dirs[s, r]).max()) > merge_cosine:
                continue  # another split already wrote it
            if len(new_slots) + len(chosen) - 1 == n_free:
                break
            chosen.append(r)
        if len(chosen) < 2:
            continue
        split_segments.append(s)
        assigned[n_assigned] = decoder_dirs[s, 0]
        n_assigned += 1
        member_rows = rows[offsets[s] : offsets[s + 1]]
        member_ranks = ranks[offsets[s] : offsets[s + 1]]
        for r in chosen[1:]:
            projection = pool.encoder_inputs[member_rows] @ (encoder_dirs[s, r] * encoder_norm)
            s_in = projection[member_ranks == r].median()
            outside = projection[member_ranks != r]
            s_out = outside.median() if outside.numel() else s_in.new_zeros(())
            new_biases.append(-(s_in + torch.clamp(s_out, max=s_in)) / 2)
            new_slots.append(s * k + r)
            assigned[n_assigned] = decoder_dirs[s, r]
            n_assigned += 1
    updates: list[ResampleUpdate] = []
    if split_segments:
        kept = torch.tensor(split_segments, device=device) * k
        split_latents = candidates[kept // k]
        updates.append(
            ResampleUpdate(
                split_latents,
                (
                    encoder_dirs.view(-1, W_enc.shape[0])[kept] * W_enc[:, split_latents].norm(dim=0)[:, None]
                ).T,
                b_enc[split_latents].clone(),  # their thresholds were tuned on these inputs
                decoder_dirs.view(-1, W_dec.shape[1])[kept] * W_dec[split_latents].norm(dim=1)[:, None],
                kept_live=torch.ones(split_latents.numel(), dtype=torch.bool, device=device),
            )
        )
        new = torch.tensor(new_slots, device=device)
        updates.append(
            ResampleUpdate(
                slots[: new.numel()],
                (encoder_dirs.view(-1, W_enc.shape[0])[new] * encoder_norm).T,
                torch.stack(new_biases).to(b_enc.dtype),
                decoder_dirs.view(-1, W_dec.shape[1])[new] * decoder_norm,
                n_dead_resampled=new.numel(),
            )
        )
    free = dead_latents[len(new_slots) :]  # spare latents left over get no fallback
    if fallback and free.numel():
        recipe = anthropic_resample(free, pool, encoder_norm, decoder_norm, encoder_scale, generator)
        recipe.n_fallback = recipe.n_dead_resampled
        updates.append(recipe)
    update = ResampleUpdate.concat(updates, W_enc.shape[0], W_dec.shape[1], W_dec)
    update.n_split = len(split_segments)
    return update
