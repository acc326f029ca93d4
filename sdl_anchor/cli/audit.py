"""``sdl-anchor audit absorption``: the first-letter absorption audit of a pretrained or saved SAELens SAE
(:mod:`sdl_anchor.absorption.audit`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sdl_anchor.cli.common import WANDB_HELP, model_kwargs


def add_parsers(commands: Any) -> None:
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
    absorption.add_argument(
        "--model-kwargs",
        type=model_kwargs,
        default=None,
        help="JSON keyword arguments for HookedTransformer.from_pretrained_no_processing (default: the "
        "model_from_pretrained_kwargs the SAE records, as SAELens's evaluator reads them)",
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


def audit_absorption(args: argparse.Namespace) -> int:
    from sdl_anchor.absorption.audit import (
        HEADLINE_KEYS,
        audit_absorption,
        default_cache_dir,
        write_report,
    )
    from sdl_anchor.integrations.loading import load_model, load_sae, model_kwargs_of

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
    kwargs = args.model_kwargs if args.model_kwargs is not None else model_kwargs_of(sae)
    model = load_model(args.model, args.model_path, args.device, kwargs)
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
    report["model_kwargs"] = kwargs if args.model_path is None else None  # a local checkpoint boots as is
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
