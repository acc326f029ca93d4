"""A transcoder set trained here, exported, loaded and traced by circuit-tracer in its own environment.

circuit-tracer pins ``transformers<=4.57.3``, so it lives in a virtual environment of its own::

    python -m venv ct && ct/bin/pip install torch==2.13.0 circuit-tracer==0.5.0
    python -m sdl_anchor.eval.circuit_tracer_check --circuit-tracer-python ct/bin/python

Offline, against a Hugging Face hub cache holding a tiny random-weight ``gpt2`` (2 layers;
:mod:`sdl_anchor.testing.hub_cache`; TransformerLens loads it by name in both environments), it runs exactly
the commands a user types:

1. ``sdl-anchor train --layers all --architecture batchtopk_transcoder --model_name gpt2 ...``: a set, one
   transcoder per layer (``ln2.hook_normalized -> hook_mlp_out``), saved as SAELens JumpReLU transcoders;
2. ``sdl-anchor export circuit-tracer SET --out EXPORT``;
3. here: the model's logits with every MLP replaced by our transcoder of that layer;
4. in circuit-tracer's environment (:mod:`sdl_anchor.eval.circuit_tracer_runner`):
   ``ReplacementModel.from_pretrained("gpt2", EXPORT)``, the same logits with circuit-tracer's own transcoders,
   and an attribution graph with ``circuit_tracer.attribute``.

It passes when circuit-tracer loads the set, its replacement logits match ours (max |difference| under
``--tolerance``) and the graph has feature nodes. Writes ``check.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sdl_anchor.testing.hub_cache import offline_hub

HERE = Path(__file__).resolve().parent


def _env(hub: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    return {**env, **hub.env, "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def _run(command: list[str], env: dict[str, str], what: str, timeout: int = 600) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


OUR_LOGITS = """
import json, sys, torch
from safetensors.torch import save_file
from transformer_lens import HookedTransformer
from sdl_anchor.integrations.transcoder_set import TranscoderSet, spliced_logits
model = HookedTransformer.from_pretrained_no_processing("gpt2", device="cpu")
tokens = torch.tensor(json.loads(open(sys.argv[2]).read()))[None]
logits = spliced_logits(TranscoderSet.load(sys.argv[1]), model, tokens)
original = model(tokens)
save_file({"logits": logits[0].contiguous(), "original": original[0].contiguous()}, sys.argv[3])
"""


def check(circuit_tracer_python: str, work: Path, tolerance: float = 1e-3) -> dict[str, Any]:
    """Run the check of the module docstring; return its record (raises RuntimeError if a step fails)."""
    from safetensors.torch import load_file

    started = time.perf_counter()
    hub = offline_hub(work / "hf_home", planted=False, n_layers=2, words_per_letter=20)
    env = _env(hub)
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    words = hub.words
    (corpus / "text.txt").write_text("\n".join(" ".join(words[i : i + 16]) for i in range(0, len(words), 3)))
    d = str(hub.d_model)
    _run(
        [sys.executable, "-m", "sdl_anchor", "train", "--out", str(work / "run"), "--layers", "all",
         "--architecture", "batchtopk_transcoder", "--model_name", "gpt2", "--dataset_path", str(corpus),
         "--d_in", d, "--d_out", d, "--d_sae", "128", "--k", "8", "--context_size", "16", "--training_tokens",
         "8192", "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "16", "--n_batches_in_buffer",
         "32", "--log_to_wandb", "False", "--overwrite"],
        env, "sdl-anchor train --layers all",
    )  # fmt: skip
    export = work / "export"
    _run(
        [sys.executable, "-m", "sdl_anchor", "export", "circuit-tracer", str(work / "run" / "set"), "--out",
         str(export), "--overwrite"],
        env, "sdl-anchor export circuit-tracer",
    )  # fmt: skip
    tokens = work / "tokens.json"
    vocab = json.loads(
        next((hub.root / "hub" / "models--gpt2" / "snapshots").iterdir())
        .joinpath("tokenizer.json")
        .read_text()
    )["model"]["vocab"]
    tokens.write_text(json.dumps([vocab["<bos>"], *(vocab[w] for w in words[:12])]))
    ours = work / "our_logits.safetensors"
    _run(
        [sys.executable, "-c", OUR_LOGITS, str(work / "run" / "set"), str(tokens), str(ours)],
        env,
        "our logits",
    )
    summary = json.loads(
        _run([circuit_tracer_python, str(HERE / "circuit_tracer_runner.py"), str(export), str(tokens), str(work / "ct")],
             env, "circuit-tracer").strip().splitlines()[-1]
    )  # fmt: skip
    our_logits, original = (load_file(str(ours))[key] for key in ("logits", "original"))
    their_logits = load_file(str(work / "ct" / "replacement_logits.safetensors"))["logits"]
    difference = float((our_logits - their_logits).abs().max())
    scale = float(our_logits.abs().max())
    record = {
        **summary,
        "max_abs_logit_difference": difference,
        "max_abs_logit": scale,
        # the splice matters: without it the logits are the model's own, far from both
        "max_abs_difference_from_the_model_without_transcoders": float((our_logits - original).abs().max()),
        "tolerance": tolerance,
        "passed": difference <= tolerance * max(1.0, scale)
        and summary["active_features"] > 0
        and float((our_logits - original).abs().max()) > 10 * difference,
        "seconds": time.perf_counter() - started,
        "model": f"gpt2-shaped, {hub.d_model} wide, 2 layers, random weights (offline hub cache)",
    }
    (work / "check.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--circuit-tracer-python", required=True, help="python of a venv with circuit-tracer")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="working folder, kept (default: a temporary one, removed at the end)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| / max |logit|")
    args = parser.parse_args(argv)
    if not Path(args.circuit_tracer_python).exists():
        print(f"--circuit-tracer-python {args.circuit_tracer_python} does not exist", file=sys.stderr)
        return 2
    if args.work is not None:
        record = check(args.circuit_tracer_python, args.work, args.tolerance)
    else:
        with tempfile.TemporaryDirectory(prefix="circuit_tracer_check_") as work:
            record = check(args.circuit_tracer_python, Path(work), args.tolerance)
    print(json.dumps(record, indent=2))
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
