"""The GPU session's script: one command that runs everything a lent GPU is for, within 10 minutes.

``python -m sdl_anchor.eval.gpu_check --out runs/gpu`` runs, in order, each under its own time limit:

1. the CUDA-marked tests (``pytest -m cuda``): float32 on the device against float64 on the CPU, the hot loop
   free of host round trips, ``torch.compile`` and bf16 autocast;
2. ``sdl-anchor bench perf --preset gpu`` (``perf.json``);
3. ``sdl-anchor bench lrb --preset paper --device cuda`` on the TopK k=32 row, stock and ours
   (``lrb-paper/results.json``), the paper's configuration on the device it was meant for.

It writes ``gpu_check.json``: each stage's exit code, wall time and output tail. It refuses to start without
CUDA: there is nothing to check on a CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sdl_anchor.io import write_json

STAGES: list[tuple[str, list[str], int]] = [
    ("cuda tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], 150),
    ("bench perf gpu", [sys.executable, "-m", "sdl_anchor", "bench", "perf", "--preset", "gpu", "--overwrite",
                        "--out", "{out}/perf-gpu"], 180),
    ("bench lrb paper", [sys.executable, "-m", "sdl_anchor", "bench", "lrb", "--preset", "paper", "--device",
                         "cuda", "--methods", "topk", "--k", "32", "--no-progress", "--overwrite",
                         "--out", "{out}/lrb-paper"], 240),
]  # fmt: skip


def run_stage(name: str, command: list[str], limit: int, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [part.format(out=out) for part in command], capture_output=True, text=True, timeout=limit
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, output = 124, f"timed out after {limit} s\n{err.stdout or ''}"
    return {
        "stage": name,
        "exit_code": code,
        "seconds": time.perf_counter() - started,
        "tail": output[-4000:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs") / "gpu")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on the lent GPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, command, limit in STAGES:
        result = run_stage(name, command, limit, args.out)
        results.append(result)
        print(f"{name}: exit {result['exit_code']} in {result['seconds']:.0f} s", flush=True)
    write_json(args.out / "gpu_check.json", {"device": torch.cuda.get_device_name(0), "stages": results})
    return max(r["exit_code"] for r in results)


if __name__ == "__main__":
    sys.exit(main())
