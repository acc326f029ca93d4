"""Anchored vs stock SAELens training-step time, same batches, same process.

For every activation, a stock SAELens TrainingSAE and its ``anchored_<activation>`` twin (k anchors,
the anchor loss on, SAELens's dense step: ``sparse_backward=False``, so that only the anchoring differs),
starting from the same weights, each get a ``SAETrainer``; their ``trainer.step(batch)`` calls alternate over the same
batches after a warm-up, and the median over rounds of the two steps' ratio is reported (target <= 1.03).

``python -m sdl_anchor.eval.anchor_step_time --preset cpu`` (d_in=256, d_sae=4096, batch 1024) or
``--preset gpu --device cuda`` (d_in=768, d_sae=16,384, batch 4096). ``--self-anchor 0.1 --sparse-step
--preset paper`` times the anchored step as the LRB's paper-size ``anchored`` rows train it (d_in 768, d_sae
16,000, batch 1024; self-anchoring of every other latent to its decoder row, the sparse TopK step): its pass
over the whole encoder is outside what the 1.03 target covers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.eval.step_timing import paired_ratio, step_seconds, trainer_for_timing
from sdl_anchor.integrations.registry import ANCHORED_ACTIVATIONS

PRESETS = {
    "cpu": {"d_in": 256, "d_sae": 4096, "batch_size": 1024, "k": 100, "steps": 20},
    "gpu": {"d_in": 768, "d_sae": 16_384, "batch_size": 4096, "k": 100, "steps": 50},
    "paper": {"d_in": 768, "d_sae": 16_000, "batch_size": 1024, "k": 100, "steps": 10},
}


def _extra(activation: str, d_sae: int) -> dict[str, Any]:
    if activation in ("topk", "batchtopk"):
        return {"k": 32}
    if activation == "matryoshka_batchtopk":
        return {"k": 32, "matryoshka_widths": [d_sae // 4, d_sae]}
    return {}


def random_batches(preset: dict[str, Any], device: str, n: int = 4) -> list[torch.Tensor]:
    """``n`` fixed-seed Gaussian batches of ``[batch_size, d_in]``, the same for every trainer timed."""
    generator = torch.Generator(device=device).manual_seed(0)
    return [
        torch.randn(preset["batch_size"], preset["d_in"], generator=generator, device=device)
        for _ in range(n)
    ]


def measure_activation(
    activation: str,
    preset: dict[str, int],
    device: str = "cpu",
    self_anchor: float = 0.0,
    sparse_step: bool = False,
) -> dict[str, Any]:
    """Median step seconds of stock and anchored ``activation`` SAEs on identical batches (the anchored one
    with self-anchoring at ``self_anchor`` when it is positive, and with its sparse TopK step when
    ``sparse_step``: the stock one is then the same anchored class without anchors or self-anchoring)."""
    d_in, d_sae, batch_size = preset["d_in"], preset["d_sae"], preset["batch_size"]
    extra = _extra(activation, d_sae)
    anchored_class, anchored_config = get_sae_training_class(f"anchored_{activation}")
    if sparse_step:  # SAELens has no sparse step: the baseline is our class, unanchored
        stock_class, stock_config = anchored_class, anchored_config
        dense = {}
    else:
        stock_class, stock_config = get_sae_training_class(activation)
        has_sparse = "sparse_backward" in anchored_config.__dataclass_fields__
        dense = {"sparse_backward": False} if has_sparse else {}
    torch.manual_seed(0)
    stock = stock_class(stock_config(d_in=d_in, d_sae=d_sae, device=device, **extra))
    torch.manual_seed(0)
    anchored = anchored_class(
        anchored_config(
            d_in=d_in, d_sae=d_sae, device=device, self_anchor_coefficient=self_anchor, **extra, **dense
        )
    )
    anchored.set_anchors(AnchorSet(torch.randn(preset["k"], d_in)))
    # Start both from the same weights (the anchored latents initialised to the anchors): a TopK's
    # selection time depends on the values it ranks, and only the anchoring should differ.
    stock.load_state_dict({name: anchored.state_dict()[name] for name in stock.state_dict()})
    batches = random_batches(preset, device)
    times = step_seconds(
        {
            "stock": (trainer_for_timing(stock, batch_size, device), batches),
            "anchored": (trainer_for_timing(anchored, batch_size, device), batches),
        },
        preset["steps"],
        device,
    )
    stock_s, anchored_s = statistics.median(times["stock"]), statistics.median(times["anchored"])
    ratio = paired_ratio(times, "anchored", "stock")
    return {
        "name": f"anchored_{activation} / {activation} step"
        + (f" (self-anchoring {self_anchor})" if self_anchor else "")
        + (" (sparse step)" if sparse_step else ""),
        "stock_seconds": stock_s,
        "anchored_seconds": anchored_s,
        "ratio": ratio,
        "target": 1.03,
        "ok": ratio <= 1.03,
        "better": "lower",
    }


def measure_noise_floor(
    preset: dict[str, int], device: str = "cpu", activation: str = "topk"
) -> dict[str, Any]:
    """The same measurement between a stock SAE and an identical copy of it: how far from 1 the machine's
    noise alone moves a ratio."""
    sae_class, config_class = get_sae_training_class(activation)
    torch.manual_seed(0)
    stock = sae_class(
        config_class(
            d_in=preset["d_in"], d_sae=preset["d_sae"], device=device, **_extra(activation, preset["d_sae"])
        )
    )
    twin = copy.deepcopy(stock)
    batches = random_batches(preset, device)
    times = step_seconds(
        {
            "stock": (trainer_for_timing(stock, preset["batch_size"], device), batches),
            "twin": (trainer_for_timing(twin, preset["batch_size"], device), batches),
        },
        preset["steps"],
        device,
    )
    return {
        "name": f"noise floor: {activation} / an identical {activation}",
        "ratio": paired_ratio(times, "twin", "stock"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--self-anchor", type=float, default=0.0, help="self-anchoring coefficient of the anchored SAEs"
    )
    parser.add_argument(
        "--sparse-step",
        action="store_true",
        help="time the sparse TopK step on both sides (stock: unanchored)",
    )
    parser.add_argument("--activations", default=",".join(ANCHORED_ACTIVATIONS), help="comma-separated")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    unknown = set(args.activations.split(",")) - set(ANCHORED_ACTIVATIONS)
    if unknown:
        parser.error(
            f"--activations: unknown {sorted(unknown)}; choose among {','.join(ANCHORED_ACTIVATIONS)}"
        )
    print(f"anchored vs stock SAELens step time ({args.preset}: {preset}, device {args.device})")
    target = "" if args.self_anchor or args.sparse_step else " (target <= 1.03)"
    for activation in args.activations.split(","):
        row = measure_activation(activation, preset, args.device, args.self_anchor, args.sparse_step)
        print(
            f"{row['name']:<48} stock {1000 * row['stock_seconds']:8.1f} ms  anchored "
            f"{1000 * row['anchored_seconds']:8.1f} ms  ratio {row['ratio']:.3f}{target}"
        )


if __name__ == "__main__":
    main()
