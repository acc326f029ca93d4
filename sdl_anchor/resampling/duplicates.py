"""Merging duplicated latents: one feature written by several co-firing latents (the ``theory`` strategy's
step 0, when ``ResamplingConfig.duplicate_cosine`` is set).

The other face of the paper's polysemantic latent (several features on one latent, Theorem 3.5) is one
feature on several latents. With many active slots (TopK at k=128 on the LRB, where about ten features fire
per input) nothing pushes such copies apart or together: ``m`` latents whose decoders all sit near ``w_a``
and fire together split ``a``'s coefficient between them, ``sum_j f_j W_dec[j] ~ c_a w_a``, and each fits a
little of the noise, so none of them points at ``w_a`` (measured at k=128: a feature's five or six copies at
cosine 0.90-0.95 each, their activation-weighted mean at 0.98). The copies of a feature are latents whose
decoder rows have cosine above ``duplicate_cosine`` and that fire together: on at least ``cofiring`` of the
inputs where the rarer of the two fires, the other fires too (two latents with near directions that fire on
different inputs are two features, and stay).

A group of copies (connected through such pairs) merges into the latent with the largest summed activation
on the pool. It takes the group's sum, so that it answers for the whole coefficient: its decoder row is
``sum_j A_j W_dec[j] / sum_j A_j`` (``A_j``: latent ``j``'s summed activation on the pool) and its encoder
column and bias are the sums of the group's, so its activation is the sum of theirs wherever they all fire;
scaled down where its summed activation on the pool would exceed the group's ``sum_j A_j``.
The others are freed: the same event may give them to splits, and those left over are *parked*
(:func:`parked_weights`: silent, and pointing nowhere) until a later event's split takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# pairs whose co-firing is counted at a time (bounded memory: PAIR_BLOCK x chunk booleans)
PAIR_BLOCK = 16_384


def duplicate_pairs(
    W_dec: torch.Tensor, eligible: torch.Tensor, cosine: float, block: int = 2048
) -> torch.Tensor:
    """``[E, 2]`` (i < j): pairs of ``eligible`` latents (``[d_sae]`` bool) whose decoder rows have cosine
    above ``cosine``. Each block of rows is compared with itself and the rows after it only (the upper
    triangle of the similarity matrix: half the products of the full one)."""
    index = torch.nonzero(eligible).flatten()
    units = F.normalize(W_dec[index].float(), dim=1)
    pairs = []
    for start in range(0, index.numel(), block):
        similarity = units[start : start + block] @ units[start:].T
        rows, cols = torch.nonzero(similarity > cosine, as_tuple=True)
        rows, cols = rows + start, cols + start
        upper = rows < cols
        pairs.append(torch.stack([index[rows[upper]], index[cols[upper]]], dim=1))
    return torch.cat(pairs) if pairs else index.new_zeros(0, 2)


class FiringStats:
    """Per-latent firing counts and summed activations over the pool, and how often each of ``pairs``
    fires together; filled one chunk of activations at a time (:meth:`add`).

    A chunk's activations are read once, as the list of its firing entries (a TopK coder fires k of d_sae
    latents per input): counts and sums are histograms of that list, and co-firing is counted on a
    ``[latents in pairs, inputs]`` firing table built from it, not on the dense ``[inputs, d_sae]`` one."""

    def __init__(self, pairs: torch.Tensor, d_sae: int, like: torch.Tensor) -> None:
        device = like.device
        self.pairs = pairs.to(device)
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.activation_sums = torch.zeros(d_sae, dtype=torch.float32, device=device)
        self.both_fire = torch.zeros(pairs.shape[0], dtype=torch.long, device=device)
        # each latent's row in the firing table (-1: in no pair), and each pair's two rows
        paired = torch.unique(self.pairs)
        self._table_row = torch.full((d_sae,), -1, dtype=torch.long, device=device)
        self._table_row[paired] = torch.arange(paired.numel(), device=device)
        self._pair_rows = self._table_row[self.pairs]
        self._n_paired = paired.numel()

    @torch.no_grad()
    def add(self, acts: torch.Tensor) -> None:
        inputs, latents = torch.nonzero(acts, as_tuple=True)
        values = acts[inputs, latents]
        positive = values > 0
        inputs, latents, values = inputs[positive], latents[positive], values[positive]
        self.fire_counts += torch.bincount(latents, minlength=self.fire_counts.numel())
        self.activation_sums.index_add_(0, latents, values.float())
        if not self.pairs.shape[0]:
            return
        row = self._table_row[latents]
        in_pairs = row >= 0
        table = torch.zeros(self._n_paired, acts.shape[0], dtype=torch.bool, device=acts.device)
        table[row[in_pairs], inputs[in_pairs]] = True
        for start in range(0, self.pairs.shape[0], PAIR_BLOCK):
            pair = self._pair_rows[start : start + PAIR_BLOCK]
            self.both_fire[start : start + PAIR_BLOCK] += (table[pair[:, 0]] & table[pair[:, 1]]).sum(dim=1)


@dataclass
class Merge:
    """The outcome of :func:`merge_duplicates`: ``keepers`` (one per group) take ``encoder [d_in, g]``,
    ``encoder_bias [g]`` and ``decoder [g, d_out]``; ``freed`` are the group's other latents."""

    keepers: torch.Tensor
    encoder: torch.Tensor
    encoder_bias: torch.Tensor
    decoder: torch.Tensor
    freed: torch.Tensor


