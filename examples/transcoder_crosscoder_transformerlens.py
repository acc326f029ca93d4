"""A TopK transcoder and a TopK crosscoder on TransformerLens hooks, spliced back into the model.

1. Train ``topk_transcoder`` on ``blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out`` (it learns to stand
   in for the MLP) and ``topk_crosscoder`` on ``hook_resid_post`` of every layer, with
   ``CoderTrainingRunner`` (SAELens's runner on its multi-hook ActivationsStore).
2. Splice each back into the model (``evaluate_spliced``): the transcoder replaces the MLP output, the
   crosscoder each residual stream, and report the CE loss recovered, explained variance (per source for
   the crosscoder), L0 and dead latents in SAELens's metric names.
3. Reload the saved coders with ``SAE.load_from_disk`` and check they splice back identically.

By default this trains a tiny model on a toy corpus, offline, and runs on CPU in well under two minutes.
On a GPU with a real model (online):

    python examples/transcoder_crosscoder_transformerlens.py --model gpt2 --layer 6 --crosscoder-layers 5,6,7 \\
        --dataset monology/pile-uncopyrighted --d-sae 16384 --k 32 --training-tokens 50000000 --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_lens import SAE, LoggingConfig

import sdl_anchor as sa
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig, CoderTrainingRunner
from sdl_anchor.integrations.splice import evaluate_spliced
from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

TOY_CORPUS = [
    f"the {animal} saw a {colour} {thing} and the {number} {animal} ran"
    for animal in ("cat", "dog", "cow", "bird")
    for colour in ("red", "blue", "green")
    for thing in ("ball", "box")
    for number in ("one", "two")
] * 4


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="TransformerLens model name (default: a tiny offline toy)"
    )
    parser.add_argument("--dataset", default=None, help="HF dataset path (with --model)")
    parser.add_argument("--layer", type=int, default=0, help="the transcoder's MLP layer")
    parser.add_argument("--crosscoder-layers", default=None, help="comma-separated layers (default: all)")
    parser.add_argument("--d-sae", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--training-tokens", type=int, default=65_536)
    parser.add_argument("--context-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/coders-example"))
    args = parser.parse_args(argv)

    if args.model is None:
        model = toy_language_model(TOY_CORPUS, n_ctx=args.context_size, train_steps=300, device=args.device)
        dataset = tokenized_dataset(model, TOY_CORPUS, args.context_size)
    else:
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(args.model, device=args.device)
        dataset = None
    d_model = model.cfg.d_model
    layers = (
        [int(layer) for layer in args.crosscoder_layers.split(",")]
        if args.crosscoder_layers
        else list(range(model.cfg.n_layers))
    )
    coders = {
        "transcoder": (
            sa.TopKTranscoderTrainingSAEConfig(d_in=d_model, d_out=d_model, d_sae=args.d_sae, k=args.k),
            [f"blocks.{args.layer}.ln2.hook_normalized", f"blocks.{args.layer}.hook_mlp_out"],
        ),
        "crosscoder": (
            sa.TopKCrosscoderTrainingSAEConfig(
                d_in=len(layers) * d_model, n_sources=len(layers), d_sae=args.d_sae, k=args.k
            ),
            [f"blocks.{layer}.hook_resid_post" for layer in layers],
        ),
    }
    results: dict[str, Any] = {}
    for kind, (coder_config, hook_names) in coders.items():
        config = CoderRunnerConfig(
            sae=coder_config,
            hook_names=hook_names,
            model_name=args.model or "toy",
            dataset_path=args.dataset or "",
            is_dataset_tokenized=args.model is None,
            context_size=args.context_size,
            training_tokens=args.training_tokens,
            train_batch_size_tokens=512,
            store_batch_size_prompts=16,
            n_batches_in_buffer=64,
            lr=3e-3 if args.model is None else 3e-4,
            device=args.device,
            logger=LoggingConfig(log_to_wandb=False),
            checkpoint_path=None,
            output_path=str(args.out / kind),
            verbose=False,
        )
        runner = CoderTrainingRunner(
            config, override_model=model if args.model is None else None, override_dataset=dataset
        )
        coder = runner.run()
        tokens = runner.activations_store.get_batch_tokens(16)  # held-out contexts from the same dataset
        metrics = evaluate_spliced(coder, runner.model, tokens)
        reloaded = SAE.load_from_disk(str(args.out / kind), device=args.device)
        again = evaluate_spliced(reloaded, runner.model, tokens)
        results[kind] = {"architecture": reloaded.cfg.architecture(), "hook_names": hook_names, **metrics}
        print(
            f"{kind}: {' -> '.join(hook_names)}  saved as {reloaded.cfg.architecture()} in {args.out / kind}"
        )
        print(json.dumps(metrics, indent=2))
        print(
            "reloaded CE loss recovered: "
            f"{again['model_performance_preservation']['ce_loss_score']:.4f} "
            f"(trained: {metrics['model_performance_preservation']['ce_loss_score']:.4f})"
        )
    return results


if __name__ == "__main__":
    main()
