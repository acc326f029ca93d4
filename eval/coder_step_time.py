"""Transcoder and crosscoder training-step time against a stock SAELens SAE with the same latent count.

For each activation (standard, topk, batchtopk, jumprelu):

* ``<activation>_transcoder`` reading ``x_in`` (e.g. ``ln2.hook_normalized``) and reconstructing ``x_out``
  (``hook_mlp_out``), against SAELens's stock ``<activation>`` SAE on ``x_out`` (the same hook, the same
  widths ``d_in = d_out = d``): the same matmul FLOPs, so the ratio shows what the paired data path costs;
* ``<activation>_crosscoder`` over ``n_sources`` hooks of width ``d``, against the same stock SAE on one
  of them: its matmuls are ``n_sources`` times larger, reported as ``flop_ratio`` beside the time ratio.

Steps alternate over identical batches in one process (``eval/step_timing.py``); the ratio is the median
over rounds of the two steps' ratio.
``python -m sdl_anchor.eval.coder_step_time --preset cpu`` (d=256, d_sae=4096, batch 1024) or
``--preset gpu --device cuda`` (d=768, d_sae=16,384, batch 4096).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class

from sdl_anchor.eval.step_timing import paired_ratio, step_seconds, trainer_for_timing

ACTIVATIONS = ("standard", "topk", "batchtopk", "jumprelu")
PRESETS = {
    "cpu": {"d": 256, "d_sae": 4096, "batch_size": 1024, "steps": 20, "n_sources": 2},
    "gpu": {"d": 768, "d_sae": 16_384, "batch_size": 4096, "steps": 50, "n_sources": 2},
}


def _build(architecture: str, device: str, **fields: Any) -> Any:
    sae_class, config_class = get_sae_training_class(architecture)
    extra = {"k": 32} if "topk" in architecture else {}
    if "sparse_backward" in config_class.__dataclass_fields__:
        extra["sparse_backward"] = False  # the dense step, as the stock SAE's: only the data path differs
    torch.manual_seed(0)
    return sae_class(config_class(device=device, **extra, **fields))


def measure_coder(activation: str, kind: str, preset: dict[str, int], device: str = "cpu") -> dict[str, Any]:
    """Median step seconds of an ``<activation>_<kind>`` and the stock ``activation`` SAE of the same width."""
    d, d_sae, batch_size, n_sources = preset["d"], preset["d_sae"], preset["batch_size"], preset["n_sources"]
    generator = torch.Generator(device=device).manual_seed(0)

    def draw(width: int) -> torch.Tensor:
        return torch.randn(batch_size, width, generator=generator, device=device)

    stock = _build(activation, device, d_in=d, d_sae=d_sae)
    if kind == "transcoder":
        coder = _build(f"{activation}_transcoder", device, d_in=d, d_out=d, d_sae=d_sae)
        coder_batches = [(draw(d), draw(d)) for _ in range(4)]
        stock_batches = [x_out for _, x_out in coder_batches]
        flop_ratio = 1.0
    elif kind == "crosscoder":
        coder = _build(
            f"{activation}_crosscoder", device, d_in=n_sources * d, n_sources=n_sources, d_sae=d_sae
        )
        coder_batches = [draw(n_sources * d) for _ in range(4)]
        stock_batches = [x[:, :d] for x in coder_batches]
        flop_ratio = float(n_sources)
    else:
        raise ValueError(f"kind must be 'transcoder' or 'crosscoder', got {kind!r}")
    times = step_seconds(
        {
            "stock": (trainer_for_timing(stock, batch_size, device), stock_batches),
            "coder": (trainer_for_timing(coder, batch_size, device), coder_batches),
        },
        preset["steps"],
        device,
    )
    ratio = paired_ratio(times, "coder", "stock")
    return {
        "name": f"{activation}_{kind} / {activation} step",
        "stock_seconds": statistics.median(times["stock"]),
        "coder_seconds": statistics.median(times["coder"]),
        "ratio": ratio,
        "flop_ratio": flop_ratio,
        "better": "lower",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", default="transcoder,crosscoder")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    print(f"coder vs stock SAELens SAE step time ({args.preset}: {preset}, device {args.device})")
    for kind in args.kinds.split(","):
        for activation in ACTIVATIONS:
            row = measure_coder(activation, kind, preset, args.device)
            print(
                f"{row['name']:<38} stock {1000 * row['stock_seconds']:8.1f} ms  {kind} "
                f"{1000 * row['coder_seconds']:8.1f} ms  ratio {row['ratio']:.3f} (FLOP ratio {row['flop_ratio']:.0f})"
            )


if __name__ == "__main__":
    main()
