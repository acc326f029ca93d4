"""The ``sdl-anchor`` command line. Every subcommand prints a human-readable table and writes
machine-readable JSON into ``--out``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdl_anchor.eval import anchors_command, train_command

EXIT_USAGE = 2
WANDB_HELP = "also log the results to this W&B project, as tables and images (offline without credentials)"


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
        help="train SAELens SAEs, plain and anchored, on the Linear Representation Bench; print Table 1",
        description="Train SAELens SAEs (plain, init-only and anchored) on LRB data and score M_GT / M_IP "
        "on non-anchor features beside the paper's numbers.",
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
        help="comma-separated subset of standard,jumprelu,topk,batchtopk,matryoshka_batchtopk,transcoder,"
        "crosscoder (default: all)",
    )
    lrb.add_argument(
        "--variants",
        type=_csv,
        default=None,
        help="comma-separated subset of plain,init_only,anchored (default: all three)",
    )
    lrb.add_argument(
        "--interference",
        type=_csv,
        default=("bounded",),
        help="comma-separated interference modes: bounded,negative",
    )
    lrb.add_argument(
        "--resampling",
        type=_csv,
        default=("none",),
        help="comma-separated dead-latent resampling strategies to add to each method: none,anthropic,theory "
        "(default: none)",
    )
    lrb.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    lrb.add_argument("--seed", type=int, default=0)
    lrb.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    lrb.add_argument("--no-progress", action="store_true", help="hide progress bars")
    lrb.add_argument("--wandb-project", help=WANDB_HELP)
    perf = bench.add_parser(
        "perf",
        help="the performance suite: our steps, sampling, resampling and audit against their baselines",
        description="Time every component against a baseline in the same process (anchored vs stock SAELens "
        "steps, transcoders and crosscoders vs a stock SAE, LRB vs SAELens's synthetic data, resampling vs a "
        "step, the absorption audit vs SAEBench, achieved FLOP rate vs the device's matmul rate) and write "
        "perf.json.",
    )
    perf.add_argument(
        "--preset",
        default="cpu",
        choices=["cpu", "gpu"],
        help="cpu: a few minutes on 2 cores; gpu: d_in 768, d_sae 16,384, batch 4096 on a CUDA device",
    )
    perf.add_argument("--out", type=Path, default=None, help="output folder (default: runs/perf-PRESET)")
    perf.add_argument("--device", default=None, help="torch device (default: cpu, or cuda for --preset gpu)")
    perf.add_argument(
        "--sections",
        type=_csv,
        default=None,
        help="comma-separated subset of anchor,sparse,coder,sampling,feed,resampling,absorption,hardware,autocast,"
        "compile",
    )
    perf.add_argument(
        "--saebench-python",
        default=None,
        help="python of a virtual environment with sae-bench==0.6.0, for the absorption row",
    )
    perf.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    audit = commands.add_parser("audit", help="audits of trained SAEs").add_subparsers(
        dest="audit", required=True
    )
    absorption = audit.add_parser(
        "absorption",
        help="first-letter absorption audit of a pretrained or saved SAELens SAE (SAEBench's metric, fixed)",
        description="Measure feature absorption on the first-letter task (Chanin et al. 2024; SAEBench's "
        "absorption_first_letter thresholds) at the SAE's own hook. Writes absorption.json (SAEBench's keys, "
        "per_letter), report.png and report.html.",
    )
    source = absorption.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--sae-path", type=Path, help="a folder saved by SAELens (sae.save_model), with cfg.json"
    )
    source.add_argument(
        "--release", help="a SAELens pretrained release, e.g. gpt2-small-res-jb (needs the hub)"
    )
    absorption.add_argument("--sae-id", help="the SAE's id within --release, e.g. blocks.8.hook_resid_pre")
    absorption.add_argument("--model", required=True, help="the TransformerLens model name, e.g. gpt2")
    absorption.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="a local Hugging Face checkpoint (with its tokenizer) to load",
    )
    absorption.add_argument("--out", type=Path, required=True, help="output folder")
    absorption.add_argument("--device", default="cpu")
    absorption.add_argument("--seed", type=int, default=0)
    absorption.add_argument(
        "--max-words", type=int, default=None, help="score a random subset of the vocabulary"
    )
    absorption.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where word activations are cached (default: $SDL_ANCHOR_CACHE or ~/.cache/sdl_anchor)",
    )
    absorption.add_argument(
        "--no-cache", action="store_true", help="do not read or write the activation cache"
    )
    absorption.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    absorption.add_argument("--no-progress", action="store_true", help="hide progress bars")
    absorption.add_argument("--wandb-project", help=WANDB_HELP)
    commands.add_parser(
        "train",
        add_help=False,
        help="train an SAE, transcoder or crosscoder with SAELens's runner flags plus sdl-anchor's "
        "architectures, anchors, hooks and resampling (sdl-anchor train --help)",
    )
    anchors_command.add_parser(commands)
    return parser


def _bench_lrb(args: argparse.Namespace) -> int:
    from sdl_anchor.eval.lrb_table import METHODS, VARIANTS, format_table, run_lrb_bench, write_results

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
        variants=tuple(args.variants or VARIANTS),
        interference=tuple(modes),
        resampling=tuple(args.resampling),
        seed=args.seed,
        n_steps=args.steps,
        progress=not args.no_progress,
    )
    print(format_table(results))
    for path in write_results(results, out):
        print(f"wrote {path}")
    if args.wandb_project is not None:
        from sdl_anchor.eval.wandb_logging import log_results

        run = log_results(
            args.wandb_project,
            "bench-lrb",
            out,
            config={"preset": args.preset, **results.get("config", {})},
            tables={"lrb/results": results["rows"]},
            images={"lrb/recovery": out / "recovery.png"},
            summary={},
        )
        print(f"logged to W&B project {args.wandb_project} ({run})")
    return 0


def _bench_perf(args: argparse.Namespace) -> int:
    import torch

    from sdl_anchor.eval.perf import PRESETS, SECTIONS, format_table, run_perf
    from sdl_anchor.io import write_json

    out = args.out if args.out is not None else Path("runs") / f"perf-{args.preset}"
    if (out / "perf.json").exists() and not args.overwrite:
        raise ValueError(f"{out / 'perf.json'} already exists; pass --overwrite or choose another --out")
    device = args.device or ("cuda" if args.preset == "gpu" else "cpu")
    try:
        device_type = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a torch device: {err}") from err
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} needs CUDA, which this machine lacks; use --preset cpu")
    for section in args.sections or ():
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; choose from {','.join(SECTIONS)}")
        if section not in PRESETS[args.preset]:
            raise ValueError(f"section {section!r} runs only with --preset gpu")
    if args.saebench_python is not None and not Path(args.saebench_python).exists():
        raise FileNotFoundError(f"--saebench-python {args.saebench_python} does not exist")
    results = run_perf(
        args.preset,
        device=device,
        saebench_python=args.saebench_python,
        sections=args.sections,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(format_table(results))
    print(f"wrote {write_json(out / 'perf.json', results)}")
    return 0


def _audit_absorption(args: argparse.Namespace) -> int:
    from sdl_anchor.absorption.audit import (
        HEADLINE_KEYS,
        audit_absorption,
        default_cache_dir,
        load_model,
        load_sae,
        write_report,
    )

    if (args.out / "absorption.json").exists() and not args.overwrite:
        raise ValueError(
            f"{args.out / 'absorption.json'} already exists; pass --overwrite or choose another --out"
        )
    if args.release is not None and args.sae_id is None:
        raise ValueError("--release needs --sae-id")
    if args.sae_path is not None and args.sae_id is not None:
        raise ValueError("--sae-id goes with --release, not with --sae-path")
    if args.max_words is not None and args.max_words < 1:
        raise ValueError(f"--max-words must be positive, got {args.max_words}")
    sae = load_sae(args.sae_path, args.release, args.sae_id, args.device)
    model = load_model(args.model, args.model_path, args.device)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    report = audit_absorption(
        model,
        sae,
        model_label=args.model,
        sae_label=str(args.sae_path) if args.sae_path is not None else f"{args.release}/{args.sae_id}",
        seed=args.seed,
        max_words=args.max_words,
        cache_dir=cache_dir,
        progress=not args.no_progress,
    )
    print(
        f"mean absorption fraction {report['mean_absorption_fraction_score']:.4f}, mean full absorption "
        f"{report['mean_full_absorption_score']:.4f}, mean split features {report['mean_num_split_features']:.2f} "
        f"({len(report['eval_result_details'])} letters scored, {report['wall_seconds']:.1f} s)"
    )
    for letter, entry in report["per_letter"].items():
        if "skipped" in entry:
            print(f"  {letter}: skipped ({entry['skipped']})")
        else:
            print(
                f"  {letter}: absorption {entry['absorption_fraction']:.3f}  full {entry['full_absorption']:.3f}  "
                f"split {entry['num_split_features']}  probe F1 {entry['probe_f1']:.3f}"
            )
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    if args.wandb_project is not None:
        from sdl_anchor.eval.wandb_logging import log_results

        letters = [{"letter": letter, **entry} for letter, entry in report["per_letter"].items()]
        run = log_results(
            args.wandb_project,
            "audit-absorption",
            args.out,
            config={"model": args.model, "sae": report.get("sae", ""), "seed": args.seed},
            tables={"absorption/per_letter": letters},
            images={"absorption/report": args.out / "report.png"},
            summary={f"absorption/{key}": report[key] for key in HEADLINE_KEYS},
        )
        print(f"logged to W&B project {args.wandb_project} ({run})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdl-anchor`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["train"]:  # SAELens's own parser takes the flags after "train" that are not ours
            return train_command.train(argv[1:], usage=(train_command.__doc__ or "").replace("``", ""))
        args = _build_parser().parse_args(argv)
        if args.command == "anchors":
            return anchors_command.run(args)
        handlers = {
            ("bench", "lrb"): _bench_lrb,
            ("bench", "perf"): _bench_perf,
            ("audit", "absorption"): _audit_absorption,
        }
        return handlers[(args.command, getattr(args, "bench", None) or getattr(args, "audit", None))](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sdl-anchor: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
