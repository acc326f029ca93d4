"""Resampling experiments (issue 5): a planted spurious minimum, LRB training, and the cost of an event.

1. ``planted``: the paper's Example 3.5 scaled up. An SAE with ``d_sae = n`` starts where latent ``i < n/2``
   is polysemantic for features ``2i`` and ``2i+1`` (encoder and decoder on their normalised sum) and every
   other latent is dead (encoder bias -10). Training continues with no resampling, AuxK (TopK only),
   ``anthropic`` or ``theory``; we report the final MSE and M_GT.
2. ``lrb``: each SAE architecture from SAELens's normal initialisation on the LRB quick preset, with none /
   AuxK / anthropic / theory resampling: M_GT, dead fraction, final MSE.
3. ``cost``: one resampling event at ``d_sae = 16,384`` against one training step, and the amortised
   overhead of the default schedule.

``python -m sdl_anchor.eval.resampling_experiments planted|lrb|cost [--device cuda]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class

from sdl_anchor.integrations.training import train_on_bench
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
    n_steps: int = 1500,
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
        extra: dict[str, Any] = {"k": k} if "topk" in architecture else {"l1_coefficient": 1.0}
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
            lr=3e-3,
            dead_feature_window=50,
            resampling=resampling,
            show_progress=False,
            device=device,
        )
        scores = recovery(sae, bench, mcc=False)
        sample = bench.sample(8192, torch.Generator(device=device).manual_seed(1)).x_in
        sae.eval()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=("planted",))
    parser.add_argument("--architecture", default="topk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args(argv)
    rows = planted_experiment(args.architecture, n_steps=args.steps, device=args.device)
    print(f"planted spurious minimum ({args.architecture}, n=64, d=64): M_GT start -> end, final MSE")
    for row in rows:
        split = sum(e["resample/split"] for e in row["events"])
        print(
            f"{row['variant']:<10} M_GT {100 * row['M_GT_start']:5.1f}% -> {100 * row['M_GT']:5.1f}% "
            f"(dec {100 * row['M_GT_dec']:5.1f}%)  MSE {row['mse']:.4f}  events {len(row['events'])} "
            f"split {split:.0f}  {row['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
