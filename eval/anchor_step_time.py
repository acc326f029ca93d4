"""Anchored vs stock SAELens training-step time, same batches, same process.

For every activation, a stock SAELens TrainingSAE and its ``anchored_<activation>`` twin (k anchors,
the anchor loss on) each get a ``SAETrainer``; their ``trainer.step(batch)`` calls alternate over the same
batches after a warm-up, and the ratio of median step times is reported (target <= 1.03).

``python -m sdl_anchor.eval.anchor_step_time --preset cpu`` (d_in=256, d_sae=4096, batch 1024) or
``--preset gpu --device cuda`` (d_in=768, d_sae=16,384, batch 4096).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.training.sae_trainer import SAETrainer

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.integrations.registry import ANCHORED_ACTIVATIONS

PRESETS = {
    "cpu": {"d_in": 256, "d_sae": 4096, "batch_size": 1024, "k": 100, "steps": 20},
    "gpu": {"d_in": 768, "d_sae": 16_384, "batch_size": 4096, "k": 100, "steps": 50},
}


def _extra(activation: str, d_sae: int) -> dict[str, Any]:
    if activation in ("topk", "batchtopk"):
        return {"k": 32}
    if activation == "matryoshka_batchtopk":
        return {"k": 32, "matryoshka_widths": [d_sae // 4, d_sae]}
    return {}


def _trainer(sae: Any, batch_size: int, device: str) -> SAETrainer:
    config = SAETrainerConfig(
        total_training_samples=10**9,
        train_batch_size_samples=batch_size,
        lr_end=3e-5,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg=config, sae=sae, data_provider=iter(()))


def measure_activation(activation: str, preset: dict[str, int], device: str = "cpu") -> dict[str, Any]:
    """Median step seconds of stock and anchored ``activation`` SAEs on identical batches."""
    d_in, d_sae, batch_size = preset["d_in"], preset["d_sae"], preset["batch_size"]
    extra = _extra(activation, d_sae)
    stock_class, stock_config = get_sae_training_class(activation)
    anchored_class, anchored_config = get_sae_training_class(f"anchored_{activation}")
    torch.manual_seed(0)
    stock = stock_class(stock_config(d_in=d_in, d_sae=d_sae, device=device, **extra))
    torch.manual_seed(0)
    anchored = anchored_class(anchored_config(d_in=d_in, d_sae=d_sae, device=device, **extra))
    anchored.set_anchors(AnchorSet(torch.randn(preset["k"], d_in)))
    trainers = {
        "stock": _trainer(stock, batch_size, device),
        "anchored": _trainer(anchored, batch_size, device),
    }
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [torch.randn(batch_size, d_in, generator=generator, device=device) for _ in range(4)]
    times: dict[str, list[float]] = {"stock": [], "anchored": []}
    for i in range(preset["steps"] + 3):
        batch = batches[i % len(batches)]
        for name, trainer in trainers.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            trainer.step(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - started)
    stock_s, anchored_s = statistics.median(times["stock"]), statistics.median(times["anchored"])
    return {
        "name": f"anchored_{activation} / {activation} step",
        "stock_seconds": stock_s,
        "anchored_seconds": anchored_s,
        "ratio": anchored_s / stock_s,
        "target": 1.03,
        "ok": anchored_s / stock_s <= 1.03,
        "lower_is_better": True,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    print(f"anchored vs stock SAELens step time ({args.preset}: {preset}, device {args.device})")
    for activation in ANCHORED_ACTIVATIONS:
        row = measure_activation(activation, preset, args.device)
        print(
            f"{activation:<22} stock {1000 * row['stock_seconds']:8.1f} ms  anchored "
            f"{1000 * row['anchored_seconds']:8.1f} ms  ratio {row['ratio']:.3f} (target <= 1.03)"
        )


if __name__ == "__main__":
    main()
