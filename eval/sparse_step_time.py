"""The sparse-backward TopK-family step against SAELens's dense step and against EleutherAI sparsify's.

* ``<architecture> sparse step / SAELens dense step (same trainer, fused Adam)``: our coder
  (``sparse_backward`` on) against SAELens's stock class, from the same weights on the same batches, both
  stepped by the same trainer (SAELens's ``SAETrainer`` with torch's fused Adam, as ``sdl-anchor train`` runs
  every coder), so the ratio is the sparse step's kernels against the dense step's and nothing else. (It
  once timed the stock class under SAELens's own, unfused Adam, crediting the fused optimiser to the sparse
  step.)
* ``sparse step's dense product: calibrated kernel / the other`` (CPU only): the one dense product of the
  step, ``x @ W_enc + b_enc``, on the kernel :mod:`sdl_anchor.kernel_choice` chose for this machine and shape
  (oneDNN's matmul or ``torch.addmm``, MKL's sgemm), against the other one, on the same batches: at most 1
  when the calibration chose right, or within the noise floor (the chosen kernel timed against itself in
  the same rounds) when the two tie on this machine.
* ``sparse topk step / sparsify trainer step``: our TopK SAE's whole trainer step (SAELens's bookkeeping,
  gradient clipping and all) against sparsify's ``SparseCoder`` step as sparsify's ``Trainer`` runs it
  (decoder normalisation, gradient projection and bookkeeping included; :class:`SparsifyStep`), both with
  torch's fused Adam, on the same batches; ``bare_ratio`` beside it is against sparsify's forward, backward
  and update alone (what the row timed until 2026-12-07). sparsify (``pip install eai-sparsify``) is
  imported when installed; without it the row is skipped with that reason.

``python -m sdl_anchor.eval.sparse_step_time`` prints both at the issue's size (d_in 768, d_sae 16,384,
k 32, batch 1024).
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class

from sdl_anchor.eval.step_timing import paired_ratio, step_seconds, trainer_for_timing
from sdl_anchor.kernel_choice import (
    DENSE_PRODUCTS,
    choose_dense_product,
    dense_product_candidates,
    run_dense_product,
)

SIZES = {"d_in": 768, "d_sae": 16_384, "k": 32, "batch_size": 1024, "steps": 8}
SPARSE_ARCHITECTURES = {
    "anchored_topk": "topk",
    "anchored_batchtopk": "batchtopk",
    "anchored_matryoshka_batchtopk": "matryoshka_batchtopk",
}


def _batches(sizes: dict[str, Any], device: str, n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(0)
    return [
        torch.randn(sizes["batch_size"], sizes["d_in"], generator=generator, device=device) for _ in range(n)
    ]


def _fields(architecture: str, sizes: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"d_in": sizes["d_in"], "d_sae": sizes["d_sae"], "k": sizes["k"]}
    if "matryoshka" in architecture:
        fields["matryoshka_widths"] = [sizes["d_sae"] // 4, sizes["d_sae"]]
    return fields


def _round_times(steppers: dict[str, Any], sizes: dict[str, Any], device: str) -> dict[str, list[float]]:
    """Per-round seconds of every stepper (``.step(batch)``), taking turns on the same batches
    (:func:`step_seconds`)."""
    batches = _batches(sizes, device)
    return step_seconds(
        {key: (stepper, batches) for key, stepper in steppers.items()}, sizes["steps"], device, warm_up=2
    )


def _paired_row(
    name: str,
    times: dict[str, list[float]],
    ours: str,
    baseline: str,
    sizes: dict[str, Any],
    size_keys: tuple[str, ...] = ("d_in", "d_sae", "k", "batch_size"),
) -> dict[str, Any]:
    """A row of ``ours / baseline`` from :func:`_round_times`: the paired ratio, the two's median seconds and
    the sizes."""
    return {
        "name": name,
        "ratio": paired_ratio(times, ours, baseline),
        **{f"{key}_seconds": statistics.median(times[key]) for key in (ours, baseline)},
        **{key: sizes[key] for key in size_keys},
    }


def dense_comparison_name(architecture: str) -> str:
    """The row's name: what it times (one trainer and optimiser for both steps, so only the step differs)."""
    stock = SPARSE_ARCHITECTURES[architecture]
    return f"{architecture} sparse step / SAELens {stock} dense step (same trainer, fused Adam)"


