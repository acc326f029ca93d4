"""Sparse-backward kernels for the TopK family (TopK, BatchTopK, Matryoshka BatchTopK), in plain torch.

A TopK-family coder keeps a handful of latents per input: ``k`` of ``d_sae`` for TopK, ``k * B`` of the
batch's ``B * d_sae`` for BatchTopK. SAELens's training step is nevertheless dense end to end: the decoder
multiplies a ``[B, d_sae]`` activation matrix that is almost all zeros, and the encoder's backward pass
multiplies a ``[B, d_sae]`` gradient that is zero wherever a latent was not selected. Only the encoder's
forward product ``x W_enc`` has to be dense (every pre-activation competes for the top k).

The kernels here do the rest on the selected entries only, as EleutherAI's sparsify does with its fused
TopK encoder, and return exactly the gradients of the dense computation (the gradient of the loss with
respect to an unselected latent's pre-activation is zero: the selection scatters it away):

* :func:`sampled_pre_activations` — the pre-activations ``h = (x - shift) W_enc + b_enc`` at the selected
  ``(row, col)`` entries, read off a dense ``h`` computed without a graph; its backward computes
  ``dL/dW_enc = (x - shift)^T G``, ``dL/db_enc`` and ``dL/dshift`` from the sparse gradient ``G``.
* :func:`sparse_decode` — ``A W_dec`` for a sparse activation matrix ``A``; its backward gives
  ``dL/dA`` on ``A``'s entries (a sampled product) and ``dL/dW_dec = A^T dL/dout``.

The one dense product, ``(x - shift) W_enc + b_enc`` (:func:`dense_pre_activations`), runs on the CPU in
float32 on oneDNN's matmul (the kernel torch's inductor compiles CPU linear layers to) or torch's ``addmm``
(MKL's sgemm), whichever a short, cached calibration on this machine found faster
(:mod:`sdl_anchor.kernel_choice`).

Entries are kept in row-major order (rows ascending, columns ascending within a row) as a
:class:`SparseEntries`. Its products sum each row's entries (the decoder:
:meth:`SparseEntries.product`) or each latent's (the weight gradients:
:meth:`SparseEntries.transposed_product`) as embedding bags, torch's fused gather-scale-sum kernel, which
writes its output once; torch's CSR products zero-fill and copy temporaries, which at SAE sizes cost them
more than twice the time. The encoder's weight gradient is summed latent by latent, then autograd copies it
into ``W_enc``'s ``[d_in, d_sae]`` layout. Only the decoder's gradient at the selected entries (a
sampled dense product) and ``dL/dx`` (rarely needed) stay on torch's CSR kernels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from sdl_anchor.kernel_choice import choose_dense_product, run_dense_product


@dataclass(frozen=True)
class SparseEntries:
    """The selected ``(row, col)`` entries of a ``[n_rows, n_cols]`` activation matrix, row-major."""

    rows: torch.Tensor  # [N] int64, ascending
    cols: torch.Tensor  # [N] int64, ascending within each row
    n_rows: int
    n_cols: int

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """The ``[n_rows, n_cols]`` CSR matrix holding ``values`` at these entries."""
        return csr_from_sorted(self.rows, self.cols, values, self.n_rows, self.n_cols)

    @cached_property
    def row_starts(self) -> torch.Tensor:
        """``[n_rows]``: where each row's entries start (the entries are row-major)."""
        return run_offsets(self.rows, self.n_rows)[:-1]

    def product(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``A @ dense``, ``[n_rows, d]``, for ``A [n_rows, n_cols]`` holding ``values`` at these entries
        and ``dense [n_cols, d]``: row ``i`` sums ``values[e] * dense[cols[e]]`` over row ``i``'s entries,
        one embedding bag per row (sparsify's decoder), faster than torch's ``CSR @ dense``, which zero-fills
        and copies a temporary."""
        return F.embedding_bag(
            self.cols, dense.contiguous(), self.row_starts, mode="sum", per_sample_weights=values
        )

    @cached_property
    def column_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, starts)``: the permutation sorting the entries by column (stable: rows stay ascending
        within a column) and where each column's run starts in it. Computed once per step, shared by the
        encoder's and the decoder's backward passes."""
        order = torch.argsort(self.cols, stable=True)
        return order, run_offsets(self.cols, self.n_cols)[:-1]

    def transposed_product(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``A^T @ dense``, ``[n_cols, d]``, for ``A [n_rows, n_cols]`` holding ``values`` at these entries
        and ``dense [n_rows, d]``.

        Row ``j`` of the result is the sum of ``values[e] * dense[rows[e]]`` over column ``j``'s entries, one
        embedding bag per column (torch's fused gather-scale-sum kernel, which sparsify's decoder also
        runs), written once into a fresh tensor. Torch's ``CSR^T @ dense`` instead zero-fills a temporary
        and copies it out; on the sparse step's weight gradients that cost more than the products."""
        order, starts = self.column_order
        return F.embedding_bag(
            self.rows[order], dense.contiguous(), starts, mode="sum", per_sample_weights=values[order]
        )

    def select(self, mask: torch.Tensor) -> SparseEntries:
        """The entries where ``mask [N]`` is true (still row-major)."""
        return SparseEntries(self.rows[mask], self.cols[mask], self.n_rows, self.n_cols)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """``dense[rows, cols]`` for a ``[n_rows, n_cols]`` tensor."""
        return dense[self.rows, self.cols]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense ``[n_rows, n_cols]`` matrix with ``values`` at these entries, zero elsewhere."""
        dense = values.new_zeros(self.n_rows, self.n_cols)
        dense[self.rows, self.cols] = values
        return dense

    def coo(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse COO ``[n_rows, n_cols]`` matrix holding ``values`` (SAELens's sparse ``feature_acts``)."""
        indices = torch.stack([self.rows, self.cols])
        return torch.sparse_coo_tensor(
            indices, values, (self.n_rows, self.n_cols), is_coalesced=True, check_invariants=False
        )


def latents_fired(feature_acts: torch.Tensor) -> torch.Tensor:
    """``[d_sae]`` bool: which latents are non-zero anywhere in ``feature_acts [..., d_sae]`` (dense, or
    sparse COO as the sparse step and SAELens's ``use_sparse_activations`` return it)."""
    if feature_acts.is_sparse:
        acts = feature_acts.coalesce()
        fired = torch.zeros(acts.shape[-1], dtype=torch.bool, device=acts.device)
        fired[acts.indices()[-1][acts.values() != 0]] = True
        return fired
    return (feature_acts.detach() != 0).reshape(-1, feature_acts.shape[-1]).any(dim=0)


def run_offsets(index: torch.Tensor, n: int) -> torch.Tensor:
    """``[n + 1]``: where each value ``0 .. n-1`` of ``index``'s entries starts once they are sorted by it,
    then the total (CSR's ``crow_indices``; an embedding bag's offsets without the last)."""
    counts = torch.bincount(index, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def csr_from_sorted(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int
) -> torch.Tensor:
    """The ``[n_rows, n_cols]`` CSR matrix holding ``values`` at the row-sorted COO entries ``(rows, cols)``."""
    crow = run_offsets(rows, n_rows)
    with warnings.catch_warnings():  # torch calls its CSR support "beta" on every construction
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, (n_rows, n_cols), check_invariants=False)


# largest_indices: entries sampled to place its bound, and the margin (a multiple of the kept fraction)
BOUND_SAMPLE = 65_536
BOUND_MARGIN = 2.0


@torch.no_grad()
def dense_pre_activations(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, kernel: str | None = None
) -> torch.Tensor:
    """``x @ W_enc + b_enc`` for a ``[B, d_in]`` batch, without a graph: every pre-activation competes for
    the top k, so this product is the sparse step's only dense one, and most of its time.

    On the CPU in float32 two kernels can run it, oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``)
    and ``torch.addmm`` (MKL's sgemm), and which is faster depends on the CPU (on two AMD EPYC cores
    oneDNN's took 0.63 to 0.72 of the time at batch 1024, d_in 768, d_sae 16,000; on an Intel Xeon 1.08):
    :func:`sdl_anchor.kernel_choice.choose_dense_product` times both once per machine and shape class and
    caches the faster. ``kernel`` (``"calibrate"``, ``"onednn"``, ``"addmm"``; default
    ``$SDL_ANCHOR_KERNELS``, else calibrate) overrides it. The two agree to float round-off (relative
    1e-6); elsewhere (float64, a GPU, a torch without oneDNN) this is ``torch.addmm``.
    """
    choice = choose_dense_product(x.shape[0], W_enc.shape[0], W_enc.shape[1], x.dtype, x.device, kernel)
    return run_dense_product(choice.choice, x, W_enc, b_enc)


def largest_indices(values: torch.Tensor, n: int) -> torch.Tensor:
    """The indices of the ``n`` largest entries of the 1-D ``values``: ``torch.topk``'s (up to the order of
    ties), several times faster when ``n`` is a small fraction of a large tensor (a BatchTopK batch: 32 of
    16,000 latents). A strided sample places a bound below the ``n``-th largest entry with a margin;
    ``torch.topk`` then runs over the entries at or above it only, or over all of them when fewer than
    ``n`` are (the result is the same either way). A NaN, which ``torch.topk`` ranks first, is never below the
    bound, so it stays a candidate."""
    total = values.numel()
    if total <= BOUND_SAMPLE or n >= total // 2:
        return torch.topk(values, n).indices
    sample = values[:: total // BOUND_SAMPLE]
    above = min(sample.numel(), int(BOUND_MARGIN * n / total * sample.numel()) + 1)
    bound = torch.kthvalue(sample, sample.numel() - above + 1).values
    candidates = torch.nonzero(~(values < bound)).flatten()  # NaN included
    if candidates.numel() < n:
        return torch.topk(values, n).indices
    return candidates[torch.topk(values[candidates], n).indices]


def topk_entries(scores: torch.Tensor, k: int) -> SparseEntries:
    """The ``k`` largest entries of every row of ``scores [B, n]`` (SAELens's ``TopK`` selection)."""
    _, indices = torch.topk(scores, k=k, dim=-1, sorted=False)
    cols = indices.sort(dim=-1).values.flatten()
    rows = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(k)
    return SparseEntries(rows, cols, scores.shape[0], scores.shape[1])


def batch_topk_entries(scores: torch.Tensor, k: float) -> SparseEntries:
    """The ``int(k * B)`` largest entries of ``relu(scores [B, n])`` over the whole batch (SAELens's
    ``BatchTopK`` selection)."""
    flat = scores.relu().flatten()
    indices = largest_indices(flat, int(k * scores.shape[0])).sort().values
    n = scores.shape[1]
    return SparseEntries(indices // n, indices % n, scores.shape[0], n)


class _SampledPreActivations(torch.autograd.Function):
    """Values of ``h = (x - shift) W_enc + b_enc`` at given entries, with a sparse backward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        x: torch.Tensor,
        shift: torch.Tensor | None,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        entries: SparseEntries,
    ) -> torch.Tensor:
        ctx.entries = entries
        ctx.has_shift = shift is not None
        ctx.save_for_backward(x, shift if shift is not None else x.new_empty(0), W_enc)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, shift, W_enc = ctx.saved_tensors
        entries: SparseEntries = ctx.entries
        needs = ctx.needs_input_grad
        grad_values = grad_values.contiguous()
        grad_x = grad_shift = grad_W_enc = grad_b_enc = None
        column_sums = None
        if needs[3]:  # (x - shift)^T G, computed as the transpose of G^T (x - shift)
            centred = x - shift if ctx.has_shift else x
            grad_W_enc = entries.transposed_product(grad_values, centred).T
        if needs[4] or needs[2]:
            column_sums = grad_values.new_zeros(entries.n_cols).index_add_(0, entries.cols, grad_values)
            grad_b_enc = column_sums if needs[4] else None
        if needs[2]:
            grad_shift = -(W_enc @ column_sums)  # sum over rows of -G W_enc^T
        if needs[1]:
            grad_x = entries.csr(grad_values) @ W_enc.T  # G W_enc^T (a bag would copy W_enc.T contiguous)
        return None, grad_x, grad_shift, grad_W_enc, grad_b_enc, None


def sampled_pre_activations(
    values: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor | None,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    entries: SparseEntries,
) -> torch.Tensor:
    """``h[rows, cols]`` for ``h = (x - shift) @ W_enc + b_enc``, differentiable in ``x``, ``shift``,
    ``W_enc`` and ``b_enc`` with a backward pass that touches only the selected entries.

    ``values`` are those pre-activations, already computed without autograd (the selection needs all of
    ``h``); ``shift`` is SAELens's decoder bias where ``apply_b_dec_to_input`` subtracts it, else None.
    """
    return _SampledPreActivations.apply(values, x, shift, W_enc, b_enc, entries)


class _SparseDecode(torch.autograd.Function):
    """``A @ W_dec`` for ``A`` given by its values at ``entries``, with a sparse backward pass."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, W_dec: torch.Tensor, entries: SparseEntries) -> torch.Tensor:
        ctx.entries = entries
        ctx.save_for_backward(values, W_dec)
        if values.numel() == 0:
            return W_dec.new_zeros(entries.n_rows, W_dec.shape[1])
        return entries.product(values, W_dec)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        values, W_dec = ctx.saved_tensors
        entries: SparseEntries = ctx.entries
        if values.numel() == 0:  # nothing selected (e.g. an empty Matryoshka level): no gradient
            return values.new_zeros(0), None, None
        grad_values = grad_W_dec = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            pattern = entries.csr(torch.zeros_like(values))
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_W_dec = entries.transposed_product(values, grad_out)  # A^T dL/dout
        return grad_values, grad_W_dec, None


def sparse_decode(values: torch.Tensor, W_dec: torch.Tensor, entries: SparseEntries) -> torch.Tensor:
    """``A @ W_dec`` (no bias) for the sparse ``A [n_rows, d_sae]`` holding ``values`` at ``entries``."""
    return _SparseDecode.apply(values, W_dec, entries)
