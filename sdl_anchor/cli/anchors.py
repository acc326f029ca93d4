"""``sdl-anchor anchors``: build an anchor file (DESIGN.md section 5) from one of its three sources.

- ``from-bench``: ground truth, ``k`` of an LRB bench's features (``bench.anchors(k, seed)``);
- ``class-means``: normalised class means of a model's activations on labelled prompts
  (``{"class": ["prompt", ...], ...}`` in a JSON file), read at a hook; centred on the global mean with three
  classes or more, raw with two (two centred means are antipodal); ``--centred`` / ``--uncentred`` choose;
- ``probe``: the rows of a probe's weight matrix ``[k, d]`` (a safetensors file).

Each writes ``DIR/anchors.safetensors`` (``sa.AnchorSet.save``; give it to training as ``anchor_path``) and
``DIR/anchors.json`` (source, k, widths, names, indices).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sdl_anchor.cli.common import MODEL_KWARGS_HELP, model_kwargs


def add_parser(commands: Any) -> None:
    """The ``anchors`` subcommand and its three sources."""
    anchors = commands.add_parser(
        "anchors",
        help="build an anchor file from ground truth, class means of labelled prompts, or probe weights",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="anchors", required=True, metavar="SOURCE")
    bench = anchors.add_parser("from-bench", help="k ground-truth features of a saved LRB bench")
    bench.add_argument("--bench", type=Path, required=True, help="a bench saved with bench.save(path)")
    bench.add_argument("--k", type=int, default=100, help="how many features to anchor (default 100)")
    bench.add_argument("--seed", type=int, default=0, help="which features: a seeded random choice")
    means = anchors.add_parser(
        "class-means", help="normalised class means of activations on labelled prompts"
    )
    means.add_argument("--model", required=True, help="TransformerLens model name, e.g. gpt2")
    means.add_argument("--model-path", type=Path, help="a local Hugging Face checkpoint instead of the hub")
    means.add_argument("--model-kwargs", type=model_kwargs, default=None, help=MODEL_KWARGS_HELP)
    means.add_argument("--hook", required=True, help="the hook to read, e.g. blocks.8.hook_resid_post")
    means.add_argument("--prompts", type=Path, required=True, help='JSON: {"class": ["prompt", ...], ...}')
    means.add_argument("--device", default="cpu")
    centring = means.add_mutually_exclusive_group()
    centring.add_argument(
        "--centred",
        dest="center",
        action="store_const",
        const=True,
        help="centre on the global mean (the default with three classes or more; refused with two, whose "
        "centred means are antipodal)",
    )
    centring.add_argument(
        "--uncentred",
        dest="center",
        action="store_const",
        const=False,
        help="raw class means, not centred on the global mean (the default with two classes)",
    )
    probe = anchors.add_parser("probe", help="the rows of a probe's weight matrix")
    probe.add_argument("--weights", type=Path, required=True, help="a safetensors file with a [k, d] tensor")
    probe.add_argument("--key", help="the tensor's name in the file (needed when it holds several)")
    probe.add_argument("--names", help="comma-separated names, one per row")
    for parser in (bench, means, probe):
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        parser.add_argument("--overwrite", action="store_true", help="replace anchors already in --out")


def _from_bench(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from sdl_anchor.lrb import LinearRepresentationBench

    if not args.bench.exists():
        raise FileNotFoundError(f"--bench {args.bench} does not exist; save one with bench.save(path)")
    return LinearRepresentationBench.load(args.bench).anchors(k=args.k, seed=args.seed), {}


def _class_means(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The class-mean anchors and ``{"centred": bool}``, checked before the model loads."""
    from sdl_anchor.anchoring.sources import centres_class_means
    from sdl_anchor.integrations.loading import load_model
    from sdl_anchor.integrations.prompt_anchors import class_mean_anchors_from_prompts

    if not args.prompts.is_file():
        raise FileNotFoundError(f"--prompts {args.prompts} does not exist")
    try:
        prompts = json.loads(args.prompts.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--prompts {args.prompts} is not valid JSON: {err}") from None
    if not isinstance(prompts, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in prompts.values()
    ):
        raise ValueError(f'--prompts {args.prompts} must hold {{"class": ["prompt", ...], ...}}')
    try:
        center = centres_class_means(args.center, len(prompts))
    except ValueError:
        raise ValueError(
            f"--centred with the two classes of --prompts {args.prompts} gives antipodal anchors (one direction "
            "and its opposite); drop --centred (two classes keep their raw means) or add classes"
        ) from None
    if args.center is None and not center:
        print(
            f"{len(prompts)} class{'es' if len(prompts) != 1 else ''}: raw class means, not centred on the "
            "global mean (centred, two classes are antipodal)"
        )
    model = load_model(args.model, args.model_path, args.device, args.model_kwargs)
    return class_mean_anchors_from_prompts(model, prompts, args.hook, center=center), {"centred": center}


def _probe(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from sdl_anchor.anchoring import probe_anchors
    from sdl_anchor.io import read_safetensors

    tensors = read_safetensors(args.weights, "probe weights file", "cpu")
    if args.key is None and len(tensors) != 1:
        raise ValueError(f"--weights holds {sorted(tensors)}; choose one with --key")
    key = args.key if args.key is not None else next(iter(tensors))
    if key not in tensors:
        raise ValueError(f"--key {key!r} is not in --weights; it holds {sorted(tensors)}")
    names = None if args.names is None else args.names.split(",")
    return probe_anchors(tensors[key].float(), names), {}


def run(args: argparse.Namespace) -> int:
    """Build, save and describe the anchors; return the exit code."""
    from sdl_anchor.io import write_json

    for name in ("anchors.safetensors", "anchors.json"):
        if (args.out / name).exists() and not args.overwrite:
            raise ValueError(f"{args.out / name} already exists; pass --overwrite or choose another --out")
    build = {"from-bench": _from_bench, "class-means": _class_means, "probe": _probe}[args.anchors]
    anchors, details = build(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = anchors.save(args.out / "anchors.safetensors")
    summary = {
        "source": args.anchors,
        "path": str(path),
        "k": anchors.k,
        "d_in": anchors.d_in,
        "d_out": anchors.d_out,
        "names": anchors.names,
        "indices": None if anchors.indices is None else [int(i) for i in anchors.indices],
        **details,
    }
    described = write_json(args.out / "anchors.json", summary)
    print(f"{anchors.k} anchors ({args.anchors}), d_in {anchors.d_in}, d_out {anchors.d_out}")
    print(f"wrote {path}\nwrote {described}")
    return 0
