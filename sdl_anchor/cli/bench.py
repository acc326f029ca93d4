"""``sdl-anchor bench lrb`` (:mod:`sdl_anchor.eval.lrb_table`), ``sdl-anchor bench synth``
(:mod:`sdl_anchor.eval.synth_bench`) and ``sdl-anchor bench perf`` (:mod:`sdl_anchor.eval.perf`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sdl_anchor.cli.common import WANDB_HELP, check_output_folder, csv_list, int_list


def add_parsers(commands: Any) -> None:
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    from sdl_anchor.eval.lrb_presets import METHODS, PRESETS, RESAMPLING, VARIANTS

    lrb = bench.add_parser(
        "lrb",
        help="train SAELens SAEs, transcoders and crosscoders, stock and ours, on the Linear Representation "
        "Bench; print the paper's Table 1 beside ours",
        description="Train SAELens SAEs, transcoders and crosscoders on LRB data as stock SAELens, anchored, "
        "theory-resampled and both, and score M_GT / M_IP on non-anchor features beside the paper's numbers. "
        "Writes results.json, recovery.png and (with curves) recovery_curves.png.",
    )
    lrb.add_argument(
        "--preset",
        default="quick",
        choices=list(PRESETS),
        help="smoke: seconds; quick (default): the main job, ~2 minutes on 2 CPU cores; small: n=128; "
        "paper-cpu: the paper's dimensions, each run under 10 minutes on 2 CPU cores; paper: for a GPU",
    )
    lrb.add_argument("--out", type=Path, default=None, help="output folder (default: runs/lrb-PRESET)")
    lrb.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    lrb.add_argument(
        "--methods",
        type=csv_list,
        default=None,
        help=f"comma-separated subset of {','.join(METHODS)} (default: the preset's)",
    )
    lrb.add_argument(
        "--variants",
        type=csv_list,
        default=None,
        help=f"comma-separated subset of {','.join(VARIANTS)}: the preset's columns with these variants (with "
        "--resampling: every pair of the two)",
    )
    lrb.add_argument(
        "--resampling",
        type=csv_list,
        default=None,
        help=f"comma-separated subset of {','.join(RESAMPLING)}: the preset's columns with these strategies",
    )
    lrb.add_argument(
        "--k",
        type=int_list,
        default=None,
        help="comma-separated TopK k values among the preset's (paper-cpu and paper: 32,64,128)",
    )
    lrb.add_argument(
        "--interference",
        type=csv_list,
        default=("bounded",),
        help="comma-separated interference modes: bounded,negative",
    )
    lrb.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    lrb.add_argument(
        "--l0-target",
        type=float,
        default=None,
        help="ReLU (standard) and JumpReLU only: steer every column's sparsity coefficient so that its L0 is "
        "this many active latents per input (an L0 controller), to compare the columns at one L0",
    )
    seeds = lrb.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one seed (default 0, the development seed)")
    seeds.add_argument(
        "--seeds",
        type=int_list,
        default=None,
        help="comma-separated seeds, each its own bench (features, codes, anchors), init and data order; the "
        "table reports the mean ± std over all but the development seed 0, e.g. --seeds 1,2,3",
    )
    lrb.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    lrb.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out/results.json (same preset and settings) and run only the rest; "
        "results.json is rewritten after every row",
    )
    lrb.add_argument("--no-progress", action="store_true", help="hide progress bars")
    lrb.add_argument("--wandb-project", help=WANDB_HELP)
    _add_synth_parser(bench)
    _add_lm_parser(bench)
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
        type=csv_list,
        default=None,
        help="comma-separated subset of anchor,sparse,coder,transcoder_set,clt,sampling,synth_sampling,feed,resampling,"
        "absorption,hardware,autocast,compile",
    )
    perf.add_argument(
        "--saebench-python",
        default=None,
        help="python of a virtual environment with sae-bench==0.6.0, for the absorption row",
    )
    perf.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def _previous_results(out: Path, args: argparse.Namespace, what: str) -> dict[str, Any] | None:
    """The results in ``out`` to resume (``--resume``), None for a fresh run; refuses to clobber them unless
    ``--overwrite``."""
    from sdl_anchor.io import read_json

    if args.overwrite and args.resume:
        raise ValueError("--overwrite and --resume contradict each other; pass one")
    if not (out / "results.json").exists():
        return None
    if args.resume:
        return read_json(out / "results.json", what)
    if not args.overwrite:
        raise ValueError(
            f"{out / 'results.json'} already exists; pass --resume to finish it, --overwrite to replace it, "
            "or choose another --out"
        )
    return None


def _add_run_flags(parser: Any) -> None:
    """``--overwrite``, ``--resume`` and ``--no-progress``, as every bench that writes results.json takes them."""
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows already in --out/results.json and run the rest"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_lm_parser(bench: Any) -> None:
    from sdl_anchor.eval.lm_presets import METHODS, PRESETS, VARIANTS

    lm = bench.add_parser(
        "lm",
        help="stock SAELens against our variants on a real language model (SmolLM2-135M-Instruct, offline)",
        description="Cache a real model's residual stream once (SAELens's CacheActivationsRunner) on real "
        "text, train stock SAELens TopK / BatchTopK and our variants on it, and score each SAE on held-out text: "
        "FVU, CE loss recovered, KL, L0, dead latents, first-letter absorption and the anchors' precision and "
        "recall; writes results.json, table.txt, loss_curves.png (the paper's Figure 7) and the SAEs.",
    )
    lm.add_argument(
        "--preset",
        default="cpu",
        choices=list(PRESETS),
        help="smoke: seconds (CI); cpu (default): under 30 minutes on 2 CPU cores; gpu: a realistic budget "
        "(needs --corpus with 20M tokens of text)",
    )
    lm.add_argument("--out", type=Path, default=None, help="output folder (default: runs/lm-PRESET)")
    lm.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="a local Hugging Face checkpoint (default: SmolLM2-135M-Instruct from `sdl-anchor models smollm2`, "
        "converted on first use)",
    )
    lm.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="a folder of .txt/.rst/.md files (default: the Python documentation and docstrings Python ships)",
    )
    lm.add_argument("--device", default=None, help="torch device (default: the preset's)")
    lm.add_argument(
        "--methods", type=csv_list, default=None, help=f"comma-separated subset of {','.join(METHODS)}"
    )
    lm.add_argument(
        "--variants", type=csv_list, default=None, help=f"comma-separated subset of {','.join(VARIANTS)}"
    )
    lm.add_argument(
        "--seeds", type=int_list, default=None, help="comma-separated seeds (0 is the development seed)"
    )
    _add_run_flags(lm)


def bench_lm(args: argparse.Namespace) -> int:
    from sdl_anchor.eval.lm_bench import format_table, goals, run_lm_bench, write_results
    from sdl_anchor.integrations.loading import check_checkpoint_folder
    from sdl_anchor.io import write_json

    out = args.out if args.out is not None else Path("runs") / f"lm-{args.preset}"
    check_output_folder(out)
    if args.model_path is not None:
        check_checkpoint_folder(args.model_path)  # before the corpus is read (the corpus checks itself)
    previous = _previous_results(out, args, "bench lm results")
    results = run_lm_bench(
        args.preset,
        out=out,
        model_path=args.model_path,
        corpus_dir=args.corpus,
        device=args.device,
        methods=args.methods,
        variants=args.variants,
        seeds=args.seeds,
        progress=not args.no_progress,
        previous=previous,
        on_row=lambda partial: write_json(out / "results.json", partial),
    )
    print(format_table(results))
    print()
    print("\n".join(goals(results)))
    for path in write_results(results, out):
        print(f"wrote {path}")
    return 0


def _add_synth_parser(bench: Any) -> None:
    from sdl_anchor.eval.synth_presets import METHODS, PRESETS, VARIANTS

    synth = bench.add_parser(
        "synth",
        help="stock SAELens against our variants on SynthSAEBench-16k, scored by SAELens's evaluator",
        description="Build SynthSAEBench-16k from its documented configuration (cached), train stock SAELens "
        "and our variants at matched L0, score each SAE with SAELens's eval_sae_on_synthetic_data, and write "
        "results.json, table.txt, mcc_f1_vs_l0.png and the SAEs (SAELens's format) under --out.",
    )
    synth.add_argument(
        "--preset",
        default="synth-cpu",
        choices=list(PRESETS),
        help="smoke: seconds, a small model of the same family; synth-cpu (default): the 16k model, a small "
        "budget for 2 CPU cores; synth: the published protocol (200M samples), for a GPU",
    )
    synth.add_argument("--out", type=Path, default=None, help="output folder (default: runs/synth-PRESET)")
    synth.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    synth.add_argument(
        "--methods", type=csv_list, default=None, help=f"comma-separated subset of {','.join(METHODS)}"
    )
    synth.add_argument(
        "--variants", type=csv_list, default=None, help=f"comma-separated subset of {','.join(VARIANTS)}"
    )
    synth.add_argument("--l0", type=int_list, default=None, help="comma-separated L0 targets (default 25,20)")
    synth.add_argument(
        "--model-seeds",
        type=int_list,
        default=None,
        help="comma-separated SynthSAEBench model seeds (42 is the published model and the development seed)",
    )
    synth.add_argument("--samples", type=int, default=None, help="override the training samples per SAE")
    synth.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where built models are cached (default: $SDL_ANCHOR_CACHE/synth or ~/.cache/sdl-anchor/synth)",
    )
    _add_run_flags(synth)


def bench_synth(args: argparse.Namespace) -> int:
    from sdl_anchor.eval.synth_bench import format_comparisons, format_table, run_synth_bench, write_results
    from sdl_anchor.io import write_json

    out = args.out if args.out is not None else Path("runs") / f"synth-{args.preset}"
    check_output_folder(out)
    if args.cache_dir is not None:
        check_output_folder(args.cache_dir, "--cache-dir")
    previous = _previous_results(out, args, "bench synth results")
    results = run_synth_bench(
        args.preset,
        device=args.device,
        methods=args.methods,
        variants=args.variants,
        l0_targets=args.l0,
        model_seeds=args.model_seeds,
        training_samples=args.samples,
        out=out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        previous=previous,
        on_row=lambda partial: write_json(out / "results.json", partial),
    )
    print(format_table(results))
    print()
    print(format_comparisons(results))
    for path in write_results(results, out):
        print(f"wrote {path}")
    return 0


def bench_lrb(args: argparse.Namespace) -> int:
    from sdl_anchor.eval.lrb_table import format_table, run_lrb_bench, write_results
    from sdl_anchor.io import write_json

    out = args.out if args.out is not None else Path("runs") / f"lrb-{args.preset}"
    check_output_folder(out)
    previous = _previous_results(out, args, "bench lrb results")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    results = run_lrb_bench(
        args.preset,
        device=args.device,
        methods=args.methods,
        variants=args.variants,
        interference=tuple(args.interference),
        resampling=args.resampling,
        ks=args.k,
        seed=args.seed,
        seeds=None if args.seeds is None else tuple(args.seeds),
        n_steps=args.steps,
        l0_target=args.l0_target,
        progress=not args.no_progress,
        previous=previous,
        on_row=lambda partial: write_json(out / "results.json", partial),
    )
    print(format_table(results))
    for path in write_results(results, out):
        print(f"wrote {path}")
    if args.wandb_project is not None:
        from sdl_anchor.eval.wandb_logging import log_results

        images = {"lrb/recovery": out / "recovery.png"}
        if (out / "recovery_curves.png").exists():
            images["lrb/recovery_curves"] = out / "recovery_curves.png"
        run = log_results(
            args.wandb_project,
            "bench-lrb",
            out,
            config={"preset": args.preset, **results.get("config", {})},
            tables={
                "lrb/results": [
                    {k: v for k, v in r.items() if k != "recovery_curve"} for r in results["rows"]
                ]
            },
            images=images,
            summary={},
        )
        print(f"logged to W&B project {args.wandb_project} ({run})")
    return 0


def bench_perf(args: argparse.Namespace) -> int:
    import torch

    from sdl_anchor.eval.perf import PRESETS, SECTIONS, format_table, run_perf
    from sdl_anchor.io import write_json

    out = args.out if args.out is not None else Path("runs") / f"perf-{args.preset}"
    check_output_folder(out)
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
