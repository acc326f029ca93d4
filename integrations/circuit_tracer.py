"""Export a transcoder set to circuit-tracer's on-disk format (read from circuit-tracer 0.5.0's own loaders).

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
from sdl_anchor.io import write_safetensors


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


def export_circuit_tracer(set_dir: str | Path, out: str | Path, scan: str | None = None) -> Path:
    """Write ``out/config.yaml`` and ``out/layer_{i}.safetensors`` for the transcoder set saved in
    ``set_dir``; everything is checked first and written to a temporary folder, renamed when complete."""
    transcoder_set = TranscoderSet.load(set_dir)
    check_exportable(transcoder_set)
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
        (partial / "config.yaml").write_text(yaml.safe_dump(lines, sort_keys=False, allow_unicode=True))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out
