"""The ``sdl-anchor`` command line (also ``python -m sdl_anchor``). Every subcommand prints a human-readable
table and writes machine-readable JSON into ``--out``.

``bench lrb`` / ``bench perf`` (:mod:`sdl_anchor.cli.bench`, benchmarks in :mod:`sdl_anchor.eval`), ``audit
absorption`` (:mod:`sdl_anchor.cli.audit`), ``train`` (:mod:`sdl_anchor.cli.train`), ``anchors``
(:mod:`sdl_anchor.cli.anchors`), ``export circuit-tracer`` (:mod:`sdl_anchor.cli.export`), ``models smollm2``
(:mod:`sdl_anchor.cli.models`). Bad input exits with
code 2 and a message, and writes nothing. The command first sets glibc's malloc to keep freed memory for the
next training step (:mod:`sdl_anchor.cpu_memory`; ``SDL_ANCHOR_KEEP_FREED_MEMORY=0`` opts out).
"""

from __future__ import annotations

import argparse
import sys

from sdl_anchor._version import __version__
from sdl_anchor.cli import anchors, audit, bench, export, models, train
from sdl_anchor.cli.common import EXIT_USAGE
from sdl_anchor.cpu_memory import keep_freed_memory_unless_opted_out


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdl-anchor",
        description="Feature anchoring, resampling, absorption diagnostics and the Linear "
        "Representation Bench for SAELens.",
    )
    parser.add_argument("--version", action="version", version=f"sdl-anchor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    bench.add_parsers(commands)
    audit.add_parsers(commands)
    commands.add_parser(
        "train",
        add_help=False,
        help="train an SAE, transcoder or crosscoder with SAELens's runner flags plus sdl-anchor's "
        "architectures, anchors, hooks and resampling (sdl-anchor train --help)",
    )
    anchors.add_parser(commands)
    export.add_parsers(commands)
    models.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdl-anchor`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory_unless_opted_out()  # each training step reuses the last one's pages (cpu_memory.py)
    try:
        if argv[:1] == ["train"]:  # SAELens's own parser takes the flags after "train" that are not ours
            return train.train(argv[1:], usage=(train.__doc__ or "").replace("``", ""))
        args = _build_parser().parse_args(argv)
        if args.command == "anchors":
            return anchors.run(args)
        handlers = {
            ("bench", "lrb"): bench.bench_lrb,
            ("bench", "perf"): bench.bench_perf,
            ("bench", "synth"): bench.bench_synth,
            ("bench", "lm"): bench.bench_lm,
            ("audit", "absorption"): audit.audit_absorption,
            ("export", "circuit-tracer"): export.export_circuit_tracer,
            ("models", "smollm2"): models.models_smollm2,
        }
        sub = next(
            getattr(args, name) for name in ("bench", "audit", "export", "models") if hasattr(args, name)
        )
        return handlers[(args.command, sub)](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sdl-anchor: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nsdl-anchor: interrupted", file=sys.stderr)
        return 130  # the shell's code for a process stopped by SIGINT


if __name__ == "__main__":
    sys.exit(main())
