"""Export a transcoder set, or a cross-layer transcoder, to circuit-tracer's on-disk format (read from
circuit-tracer 0.5.0's own loaders). Transcoder sets below; CLTs (:func:`export_clt_circuit_tracer`) in the
second half of this module, whose comment gives their layout.

circuit-tracer (attribution graphs, replacement models) loads a transcoder set from a folder holding
``config.yaml`` and one ``layer_{i}.safetensors`` per layer (``circuit_tracer/utils/caching.py``
``load_transcoders_from_cache``; ``transcoder/single_layer_transcoder.py`` ``load_relu_transcoder``):

* ``config.yaml``: ``model_kind: transcoder_set`` and the hooks inside each block,
  ``feature_input_hook`` / ``feature_output_hook`` (e.g. ``ln2.hook_normalized``, ``hook_mlp_out``); we add
  ``model_name``, ``scan`` and, for TopK, ``activation: topk`` with its ``k`` (the keys circuit-tracer's main
  branch reads since its PR #94) and our ``activation_function: topk``. Written by PyYAML's ``safe_dump``, so
  any value (a ``--scan`` of ``2024``, ``on`` or one holding quotes, backslashes or newlines) reads back as the
  same string and cannot add a key.
* ``layer_{i}.safetensors``: ``W_enc [d_sae, d_model]`` (the transpose of SAELens's ``[d_in, d_sae]``),
  ``W_dec [d_sae, d_model]``, ``b_enc``, ``b_dec``, and ``activation_function.threshold`` for JumpReLU (whose
  presence is how circuit-tracer picks JumpReLU), ``W_skip [d_out, d_in]`` with a skip connection. Its loader
  is strict: any other key is an error.

circuit-tracer needs a transcoder at every layer ``0..L-1``, of one width, reading and writing ``d_model``.
Its JumpReLU computes ``x * (x > t)`` without a ReLU; SAELens's equals it for ``t >= 0``, so thresholds are
written clamped at 0. The released circuit-tracer 0.5.0 loads only ReLU and JumpReLU transcoders from disk and
ignores the TopK keys (it would apply a ReLU), so a TopK set comes with a warning: use circuit-tracer's main
branch (TopK sets merged in its PR #94), load it with circuit-tracer's ``TopK`` activation programmatically,
or train with ``batchtopk``, which saves as JumpReLU. BatchTopK and JumpReLU sets export exactly.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from sdl_anchor.integrations.coder_hooks import coder_kind
from sdl_anchor.integrations.transcoder_set import TranscoderSet
from sdl_anchor.io import write_json, write_safetensors


def circuit_tracer_tensors(transcoder: Any) -> dict[str, torch.Tensor]:
    """One layer's tensors in circuit-tracer's names and orientation (module docstring)."""
    cfg = transcoder.cfg
    tensors = {
        "W_enc": transcoder.W_enc.detach().T.contiguous(),
        "W_dec": transcoder.W_dec.detach().contiguous(),
        "b_enc": transcoder.b_enc.detach().contiguous(),
        "b_dec": transcoder.b_dec.detach().contiguous(),
    }
    threshold = getattr(transcoder, "threshold", None)
    if isinstance(threshold, torch.Tensor) and threshold.numel() == cfg.d_sae:
        tensors["activation_function.threshold"] = threshold.detach().clamp_min(0.0).contiguous()
    skip = getattr(transcoder, "W_skip", None)
    if isinstance(skip, torch.Tensor):
        tensors["W_skip"] = skip.detach().contiguous()
    return {name: t.float() for name, t in tensors.items()}


def _activation(transcoder: Any) -> tuple[str, int | None]:
    architecture = transcoder.cfg.architecture()
    if architecture.startswith("topk"):
        return "topk", int(transcoder.cfg.k)
    if "jumprelu" in architecture:
        return "jumprelu", None
    if architecture in ("transcoder", "skip_transcoder"):
        return "relu", None
    raise ValueError(f"circuit-tracer has no transcoder of architecture {architecture!r}")


def check_transcoders(transcoder_set: TranscoderSet) -> None:
    """Raise ValueError unless every coder in the set is a transcoder (not an SAE or a crosscoder)."""
    others = {
        layer: (coder_kind(coder), coder.cfg.architecture())
        for layer, coder in transcoder_set.transcoders.items()
        if coder_kind(coder) != "transcoder"
    }
    if others:
        given = ", ".join(f"layer {layer}: {kind} {arch!r}" for layer, (kind, arch) in sorted(others.items()))
        raise ValueError(
            f"circuit-tracer needs a transcoder set (x_in -> x_out per layer); this set holds {given}. Train a "
            "transcoder set with `sdl-anchor train --layers ... --architecture <activation>_transcoder` "
            "(e.g. jumprelu_transcoder or batchtopk_transcoder)"
        )


def check_exportable(transcoder_set: TranscoderSet) -> None:
    """Raise ValueError unless circuit-tracer can load the set: transcoders only, at layers 0..L-1, of one
    width, with d_in = d_out."""
    check_transcoders(transcoder_set)
    layers = transcoder_set.layers
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if layers[0] != 0 or missing:
        raise ValueError(
            f"circuit-tracer needs a transcoder at every layer 0..{max(layers)}; this set has {layers} and lacks "
            f"{missing or [0]}. Train the set with --layers all"
        )
    widths = {t.cfg.d_sae for t in transcoder_set.transcoders.values()}
    if len(widths) > 1:
        raise ValueError(
            f"circuit-tracer needs one width for every layer; this set has d_sae {sorted(widths)}"
        )
    for layer, transcoder in transcoder_set.transcoders.items():
        d_out = int(transcoder.W_dec.shape[1])
        if transcoder.cfg.d_in != d_out:
            raise ValueError(
                f"layer {layer} maps d_in={transcoder.cfg.d_in} to d_out={d_out}; circuit-tracer's transcoders "
                "read and write the model's width (d_in = d_out)"
            )
        _activation(transcoder)


def export_circuit_tracer(
    set_dir: str | Path,
    out: str | Path,
    scan: str | None = None,
    held_out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    batch_size: int | None = None,
) -> Path:
    """Write ``out/config.yaml`` and ``out/layer_{i}.safetensors`` for the transcoder set saved in
    ``set_dir``; everything is checked first and written to a temporary folder, renamed when complete.

    With ``held_out = (x_in, x_out)`` (``[n_tokens, n_layers, d]``, the set's layers in order; ``x_out`` may
    be None), TopK and BatchTopK-trained transcoders are converted to JumpReLU transcoders with per-latent
    thresholds (:func:`~sdl_anchor.integrations.jumprelu_conversion.convert_transcoder`; ``batch_size``:
    BatchTopK's training batch in tokens), which circuit-tracer 0.5.0 loads; the reports go to
    ``out/conversion.json``."""
    transcoder_set = TranscoderSet.load(set_dir)
    check_exportable(transcoder_set)
    reports = None
    if held_out is not None:
        transcoder_set, reports = _convert_set(transcoder_set, held_out, batch_size)
    first = transcoder_set.transcoders[0]
    activation, k = _activation(first)
    if activation == "topk":
        warnings.warn(
            "circuit-tracer 0.5.0 loads only ReLU and JumpReLU transcoders from disk (its loader ignores "
            "'activation: topk' and would apply a ReLU); use circuit-tracer's main branch, which reads "
            "'activation: topk' and 'k', build its TranscoderSet with its TopK(k) activation, or train the set "
            "with batchtopk, which exports as JumpReLU",
            stacklevel=2,
        )
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for layer, transcoder in transcoder_set.transcoders.items():
            write_safetensors(partial / f"layer_{layer}.safetensors", circuit_tracer_tensors(transcoder))
        lines = {
            "model_kind": "transcoder_set",
            "feature_input_hook": transcoder_set.hooks[0],
            "feature_output_hook": transcoder_set.hooks[1],
            "model_name": first.cfg.metadata.model_name or "",
            "scan": scan or Path(set_dir).resolve().name,
            "activation_function": activation,
        }
        if activation == "topk":
            lines["activation"] = "topk"  # the key circuit-tracer's main branch reads (its PR #94)
        if k is not None:
            lines["k"] = k
        if reports is not None:
            lines["converted_from"] = next(iter(reports.values()))["reference"]
            write_json(partial / "conversion.json", {"layers": reports})
        (partial / "config.yaml").write_text(yaml.safe_dump(lines, sort_keys=False, allow_unicode=True))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _convert_set(
    transcoder_set: TranscoderSet, held_out: tuple[torch.Tensor, torch.Tensor | None], batch_size: int | None
) -> tuple[TranscoderSet, dict[str, Any]]:
    """Every transcoder of the set converted to JumpReLU on its layer's held-out activations."""
    from sdl_anchor.integrations.jumprelu_conversion import convert_transcoder

    x_in, x_out = held_out
    layers = transcoder_set.layers
    if not isinstance(x_in, torch.Tensor) or x_in.ndim != 3 or x_in.shape[1] != len(layers):
        given = tuple(x_in.shape) if isinstance(x_in, torch.Tensor) else type(x_in).__name__
        raise ValueError(f"held-out inputs must be [n_tokens, {len(layers)} layers, d_in], got {given}")
    converted, reports = {}, {}
    for position, layer in enumerate(layers):
        target = None if x_out is None else x_out[:, position]
        converted[layer], reports[str(layer)] = convert_transcoder(
            transcoder_set.transcoders[layer], x_in[:, position], target, batch_size=batch_size
        )
    return TranscoderSet(converted, transcoder_set.hooks), reports


# Cross-layer transcoders (issue 36). circuit-tracer 0.5.0's ``load_clt``
# (``transcoder/cross_layer_transcoder.py``) reads, from a folder whose config.yaml says ``model_kind:
# cross_layer_transcoder`` (with ``feature_input_hook``, ``feature_output_hook`` and ``scan``), one
# ``W_enc_{i}.safetensors`` per layer (``W_enc_{i} [d_sae, d_model]``, ``b_enc_{i}``, ``b_dec_{i}`` and, whose
# presence makes it a JumpReLU, ``threshold_{i}``) and ``W_dec_{i}.safetensors`` (``W_dec_{i} [d_sae,
# n_layers - i, d_model]``); it counts the layers by the W_enc files. It has no TopK CLT: TopK CLTs are
# converted to JumpReLU first (:mod:`~sdl_anchor.integrations.jumprelu_conversion`).


def is_clt_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a CLT saved by ``sdl-anchor train --architecture ..._clt`` (its manifest's
    format)."""
    from sdl_anchor.integrations.clt_training import CLT_FORMAT, MANIFEST

    path = Path(folder) / MANIFEST
    try:
        import json

        return json.loads(path.read_text()).get("format") == CLT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_clt_exportable(bundle: Any, model_n_layers: int | None = None) -> None:
    """Raise ValueError unless circuit-tracer can load the CLT: it covers every layer ``0..n_layers-1`` of its
    model (``model_n_layers``, else what the CLT recorded in training) and reads and writes one width."""
    layers = list(bundle.layers)
    recorded = getattr(bundle.coder.cfg.metadata, "model_n_layers", None)
    n_layers = model_n_layers if model_n_layers is not None else recorded
    expected = list(range(n_layers if isinstance(n_layers, int) else max(layers) + 1))
    if layers != expected:
        missing = sorted(set(expected) - set(layers))
        raise ValueError(
            f"circuit-tracer needs a CLT over every layer 0..{len(expected) - 1} of the model; this one covers "
            f"layers {layers}" + (f" and lacks {missing}" if missing else "") + ". Train it with --layers all"
        )
    cfg = bundle.coder.cfg
    if cfg.d_in != cfg.d_out:
        raise ValueError(
            f"this CLT maps d_in={cfg.d_in} to d_out={cfg.d_out}; circuit-tracer's CLTs read and write the "
            "model's width"
        )


def needs_conversion(bundle: Any) -> str | None:
    """``"topk"`` or ``"batchtopk"`` when the CLT's activation is converted to per-latent JumpReLU thresholds
    on export (``batchtopk`` only with held-out activations), else None."""
    cfg = bundle.coder.cfg
    if cfg.activation == "topk":
        return "topk"
    training = getattr(cfg.metadata, "training_architecture", None) or ""
    return "batchtopk" if cfg.activation == "jumprelu" and "batchtopk" in training else None


def export_clt_circuit_tracer(
    clt_dir: str | Path,
    out: str | Path,
    scan: str | None = None,
    held_out: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    batch_size: int | None = None,
    model_n_layers: int | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Write circuit-tracer's ``cross_layer_transcoder`` folder (config.yaml, ``W_enc_{i}`` and ``W_dec_{i}``
    files) for the CLT saved in ``clt_dir``; return it and the conversion report (None when none was made).

    ``held_out = (x_in, x_out)``: held-out activations ``[n_tokens, n_layers, d]`` (``x_out`` may be None).
    A TopK CLT needs them (converted to JumpReLU); a BatchTopK-trained one is converted with them, or exported
    with the one threshold per layer SAELens saved it with. The report is also written to
    ``out/conversion.json``."""
    from sdl_anchor.integrations.clt_training import CLTBundle
    from sdl_anchor.integrations.cross_layer_transcoder import circuit_tracer_tensors
    from sdl_anchor.integrations.jumprelu_conversion import convert_clt

    bundle = CLTBundle.load(clt_dir)
    check_clt_exportable(bundle, model_n_layers)
    coder, report = bundle.coder, None
    kind = needs_conversion(bundle)
    if kind == "topk" and held_out is None:
        raise ValueError(
            "circuit-tracer loads ReLU and JumpReLU CLTs only; this TopK CLT is converted to JumpReLU thresholds "
            "fitted on held-out activations: give --model NAME and --held-out-dataset PATH (text it was not "
            "trained on)"
        )
    if kind is not None and held_out is not None:
        coder, report = convert_clt(coder, held_out[0], held_out[1], batch_size=batch_size)
    elif kind == "batchtopk":
        warnings.warn(
            "exported with the one threshold per layer SAELens saved this BatchTopK CLT with; give --model and "
            "--held-out-dataset to fit per-latent thresholds that reproduce its BatchTopK decisions",
            stacklevel=2,
        )
    with torch.no_grad():
        if coder.cfg.activation == "jumprelu":
            coder.threshold.clamp_(min=0.0)  # circuit-tracer's JumpReLU has no ReLU (module docstring)
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name, tensors in circuit_tracer_tensors(coder).items():
            write_safetensors(partial / name, {key: t.float() for key, t in tensors.items()})
        config = {
            "model_kind": "cross_layer_transcoder",
            "feature_input_hook": bundle.hooks[0],
            "feature_output_hook": bundle.hooks[1],
            "model_name": coder.cfg.metadata.model_name or "",
            "scan": scan or Path(clt_dir).resolve().name,
            "activation_function": coder.cfg.activation,
        }
        if report is not None:
            config["converted_from"] = report["reference"]
            write_json(partial / "conversion.json", report)
        (partial / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out, report


def load_exported_clt(export_dir: str | Path) -> Any:
    """Our :class:`~sdl_anchor.integrations.cross_layer_transcoder.CrossLayerTranscoder` from a folder
    :func:`export_clt_circuit_tracer` wrote (the inverse of ``circuit_tracer_tensors``): what circuit-tracer
    loads, in our class, to compare the two."""
    from sdl_anchor.integrations.cross_layer_transcoder import (
        CrossLayerTranscoder,
        CrossLayerTranscoderConfig,
    )
    from sdl_anchor.io import read_safetensors

    export_dir = Path(export_dir)
    n_layers = len(list(export_dir.glob("W_enc_*.safetensors")))
    if n_layers == 0:
        raise FileNotFoundError(f"{export_dir} holds no W_enc_<i>.safetensors; export a CLT there first")
    encoders = [
        read_safetensors(export_dir / f"W_enc_{i}.safetensors", "CLT encoder") for i in range(n_layers)
    ]
    decoders = [
        read_safetensors(export_dir / f"W_dec_{i}.safetensors", "CLT decoder") for i in range(n_layers)
    ]
    d_sae, d_model = encoders[0]["W_enc_0"].shape
    jumprelu = "threshold_0" in encoders[0]
    coder = CrossLayerTranscoder(
        CrossLayerTranscoderConfig(
            d_in=d_model,
            d_sae=d_sae,
            d_out=d_model,
            n_layers=n_layers,
            activation="jumprelu" if jumprelu else "relu",
        )
    )
    state = {
        "W_enc": torch.stack([e[f"W_enc_{i}"].T for i, e in enumerate(encoders)]),
        "b_enc": torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(encoders)]),
        "b_dec": torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(encoders)]),
        **{f"W_dec.{i}": d[f"W_dec_{i}"] for i, d in enumerate(decoders)},
    }
    if jumprelu:
        state["threshold"] = torch.stack([e[f"threshold_{i}"] for i, e in enumerate(encoders)])
    coder.load_state_dict(state)
    return coder
