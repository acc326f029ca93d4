"""The ``sdl-anchor`` command line. Every subcommand prints a human-readable table and writes
machine-readable JSON into ``--out``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdl-anchor",
        description="Feature anchoring, resampling, absorption diagnostics and the Linear "
        "Representation Bench for SAELens.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)

    lrb = bench.add_parser(
        "lrb",
        help="train stock SAELens SAEs on the Linear Representation Bench and print Table 1",
        description="Train SAELens SAEs on LRB data and score M_GT / M_IP beside the paper's numbers.",
    )
    lrb.add_argument(
        "--preset",
        default="quick",
        choices=["quick", "paper"],
        help="quick: 2 CPU cores in minutes; paper: the paper's size, for a GPU",
    )
    lrb.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder for results.json and recovery.png (default: runs/lrb-PRESET)",
    )
    lrb.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    lrb.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated subset of standard,jumprelu,topk,batchtopk,matryoshka_batchtopk",
    )
    lrb.add_argument(
        "--interference",
        type=_csv,
        default=("bounded",),
        help="comma-separated interference modes: bounded,negative",
    )
    lrb.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    lrb.add_argument("--seed", type=int, default=0)
    lrb.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    lrb.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _bench_lrb(args: argparse.Namespace) -> int:
    from sdl_anchor.eval.lrb_table import METHODS, format_table, run_lrb_bench, write_results

    out = args.out if args.out is not None else Path("runs") / f"lrb-{args.preset}"
    if (out / "results.json").exists() and not args.overwrite:
        raise ValueError(f"{out / 'results.json'} already exists; pass --overwrite or choose another --out")
    methods = args.methods or METHODS
    modes = args.interference
    for mode in modes:
        if mode not in ("bounded", "negative"):
            raise ValueError(f"unknown interference {mode!r}; use bounded and/or negative")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    results = run_lrb_bench(
        args.preset,
        device=args.device,
        methods=tuple(methods),
        interference=tuple(modes),
        seed=args.seed,
        n_steps=args.steps,
        progress=not args.no_progress,
    )
    print(format_table(results))
    for path in write_results(results, out):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdl-anchor`` console script."""
    args = _build_parser().parse_args(argv)
    handlers = {("bench", "lrb"): _bench_lrb}
    handler = handlers[(args.command, getattr(args, "bench", None))]
    try:
        return handler(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sdl-anchor: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
