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


def spherical_kmeans(
    directions: torch.Tensor, k: int, iterations: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [N], centroids [k', D])`` of unit ``directions``, seeded by farthest-point selection
    (deterministic); ``k' <= k`` when fewer distinct points exist."""
    centroids = [directions[0]]
    for _ in range(1, min(k, directions.shape[0])):
        similarity = (directions @ torch.stack(centroids).T).max(dim=1).values
        centroids.append(directions[int(similarity.argmin())])
    centres = torch.stack(centroids)
    for _ in range(iterations):
        labels = (directions @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, labels, directions)
        occupied = torch.bincount(labels, minlength=centres.shape[0]) > 0
        centres = torch.where(occupied[:, None], F.normalize(sums, dim=1), centres)
    return (directions @ centres.T).argmax(dim=1), centres


def _clusters(
    directions: torch.Tensor, k: int, merge_cosine: float, min_fraction: float
) -> list[torch.Tensor]:
    """Member indices of the distinct clusters of ``directions``, largest first."""
    labels, centres = spherical_kmeans(directions, k)
    groups = [torch.nonzero(labels == c).flatten() for c in range(centres.shape[0])]
    merged: list[tuple[torch.Tensor, torch.Tensor]] = []  # (centre, members)
    for c, members in enumerate(groups):
        if members.numel() == 0:
            continue
        for i, (centre, existing) in enumerate(merged):
            if float(centre @ centres[c]) > merge_cosine:
                members = torch.cat([existing, members])
                merged[i] = (F.normalize(directions[members].sum(0), dim=0), members)
                break
        else:
            merged.append((centres[c], members))
    minimum = min_fraction * directions.shape[0]
    kept = [members for _, members in merged if members.numel() >= max(2, minimum)]
    return sorted(kept, key=lambda members: -members.numel())


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
) -> ResampleUpdate:
    """Split polysemantic live latents into ``dead_latents`` (module docstring); the update also re-points
    each split latent at the cluster it keeps. Leftover dead latents get ``anthropic_resample``."""
    pool = pool.finite()
    d_sae = W_dec.shape[0]
    dead_latents = _check_dead(dead_latents, d_sae)
    live = torch.ones(d_sae, dtype=torch.bool, device=W_dec.device)
    live[dead_latents] = False
    encoder_norm, decoder_norm = mean_live_norms(W_enc, W_dec, live)
    live_decoders = F.normalize(W_dec, dim=1)
    energy = pool.energy()
    energy[~live] = -1.0
    candidates = torch.argsort(energy, descending=True)[: min(int(live.sum()), 2 * dead_latents.numel())]
    free = dead_latents.tolist()
    assigned: list[torch.Tensor] = []
    updates: list[ResampleUpdate] = []
    n_split = 0
    for latent in candidates.tolist():
        if not free or energy[latent] <= 0:
            break
        members = pool.members(latent)
        if members.numel() > max_members:
            keep = torch.randperm(members.numel(), generator=generator)[:max_members]
            members = members[keep.to(members.device)]
        if members.numel() < 4:
            continue
        targets = pool.targets[members]
        clusters = _clusters(F.normalize(targets, dim=1), n_clusters, merge_cosine, min_cluster_fraction)
        if len(clusters) < 2:
            continue
        split = []
        for rank, cluster in enumerate(clusters):
            decoder_dir = F.normalize(targets[cluster].mean(0), dim=0)
            if rank > 0:
                similarity = (live_decoders @ decoder_dir).masked_fill(~live, -1.0)
                similarity[latent] = -1.0
                if assigned:
                    similarity = torch.cat([similarity, torch.stack(assigned) @ decoder_dir])
                if float(similarity.max()) > merge_cosine:
                    continue  # another latent already writes this direction
                if len(split) > len(free):
                    break
            encoder_dir = F.normalize(pool.encoder_inputs[members[cluster]].mean(0), dim=0)
            split.append((rank, cluster, encoder_dir, decoder_dir))
        if len(split) < 2 or split[0][0] != 0:
            continue
        n_split += 1
        _, _, kept_enc, kept_dec = split[0]
        updates.append(
            ResampleUpdate(
                torch.tensor([latent], device=W_dec.device),
                (kept_enc * W_enc[:, latent].norm())[:, None],
                b_enc[latent : latent + 1].clone(),  # its threshold was tuned on these inputs
                (kept_dec * W_dec[latent].norm())[None],
            )
        )
        assigned.append(kept_dec)
        for _, cluster, encoder_dir, decoder_dir in split[1:]:
            encoder = encoder_dir * encoder_norm
            inside = pool.encoder_inputs[members[cluster]] @ encoder
            outside_mask = torch.ones(members.numel(), dtype=torch.bool, device=members.device)
            outside_mask[cluster] = False
            outside = pool.encoder_inputs[members[outside_mask]] @ encoder
            s_in = inside.median()
            s_out = outside.median() if outside.numel() else s_in.new_zeros(())
            bias = -(s_in + torch.clamp(s_out, max=s_in)) / 2
            updates.append(
                ResampleUpdate(
                    torch.tensor([free.pop(0)], device=W_dec.device),
                    encoder[:, None],
                    bias[None],
                    (decoder_dir * decoder_norm)[None],
                    n_dead_resampled=1,
                )
            )
            assigned.append(decoder_dir)
    if free:
        fallback = anthropic_resample(
            torch.tensor(free, device=W_dec.device),
            pool,
            encoder_norm,
            decoder_norm,
            encoder_scale,
            generator,
        )
        fallback.n_fallback = fallback.n_dead_resampled
        updates.append(fallback)
    update = ResampleUpdate.concat(updates, W_enc.shape[0], W_dec.shape[1], W_dec)
    update.n_split = n_split
    return update
