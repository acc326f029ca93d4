"""``sdl-anchor export circuit-tracer SET_DIR --out DIR``: a transcoder set, or a cross-layer transcoder, in
circuit-tracer's on-disk format (:mod:`sdl_anchor.integrations.circuit_tracer`). A TopK CLT (and, given
held-out text, a BatchTopK-trained one) is converted to per-latent JumpReLU thresholds fitted on held-out
activations (:mod:`sdl_anchor.integrations.jumprelu_conversion`), from ``--model`` run on
``--held-out-dataset``; the conversion's error is printed and written to ``DIR/conversion.json``."""

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
        help="a transcoder set or a cross-layer transcoder (sdl-anchor train --layers) in circuit-tracer's format",
        description="Write what circuit-tracer's ReplacementModel.from_pretrained(model, DIR) loads (give DIR as "
        "an absolute path): config.yaml and layer_<i>.safetensors for a transcoder set; config.yaml, "
        "W_enc_<i>.safetensors and W_dec_<i>.safetensors (model_kind: cross_layer_transcoder) for a CLT. TopK CLTs "
        "need --model and --held-out-dataset: they are converted to JumpReLU with per-latent thresholds fitted on "
        "held-out activations, and the conversion's error is reported (DIR/conversion.json).",
    )
    tracer.add_argument(
        "set_dir",
        type=Path,
        help="a transcoder set folder (manifest.json, layer_<L>/) or a CLT folder (clt/)",
    )
    tracer.add_argument("--out", type=Path, required=True, help="output folder")
    tracer.add_argument(
        "--scan", default=None, help="the set's name in circuit-tracer's graphs (default: its folder)"
    )
    tracer.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    held_out = tracer.add_argument_group("held-out activations (CLTs to convert to JumpReLU)")
    held_out.add_argument("--model", default=None, help="the TransformerLens model the CLT was trained on")
    held_out.add_argument("--model-path", type=Path, default=None, help="a local Hugging Face checkpoint")
    held_out.add_argument(
        "--held-out-dataset", default=None, help="text the CLT was not trained on (a folder of text files or "
        "a Hugging Face dataset with a 'text' column)",
    )  # fmt: skip
    held_out.add_argument("--held-out-tokens", type=int, default=8192, help="tokens to read (default 8192)")
    held_out.add_argument(
        "--context-size", type=int, default=None, help="tokens per row (default: the CLT's training context)"
    )
    held_out.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="BatchTopK's training batch in tokens (default: recorded)",
    )
    held_out.add_argument("--device", default="cpu")


def export_circuit_tracer(args: argparse.Namespace) -> int:
    from sdl_anchor.integrations.circuit_tracer import export_circuit_tracer as export
    from sdl_anchor.integrations.circuit_tracer import is_clt_folder

    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists; pass --overwrite or choose another --out")
    if is_clt_folder(args.set_dir):
        return export_clt(args)
    held_out = None
    if args.model is not None or args.held_out_dataset is not None:
        from sdl_anchor.integrations.transcoder_set import TranscoderSet

        transcoder_set = TranscoderSet.load(args.set_dir)
        held_out, _ = collect_held_out(args, transcoder_set.transcoders[transcoder_set.layers[0]],
                                       transcoder_set.layers, transcoder_set.hooks)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export(args.set_dir, args.out, scan=args.scan, held_out=held_out, batch_size=args.batch_size)
    for warning in caught:
        print(f"sdl-anchor: warning: {warning.message}")
    config = (out / "config.yaml").read_text()
    layers = sorted(out.glob("layer_*.safetensors"))
    print(config.rstrip())
    print(
        f"wrote {out / 'config.yaml'} and {len(layers)} layer files ({layers[0].name} .. {layers[-1].name})"
    )
    conversion = None
    if (out / "conversion.json").exists():
        conversion = json.loads((out / "conversion.json").read_text())
        for layer, report in conversion["layers"].items():
            print(f"layer {layer}: {conversion_line(report)}")
        print(f"wrote {out / 'conversion.json'}")
    print(json.dumps({"out": str(out.resolve()), "layers": len(layers), "conversion": conversion}))
    return 0