def _components(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of two or more latents) of the graph whose edges are ``pairs``."""
    parent: dict[int, int] = {}

    def root(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in parent:
        groups.setdefault(root(a), []).append(a)
    return [sorted(group) for group in groups.values() if len(group) > 1]


@torch.no_grad()
def merge_duplicates(
    stats: FiringStats,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    cofiring: float,
    encoder_inputs: torch.Tensor,
    acts_scaled_by_decoder_norm: bool = False,
) -> Merge:
    """Group the co-firing copies among ``stats.pairs`` and merge each group (module docstring).

    The summed encoder and bias are then scaled down, where needed, so that the merged latent's summed
    activation over the pool (``encoder_inputs``, as the encoder sees them) is no more than the group's: a
    member with a positive pre-activation that TopK did not select adds to the sum without having fired.
    ``acts_scaled_by_decoder_norm``: the coder's activations are its pre-activations times the decoder row
    norm (SAELens's ``rescale_acts_by_decoder_norm``)."""
    counts = stats.fire_counts
    rarer = torch.minimum(counts[stats.pairs[:, 0]], counts[stats.pairs[:, 1]])
    together = (rarer > 0) & (stats.both_fire >= cofiring * rarer)
    groups = _components([tuple(pair) for pair in stats.pairs[together].tolist()])
    device = W_dec.device
    if not groups:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Merge(
            empty,
            W_enc.new_zeros(W_enc.shape[0], 0),
            b_enc.new_zeros(0),
            W_dec.new_zeros(0, W_dec.shape[1]),
            empty,
        )
    keepers, freed, encoders, biases, decoders, totals = [], [], [], [], [], []
    for group in groups:
        members = torch.tensor(group, device=device)
        weights = stats.activation_sums[members].to(W_dec.dtype)
        keeper = int(members[weights.argmax()])
        keepers.append(keeper)
        freed.extend(m for m in group if m != keeper)
        encoders.append(W_enc[:, members].sum(dim=1))
        biases.append(b_enc[members].sum())
        decoders.append((weights[:, None] * W_dec[members]).sum(0) / weights.sum().clamp_min(1e-12))
        totals.append(weights.sum())
    encoder, bias, decoder = torch.stack(encoders, dim=1), torch.stack(biases), torch.stack(decoders)
    merged_total = torch.zeros_like(bias)
    for start in range(0, encoder_inputs.shape[0], 4096):
        pre = encoder_inputs[start : start + 4096].to(encoder.dtype) @ encoder + bias
        merged_total += pre.clamp_min(0).sum(dim=0)
    if acts_scaled_by_decoder_norm:
        merged_total *= decoder.norm(dim=1)
    scale = (torch.stack(totals) / merged_total.clamp_min(1e-12)).clamp(max=1.0)
    return Merge(
        torch.tensor(keepers, device=device),
        encoder * scale,
        bias * scale,
        decoder,
        torch.tensor(freed, device=device),
    )


@torch.no_grad()
def parked_weights(
    latents: torch.Tensor,
    W_enc: torch.Tensor,
    W_dec: torch.Tensor,
    largest_input_norm: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(encoder [d_in, m], encoder_bias [m], decoder [m, d_out])`` that silence ``latents``: encoder and
    decoder point along one random direction (so a parked latent claims no feature, and self-anchoring has
    nothing to pull), at the latent's own norms, and the bias is ``-(2 ||W_enc[:, j]|| r + 1)`` for inputs of
    norm up to ``r = largest_input_norm``, below any pre-activation such an input can give (Cauchy-Schwarz)."""
    m = latents.numel()
    direction = torch.randn(m, max(W_enc.shape[0], W_dec.shape[1]), generator=generator)
    direction = direction.to(device=W_dec.device, dtype=W_dec.dtype)
    encoder_norm = W_enc[:, latents].norm(dim=0)
    encoder = F.normalize(direction[:, : W_enc.shape[0]], dim=1) * encoder_norm[:, None]
    decoder = F.normalize(direction[:, : W_dec.shape[1]], dim=1) * W_dec[latents].norm(dim=1)[:, None]
    return encoder.T, -(2.0 * largest_input_norm * encoder_norm + 1.0), decoder
