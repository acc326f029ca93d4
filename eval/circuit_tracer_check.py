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

``--kind clt`` checks a cross-layer transcoder the same way (issue 36): ``sdl-anchor train --architecture
batchtopk_clt --layers all ...``; ``sdl-anchor export circuit-tracer CLT --out EXPORT --model gpt2
--held-out-dataset HELD_OUT`` (per-latent JumpReLU thresholds fitted to the BatchTopK decisions on other text,
:mod:`sdl_anchor.integrations.jumprelu_conversion`); our logits with every MLP output replaced by the exported
CLT's reconstruction (each layer's latents from that pass's input at that layer), against circuit-tracer's
``CrossLayerTranscoder`` doing the same and its attribution graph. The record adds the conversion's report
and the logits' distance from the CLT as training saved it (SAELens's one threshold per layer).
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

OUR_CLT_LOGITS = """
import json, sys, torch
from safetensors.torch import save_file
from transformer_lens import HookedTransformer
from sdl_anchor.integrations.circuit_tracer import load_exported_clt
from sdl_anchor.integrations.clt_training import CLTBundle, _splice_hooks
model = HookedTransformer.from_pretrained_no_processing("gpt2", device="cpu")
tokens = torch.tensor(json.loads(open(sys.argv[3]).read()))[None]
trained = CLTBundle.load(sys.argv[1])
exported = load_exported_clt(sys.argv[2])
def spliced(coder):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=_splice_hooks(coder, trained.layers, trained.hooks,
                                                                    range(len(trained.layers))))
save_file({"logits": spliced(exported)[0].contiguous(), "original": model(tokens)[0].contiguous(),
           "trained": spliced(trained.coder)[0].contiguous()}, sys.argv[4])
"""


CLT_ARCHITECTURES = ("batchtopk_clt", "topk_clt", "jumprelu_clt", "standard_clt")


def check(
    circuit_tracer_python: str,
    work: Path,
    tolerance: float = 1e-3,
    kind: str = "transcoder_set",
    clt_architecture: str = "batchtopk_clt",
) -> dict[str, Any]:
    """Run the check of the module docstring for a transcoder set (``kind="transcoder_set"``) or a
    cross-layer transcoder (``kind="clt"``, trained as ``clt_architecture``; TopK and BatchTopK ones are
    converted on export); return its record (raises RuntimeError if a step fails)."""
    if kind not in ("transcoder_set", "clt"):
        raise ValueError(f"kind must be 'transcoder_set' or 'clt', got {kind!r}")
    if clt_architecture not in CLT_ARCHITECTURES:
        raise ValueError(f"clt_architecture must be one of {CLT_ARCHITECTURES}, got {clt_architecture!r}")
    from safetensors.torch import load_file

    started = time.perf_counter()
    hub = offline_hub(work / "hf_home", planted=False, n_layers=2, words_per_letter=20)
    env = _env(hub)
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    words = hub.words
    (corpus / "text.txt").write_text("\n".join(" ".join(words[i : i + 16]) for i in range(0, len(words), 3)))
    d = str(hub.d_model)
    architecture, trained, d_sae, tokens_trained = (
        ("batchtopk_transcoder", work / "run" / "set", "128", "8192")
        if kind == "transcoder_set"
        else (clt_architecture, work / "run" / "clt", "64", "4096")
    )
    _run(
        [sys.executable, "-m", "sdl_anchor", "train", "--out", str(work / "run"), "--layers", "all",
         "--architecture", architecture, "--model_name", "gpt2", "--dataset_path", str(corpus),
         "--d_in", d, "--d_out", d, "--d_sae", d_sae, *(["--k", "8"] if "topk" in architecture else []),
         "--context_size", "16", "--training_tokens", tokens_trained, "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "16",
         "--n_batches_in_buffer", "32", "--log_to_wandb", "False", "--overwrite"],
        env, "sdl-anchor train --layers all",
    )  # fmt: skip
    export = work / "export"
    held_out = []
    if kind == "clt" and "topk" in clt_architecture:  # other text than training's: the words in another order
        shuffled = [words[(7 * i + 3) % len(words)] for i in range(len(words))]
        (work / "held_out").mkdir(exist_ok=True)
        (work / "held_out" / "text.txt").write_text(
            "\n".join(" ".join(shuffled[i : i + 16]) for i in range(0, len(shuffled), 2)) * 4
        )
        held_out = ["--model", "gpt2", "--held-out-dataset", str(work / "held_out"),
                    "--held-out-tokens", "2048"]  # fmt: skip
    exported = _run(
        [sys.executable, "-m", "sdl_anchor", "export", "circuit-tracer", str(trained), "--out",
         str(export), "--overwrite", *held_out],
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
    script = (
        [OUR_LOGITS, str(trained)]
        if kind == "transcoder_set"
        else [OUR_CLT_LOGITS, str(trained), str(export)]
    )
    _run([sys.executable, "-c", *script, str(tokens), str(ours)], env, "our logits")
    summary = json.loads(
        _run([circuit_tracer_python, str(HERE / "circuit_tracer_runner.py"), str(export), str(tokens), str(work / "ct")],
             env, "circuit-tracer").strip().splitlines()[-1]
    )  # fmt: skip
    our = load_file(str(ours))
    our_logits, original = our["logits"], our["original"]
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
        "kind": kind,
        "model": f"gpt2-shaped, {hub.d_model} wide, 2 layers, random weights (offline hub cache)",
    }
    if kind == "clt":
        # the conversion's effect: the exported CLT (per-latent thresholds) against the CLT as training saved it
        # (SAELens's one threshold per layer), both spliced
        record["max_abs_logit_difference_from_the_saved_clt"] = float(
            (our_logits - our["trained"]).abs().max()
        )
        record["architecture"] = clt_architecture
        if (export / "conversion.json").exists():
            record["conversion"] = json.loads((export / "conversion.json").read_text())
        record["export_output"] = [line for line in exported.splitlines() if not line.startswith("{")]
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
    parser.add_argument(
        "--kind", choices=("transcoder_set", "clt"), default="transcoder_set",
        help="check a transcoder set (batchtopk_transcoder) or a cross-layer transcoder (--clt-architecture)",
    )  # fmt: skip
    parser.add_argument("--clt-architecture", choices=CLT_ARCHITECTURES, default="batchtopk_clt")
    args = parser.parse_args(argv)
    if not Path(args.circuit_tracer_python).exists():
        print(f"--circuit-tracer-python {args.circuit_tracer_python} does not exist", file=sys.stderr)
        return 2
    if args.work is not None:
        record = check(
            args.circuit_tracer_python, args.work, args.tolerance, args.kind, args.clt_architecture
        )
    else:
        with tempfile.TemporaryDirectory(prefix="circuit_tracer_check_") as work:
            record = check(
                args.circuit_tracer_python, Path(work), args.tolerance, args.kind, args.clt_architecture
            )
    print(json.dumps(record, indent=2))
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
