"""``sdl-anchor export circuit-tracer SET_DIR --out DIR``: a transcoder set in circuit-tracer's on-disk format
(:mod:`sdl_anchor.integrations.circuit_tracer`)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any


def add_parsers(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="export trained coders to other tools' formats"
    ).add_subparsers(dest="export", required=True)
    tracer = export.add_parser(
        "circuit-tracer",
        help="a transcoder set (sdl-anchor train --layers) in circuit-tracer's format",
        description="Write config.yaml and layer_<i>.safetensors that circuit-tracer's ReplacementModel."
        "from_pretrained(model, DIR) loads (give DIR as an absolute path).",
    )
    tracer.add_argument("set_dir", type=Path, help="a transcoder set folder (manifest.json, layer_<L>/)")
    tracer.add_argument("--out", type=Path, required=True, help="output folder")
    tracer.add_argument(
        "--scan", default=None, help="the set's name in circuit-tracer's graphs (default: its folder)"
    )
    tracer.add_argument("--overwrite", action="store_true", help="replace an export already in --out")


def export_circuit_tracer(args: argparse.Namespace) -> int:
    from sdl_anchor.integrations.circuit_tracer import export_circuit_tracer as export

    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists; pass --overwrite or choose another --out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export(args.set_dir, args.out, scan=args.scan)
    for warning in caught:
        print(f"sdl-anchor: warning: {warning.message}")
    config = (out / "config.yaml").read_text()
    layers = sorted(out.glob("layer_*.safetensors"))
    print(config.rstrip())
    print(
        f"wrote {out / 'config.yaml'} and {len(layers)} layer files ({layers[0].name} .. {layers[-1].name})"
    )
    print(json.dumps({"out": str(out.resolve()), "layers": len(layers)}))
    return 0