def measure_against_dense(architecture: str, sizes: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Median step seconds of our sparse ``architecture`` and SAELens's stock dense twin, from the same
    weights, each stepped by :func:`trainer_for_timing` (SAELens's ``SAETrainer`` with fused Adam)."""
    ours_class, ours_config = get_sae_training_class(architecture)
    stock_class, stock_config = get_sae_training_class(SPARSE_ARCHITECTURES[architecture])
    fields = _fields(architecture, sizes)
    torch.manual_seed(0)
    ours = ours_class(ours_config(device=device, sparse_backward=True, **fields))
    stock = stock_class(stock_config(device=device, **fields))
    stock.load_state_dict(ours.state_dict())
    steppers = {
        "dense": trainer_for_timing(stock, sizes["batch_size"], device),
        "sparse": trainer_for_timing(ours, sizes["batch_size"], device),
    }
    times = _round_times(steppers, sizes, device)
    row = _paired_row(dense_comparison_name(architecture), times, "sparse", "dense", sizes)
    return {**row, "optimizer": "torch fused Adam, both steps"}


class _Product:
    """``step(x)`` computes ``x @ W_enc + b_enc`` with ``product`` (for :func:`step_seconds`)."""

    def __init__(self, product: Any, W_enc: torch.Tensor, b_enc: torch.Tensor) -> None:
        self.product, self.W_enc, self.b_enc = product, W_enc, b_enc

    def step(self, batch: torch.Tensor) -> None:
        self.product(batch, self.W_enc, self.b_enc)


DENSE_PRODUCT_ROW = "sparse step's dense product: calibrated kernel / the other (oneDNN matmul, MKL addmm)"


def measure_dense_product(sizes: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Median seconds of the sparse step's dense product on the kernel the calibration chose for this
    machine and shape (:func:`sdl_anchor.kernel_choice.choose_dense_product`, run first when not cached)
    and on the other candidate, alternating on the same batches (CPU float32, where there are two), with a
    third turn per round on the chosen kernel again: ``noise_floor`` is the largest disagreement of the chosen
    kernel with itself within a round, and ``within_noise`` says the ratio is within it (the two kernels tie
    on this machine, so either choice is right)."""
    choice = choose_dense_product(sizes["batch_size"], sizes["d_in"], sizes["d_sae"], torch.float32, device)
    other = next(name for name in DENSE_PRODUCTS if name != choice.choice)
    again = f"{choice.choice} again"
    generator = torch.Generator(device=device).manual_seed(0)
    W_enc = torch.randn(sizes["d_in"], sizes["d_sae"], generator=generator, device=device)
    b_enc = torch.randn(sizes["d_sae"], generator=generator, device=device)
    steppers = {
        key: _Product(partial(run_dense_product, kernel), W_enc, b_enc)
        for key, kernel in ((choice.choice, choice.choice), (other, other), (again, choice.choice))
    }
    times = _round_times(steppers, sizes, device)
    row = _paired_row(DENSE_PRODUCT_ROW, times, choice.choice, other, sizes, ("d_in", "d_sae", "batch_size"))
    noise_floor = max(abs(b / a - 1) for a, b in zip(times[choice.choice], times[again], strict=True))
    return {
        **row,
        "chosen": choice.choice,
        "other": other,
        "choice_source": choice.source,
        "noise_floor": noise_floor,
        "within_noise": row["ratio"] <= 1 + noise_floor,
    }


class SparsifyStep:
    """One training step of sparsify's ``SparseCoder`` with torch's fused Adam.

    ``trainer=True`` (the row's baseline) runs the step as sparsify's ``Trainer`` runs it for an SAE with
    its defaults (``normalize_decoder=True``, ``auxk_alpha=0``): decoder rows set to unit norm, forward
    with the batch's total variance, FVU loss, backward, each decoder row's gradient component along the row
    removed, the update, and the fired-latent bookkeeping, as our side runs SAELens's trainer step with its
    bookkeeping and gradient clipping. ``trainer=False`` is the forward, backward and update alone."""

    def __init__(self, d_in: int, d_sae: int, k: int, device: str, trainer: bool = True) -> None:
        from sparsify import SparseCoder, SparseCoderConfig

        self.coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
        self.optimizer = torch.optim.Adam(self.coder.parameters(), lr=3e-4, fused=True)
        self.trainer = trainer
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def step(self, batch: torch.Tensor) -> None:
        if not self.trainer:
            output = self.coder(batch)
            (output.fvu + output.auxk_loss).backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            return
        self.coder.set_decoder_norm_to_unit_norm()
        total_variance = (batch - batch.mean(0)).pow(2).sum()
        output = self.coder(batch, total_variance=total_variance)
        float(output.fvu.detach())  # the trainer's running FVU
        output.fvu.backward()
        self.coder.remove_gradient_parallel_to_decoder_directions()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
            fired[output.latent_indices.flatten()] = True
            self.tokens_since_fired += batch.shape[0]
            self.tokens_since_fired[fired] = 0


def sparsify_missing() -> str | None:
    """Why the sparsify row cannot run here (None when sparsify imports)."""
    try:
        import sparsify  # noqa: F401
    except ImportError as err:
        return f"needs EleutherAI's sparsify (pip install eai-sparsify): {err}"
    return None


SPARSIFY_ROW = "sparse topk step / sparsify trainer step (same batches, fused Adam)"


def measure_against_sparsify(sizes: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Median step seconds of our sparse TopK SAE's trainer step and of sparsify's, as its ``Trainer`` runs
    it (:class:`SparsifyStep`); ``bare_ratio`` is ours against sparsify's forward, backward and update
    alone, timed in the same rounds."""
    sae_class, config_class = get_sae_training_class("anchored_topk")
    torch.manual_seed(0)
    ours = sae_class(config_class(device=device, sparse_backward=True, **_fields("anchored_topk", sizes)))
    steppers = {
        "sparsify": SparsifyStep(sizes["d_in"], sizes["d_sae"], sizes["k"], device),
        "sparsify_bare": SparsifyStep(sizes["d_in"], sizes["d_sae"], sizes["k"], device, trainer=False),
        "ours": trainer_for_timing(ours, sizes["batch_size"], device),
    }
    times = _round_times(steppers, sizes, device)
    row = _paired_row(SPARSIFY_ROW, times, "ours", "sparsify", sizes)
    row["sparsify_bare_seconds"] = statistics.median(times["sparsify_bare"])
    row["bare_ratio"] = paired_ratio(times, "ours", "sparsify_bare")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=SIZES["steps"])
    args = parser.parse_args(argv)
    sizes = {**SIZES, "steps": args.steps}
    print(f"sparse-backward TopK-family steps ({sizes}, device {args.device})")
    two_kernels = len(dense_product_candidates(torch.float32, torch.device(args.device).type)) > 1
    rows = [measure_dense_product(sizes, args.device)] if two_kernels else []
    rows += [measure_against_dense(architecture, sizes, args.device) for architecture in SPARSE_ARCHITECTURES]
    reason = sparsify_missing()
    if reason is None:
        rows.append(measure_against_sparsify(sizes, args.device))
    for row in rows:
        print(f"{row['name']:<80} ratio {row['ratio']:.3f}")
    if reason is not None:
        print(f"skipped the sparsify row: {reason}")


if __name__ == "__main__":
    main()
