"""Resampling experiments (issue 5): a planted spurious minimum, LRB training, and the cost of an event.

1. ``planted``: the paper's Example 3.5 scaled up. An SAE with ``d_sae = n`` starts where latent ``i < n/2``
   is polysemantic for features ``2i`` and ``2i+1`` (encoder and decoder on their normalised sum) and every
   other latent is dead (encoder bias -10). Training continues with no resampling, AuxK (TopK only),
   ``anthropic`` or ``theory``; we report the final MSE and M_GT.
2. ``lrb``: each SAE architecture from SAELens's normal initialisation on the LRB small preset (the
   ``bench lrb`` table's runs), plain and anchored, with no resampling, ``anthropic`` or ``theory``; for the
   TopK family these runs switch SAELens's AuxK loss off so each row isolates one mechanism, and extra
   ``auxk`` rows keep it on (SAELens's default). M_GT (paper), M_GT over firing latents, dead fraction, MSE.
3. ``cost``: one resampling event at ``d_sae = 16,384`` against one training step, and the amortised
   overhead of the default schedule.

``python -m sdl_anchor.eval.resampling_experiments planted|lrb|cost [--device cuda]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class

from sdl_anchor.eval.lrb_table import PRESETS, run_lrb_bench
from sdl_anchor.integrations.training import train_on_bench
from sdl_anchor.io import write_json
from sdl_anchor.lrb.bench import LinearRepresentationBench
from sdl_anchor.metrics import recovery
from sdl_anchor.resampling import ResamplingConfig

PLANTED_VARIANTS = ("none", "auxk", "anthropic", "theory")


@torch.no_grad()
def plant_spurious_minimum(sae: Any, features: torch.Tensor) -> None:
    """Latent ``i < n/2`` fires for features ``2i, 2i+1``; latents ``>= n/2`` are dead (bias -10)."""
    n = features.shape[0]
    pairs = F.normalize(features[0::2][: n // 2] + features[1::2][: n // 2], dim=1)
    half = pairs.shape[0]
    enc_norm = sae.W_enc.norm(dim=0).mean()
    dec_norm = sae.W_dec.norm(dim=1).mean()
    sae.W_enc[:, :half] = pairs.T * enc_norm
    sae.W_dec[:half] = pairs * dec_norm
    sae.b_enc.zero_()
    sae.b_enc[half:] = -10.0


def planted_experiment(
    architecture: str = "topk",
    n_features: int = 64,
    d_in: int = 64,
    n_steps: int = 800,
    batch_size: int = 512,
    device: str = "cpu",
    variants: tuple[str, ...] = PLANTED_VARIANTS,
    sparsity: float = 0.98,
    k: int = 2,
) -> list[dict[str, Any]]:
    """Train from the planted minimum with each variant; one row each."""
    bench = LinearRepresentationBench(
        n_features=n_features, d_in=d_in, sparsity=sparsity, max_interference=0.1, seed=0, device=device
    )
    rows = []
    for variant in variants:
        if variant == "auxk" and "topk" not in architecture:
            continue
        sae_class, config_class = get_sae_training_class(architecture)
        extra: dict[str, Any] = {"k": k} if "topk" in architecture else {}
        if architecture == "standard":
            extra["l1_coefficient"] = 1.0
        if "topk" in architecture:
            extra["aux_loss_coefficient"] = 1.0 if variant == "auxk" else 0.0
        torch.manual_seed(0)
        sae = sae_class(config_class(d_in=d_in, d_sae=n_features, device=device, **extra))
        plant_spurious_minimum(sae, bench.features_in)
        start = recovery(sae, bench, mcc=False)
        resampling = ResamplingConfig(strategy=variant) if variant in ("anthropic", "theory") else None
        started = time.perf_counter()
        train_on_bench(
            sae,
            bench,
            n_steps=n_steps,
            batch_size=batch_size,
            lr=1e-3,
            dead_feature_window=50,
            resampling=resampling,
            show_progress=False,
            device=device,
        )
        scores = recovery(sae, bench, mcc=False)
        sample = bench.sample(8192, torch.Generator(device=device).manual_seed(1)).x_in
        sae.eval()
        with torch.no_grad():
            mse = float((sae.decode(sae.encode(sample)) - sample).pow(2).sum(-1).mean())
        rows.append(
            {
                "architecture": architecture,
                "variant": variant,
                "M_GT_start": start["M_GT"],
                "M_GT": scores["M_GT"],
                "M_GT_dec": scores["M_GT_dec"],
                "mse": mse,
                "events": (sae.cfg.metadata.resampling or {}).get("events", []),
                "seconds": time.perf_counter() - started,
            }
        )
    return rows


LRB_METHODS = ("standard", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk")
AUXK_METHODS = ("topk", "batchtopk", "matryoshka_batchtopk")  # SAELens gives these an AuxK loss


def lrb_experiment(
    preset: str = "small",
    methods: tuple[str, ...] = LRB_METHODS,
    device: str = "cpu",
    n_steps: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``bench lrb`` rows (plain and anchored) for none / anthropic / theory with AuxK off, and ``auxk`` rows
    (resampling ``"auxk"``) with SAELens's AuxK on, for the TopK family."""
    stock = PRESETS[preset]
    no_auxk = replace(
        stock,
        method_settings={
            method: {**settings, **({"aux_loss_coefficient": 0.0} if method in AUXK_METHODS else {})}
            for method, settings in stock.method_settings.items()
        },
    )
    common: dict[str, Any] = {
        "device": device,
        "variants": ("plain", "anchored"),
        "n_steps": n_steps,
        "progress": progress,
    }
    rows = run_lrb_bench(no_auxk, methods=methods, resampling=("none", "anthropic", "theory"), **common)[
        "rows"
    ]
    auxk_methods = tuple(m for m in methods if m in AUXK_METHODS)
    if auxk_methods:
        auxk_rows = run_lrb_bench(stock, methods=auxk_methods, **common)["rows"]
        rows += [{**row, "resampling": "auxk"} for row in auxk_rows]
    order = {m: i for i, m in enumerate(methods)}
    strategies = {s: i for i, s in enumerate(("none", "auxk", "anthropic", "theory"))}
    return sorted(rows, key=lambda r: (order[r["method"]], r["anchored"], strategies[r["resampling"]]))