def collect_held_out(args: argparse.Namespace, coder: Any, layers: list[int], hooks: tuple[str, str]):
    """``((x_in, x_out), model's layer count)`` from ``--model`` run on ``--held-out-dataset``."""
    from sdl_anchor.integrations.jumprelu_conversion import held_out_activations
    from sdl_anchor.integrations.loading import load_model, model_kwargs_of

    if (args.model is None) != (args.held_out_dataset is None):
        raise ValueError(
            "give --model and --held-out-dataset together (the model is run on the held-out text)"
        )
    context = args.context_size or getattr(coder.cfg.metadata, "context_size", None) or 128
    model = load_model(args.model, args.model_path, args.device, model_kwargs_of(coder))
    held_out = held_out_activations(
        model, layers, hooks, args.held_out_dataset, args.held_out_tokens, int(context)
    )
    return held_out, int(model.cfg.n_layers)


def conversion_line(report: dict[str, Any]) -> str:
    """One line of a conversion's error (:mod:`sdl_anchor.integrations.jumprelu_conversion`)."""
    line = (
        f"converted {report['reference']} (k={report['k']:g}) to per-latent JumpReLU thresholds, fitted on "
        f"{report['fit_tokens']} held-out tokens; on the other {report['evaluation_tokens']}: firing decisions "
        f"differing {report['disagreement']:.4%} (false {report['false_firings']:.4%}, missed "
        f"{report['missed_firings']:.4%}), relative reconstruction error "
        f"{report['relative_reconstruction_error']:.3g}, L0 ({report['l0_unit']}) {report['l0_before']:.2f} -> {report['l0_after']:.2f}"
    )
    if "fvu_before" in report:
        line += f"; FVU against the model's outputs {report['fvu_before']:.4f} -> {report['fvu_after']:.4f}"
    if "saved_thresholds" in report:
        saved = report["saved_thresholds"]
        line += (
            f" (the thresholds it was saved with: differing {saved['disagreement']:.4%}, relative reconstruction "
            f"error {saved['relative_reconstruction_error']:.3g}, L0 {saved['l0_after']:.2f})"
        )
    return line


def export_clt(args: argparse.Namespace) -> int:
    """The CLT branch of ``export circuit-tracer`` (module docstring)."""
    from sdl_anchor.integrations.circuit_tracer import export_clt_circuit_tracer, needs_conversion
    from sdl_anchor.integrations.clt_training import CLTBundle

    held_out, n_layers = None, None
    if args.model is not None or args.held_out_dataset is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="(?s).*model_from_pretrained_kwargs")
            bundle = CLTBundle.load(args.set_dir)
        if needs_conversion(bundle) is None:
            raise ValueError(
                f"this CLT ({bundle.coder.cfg.activation}) exports as it is; drop --model and --held-out-dataset"
            )
        held_out, n_layers = collect_held_out(args, bundle.coder, bundle.layers, bundle.hooks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings(
            "ignore", message="(?s).*model_from_pretrained_kwargs"
        )  # SAELens's, on loading
        out, report = export_clt_circuit_tracer(
            args.set_dir, args.out, scan=args.scan, held_out=held_out, batch_size=args.batch_size,
            model_n_layers=n_layers,
        )  # fmt: skip
    for warning in caught:
        print(f"sdl-anchor: warning: {warning.message}")
    print((out / "config.yaml").read_text().rstrip())
    layers = len(list(out.glob("W_enc_*.safetensors")))
    print(f"wrote {out / 'config.yaml'}, W_enc_<i> and W_dec_<i>.safetensors for {layers} layers")
    if report is not None:
        print(conversion_line(report))
        print(f"wrote {out / 'conversion.json'}")
    print(json.dumps({"out": str(out.resolve()), "layers": layers, "kind": "cross_layer_transcoder",
                      "conversion": report}))  # fmt: skip
    return 0
