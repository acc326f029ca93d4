"""The paper-size TopK training step with freed memory kept (``sdl_anchor.cpu_memory``) and with glibc's own
malloc limits, alternating in one process on the same batches.

``python -m sdl_anchor.eval.cpu_memory_step_time`` times the LRB's ``paper-cpu`` TopK step (d_in 768,
d_sae 16,000, batch 1024, k 32, the sparse step), stock and anchored (100 anchors, self-anchoring 0.1 to
the decoder rows). Each round runs the setting off and on, in an order that reverses every round, each
as an untimed step that settles the heap into that setting and a timed one; the ratio is the median over
rounds of ``on / off`` (lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.cpu_memory import keep_freed_memory
from sdl_anchor.eval.anchor_step_time import random_batches
from sdl_anchor.eval.step_timing import paired_ratio, trainer_for_timing

PAPER_STEP = {"d_in": 768, "d_sae": 16_000, "batch_size": 1024, "k": 32, "n_anchors": 100}


def _anchored_topk(size: dict[str, int], self_anchor: float, n_anchors: int) -> Any:
    sae_class, config_class = get_sae_training_class("anchored_topk")
    torch.manual_seed(0)
    sae = sae_class(
        config_class(d_in=size["d_in"], d_sae=size["d_sae"], k=size["k"], self_anchor_coefficient=self_anchor)
    )
    if n_anchors:
        sae.set_anchors(AnchorSet(torch.randn(n_anchors, size["d_in"])))
    return sae


def measure(size: dict[str, int], anchored: bool, rounds: int, warm_up: int = 2) -> dict[str, Any]:
    """Median step seconds with the setting off and on, and the median over rounds of their ratio."""
    reason = keep_freed_memory(True)
    if reason is not None:
        raise ValueError(f"cannot measure: {reason}")
    n_anchors = size["n_anchors"] if anchored else 0
    trainer = trainer_for_timing(
        _anchored_topk(size, 0.1 if anchored else 0.0, n_anchors), size["batch_size"], "cpu"
    )
    batches = random_batches(size, "cpu")
    times: dict[str, list[float]] = {"glibc": [], "kept": []}
    try:
        for i in range(rounds + warm_up):
            for setting in ("glibc", "kept") if i % 2 == 0 else ("kept", "glibc"):
                keep_freed_memory(setting == "kept")
                trainer.step(batches[(i + 1) % len(batches)])  # settles the heap into this setting
                started = time.perf_counter()
                trainer.step(batches[i % len(batches)])
                if i >= warm_up:
                    times[setting].append(time.perf_counter() - started)
    finally:
        keep_freed_memory(True)
    return {
        "name": f"{'anchored ' if anchored else ''}TopK step, paper size",
        "glibc_seconds": statistics.median(times["glibc"]),
        "kept_seconds": statistics.median(times["kept"]),
        "ratio": paired_ratio(times, "kept", "glibc"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=8, help="timed rounds (two steps each way per round, one timed)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    print(f"training step with freed memory kept vs glibc's malloc limits ({PAPER_STEP})")
    for anchored in (False, True):
        row = measure(PAPER_STEP, anchored, args.rounds)
        print(
            f"{row['name']:<36} glibc {1000 * row['glibc_seconds']:7.1f} ms  kept "
            f"{1000 * row['kept_seconds']:7.1f} ms  ratio {row['ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