def format_lrb_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'method':<22} {'variant':<9} {'resampling':<10} {'M_GT':>6} {'M_GT live':>9} {'M_IP live':>9} "
        f"{'dec M_GT':>8} {'dead':>6} {'MSE':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['method']:<22} {r['variant']:<9} {r['resampling']:<10} {100 * r['M_GT']:>5.1f}% "
            f"{100 * r['M_GT_live']:>8.1f}% {r['M_IP_live']:>9.3f} {100 * r['M_GT_dec']:>7.1f}% "
            f"{100 * r['dead_fraction']:>5.1f}% {r['mse']:>7.4f}"
        )
    return "\n".join(lines)


def cost_experiment(
    d_in: int = 768,
    d_sae: int = 16_384,
    batch_size: int = 4096,
    device: str = "cpu",
    steps: int = 3,
    total_steps: int = 8000,
) -> dict[str, Any]:
    """Seconds of one training step and of one event per strategy, a TopK SAE with half its latents dead
    and a full pool; the amortised overhead is the default schedule's events over ``total_steps`` steps."""
    from sdl_anchor.eval.step_timing import median_step_seconds, trainer_for_timing
    from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer

    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=d_in, d_sae=d_sae, k=32, device=device))
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [torch.randn(batch_size, d_in, generator=generator, device=device) for _ in range(2)]
    step_seconds = median_step_seconds(
        {"step": (trainer_for_timing(sae, batch_size, device), batches)}, steps, device, 1
    )["step"]
    n_events = len(ResamplingConfig().schedule(total_steps).event_steps)
    row: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "batch_size": batch_size,
        "step_seconds": step_seconds,
        "total_steps": total_steps,
        "events": n_events,
    }
    for strategy in ("anthropic", "theory"):
        trainer = ResamplingSAETrainer(
            cfg=trainer_for_timing(sae, batch_size, device).cfg,
            sae=sae,
            data_provider=iter(()),
            resampling=ResamplingConfig(strategy=strategy),
        )
        with torch.no_grad():
            for _ in range(-(-trainer.pool.capacity // batch_size)):  # a full pool
                trainer.pool.add(torch.randn(batch_size, d_in, generator=generator, device=device), None)
            trainer.n_forward_passes_since_fired[d_sae // 2 :] = 10**6  # half the latents dead
        record = trainer.resample(step=1)
        row[strategy] = {
            "event_seconds": record["resample/seconds"],
            "event_over_step": record["resample/seconds"] / step_seconds,
            "amortised_overhead": n_events * record["resample/seconds"] / (total_steps * step_seconds),
            "latents": record["resample/latents"],
        }
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=("planted", "lrb", "cost"))
    parser.add_argument("--architecture", default="topk", help="planted: the SAELens architecture")
    parser.add_argument("--methods", default=",".join(LRB_METHODS), help="lrb: comma-separated methods")
    parser.add_argument("--out", default=None, help="lrb: also write the rows to this JSON file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="training steps (planted default 800)")
    args = parser.parse_args(argv)
    if args.experiment == "lrb":
        rows = lrb_experiment(methods=tuple(args.methods.split(",")), device=args.device, n_steps=args.steps)
        p = PRESETS["small"]
        print(
            f"LRB small preset (n={p.n_features}, d={p.d_in}, width {p.d_sae}, {args.steps or p.n_steps} steps "
            f"of {p.batch_size}), anchors not scored; AuxK off except in the auxk rows"
        )
        print(format_lrb_rows(rows))
        if args.out:
            write_json(Path(args.out), {"rows": rows})
        return
    if args.experiment == "cost":
        row = cost_experiment(device=args.device)
        print(
            f"one resampling event vs one training step (TopK, d_in 768, d_sae 16,384, batch 4096, {args.device})"
        )
        print(f"training step {row['step_seconds']:.3f} s")
        for strategy in ("anthropic", "theory"):
            r = row[strategy]
            print(
                f"{strategy:<10} event {r['event_seconds']:.2f} s = {r['event_over_step']:.1f} steps; "
                f"{r['latents']:.0f} latents; {row['events']} events over {row['total_steps']} steps: {100 * r['amortised_overhead']:.2f}%"
            )
        return
    steps = args.steps or 800
    rows = planted_experiment(args.architecture, n_steps=steps, device=args.device)
    print(
        f"planted spurious minimum ({args.architecture}, n=64, d=64, S=0.98, {steps} steps of 512, lr 1e-3): "
        "M_GT start -> end, final MSE"
    )
    for row in rows:
        split = sum(e["resample/split"] for e in row["events"])
        print(
            f"{row['variant']:<10} M_GT {100 * row['M_GT_start']:5.1f}% -> {100 * row['M_GT']:5.1f}% "
            f"(dec {100 * row['M_GT_dec']:5.1f}%)  MSE {row['mse']:.4f}  events {len(row['events'])} "
            f"split {split:.0f}  {row['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
