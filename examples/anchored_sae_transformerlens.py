"""Anchored TopK SAE on a TransformerLens model, with class-mean anchors from labelled prompts.

1. Run labelled prompts (animals, colours, numbers) through the model and take the centred class means
   at the hook as anchors (``sdl_anchor.integrations.prompt_anchors``); save them as safetensors.
2. Train ``anchored_topk`` on that hook with SAELens's own ``LanguageModelSAETrainingRunner``; the
   config is a plain ``LanguageModelSAERunnerConfig`` whose ``sae`` is ``AnchoredTopKTrainingSAEConfig``.
3. The saved SAE is a stock SAELens ``topk`` SAE: ``SAE.load_from_disk(out / "sae")`` needs no sdl_anchor.

By default this builds a tiny random model with a word-level tokenizer, offline, and runs on CPU in well
under two minutes. On a GPU with a real model (online):

    python examples/anchored_sae_transformerlens.py --model gpt2 --hook blocks.6.hook_resid_post \\
        --dataset monology/pile-uncopyrighted --d-sae 16384 --k 64 --training-tokens 50000000 --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

import sdl_anchor as sa
from sdl_anchor.integrations.prompt_anchors import class_mean_anchors_from_prompts
from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

PROMPTS = {
    "animal": ["the cat sat", "a dog ran", "the horse ate", "a bird sang", "the fish swam", "a cow slept"],
    "colour": ["the sky is blue", "grass is green", "the rose is red", "snow is white", "coal is black"],
    "number": ["one two three", "four five six", "seven eight nine", "ten and one", "two and three"],
}
FILLER = "we saw it and then it was there so the day went on as it does".split()


def toy_corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """Sentences mixing the labelled prompts with filler words, for the offline default."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [p for group in PROMPTS.values() for p in group]
    corpus = []
    for _ in range(n_sentences):
        prompt = prompts[int(torch.randint(len(prompts), (1,), generator=generator))]
        filler = [FILLER[int(i)] for i in torch.randint(len(FILLER), (6,), generator=generator)]
        corpus.append(" ".join([*filler[:3], prompt, *filler[3:]]))
    return corpus


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="TransformerLens model name (default: a tiny offline toy)"
    )
    parser.add_argument("--hook", default="blocks.0.hook_resid_post")
    parser.add_argument("--dataset", default=None, help="HF dataset path (with --model)")
    parser.add_argument("--d-sae", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--training-tokens", type=int, default=40_000)
    parser.add_argument("--context-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/anchored-sae-example"))
    args = parser.parse_args(argv)

    if args.model is None:
        corpus = toy_corpus()
        model = toy_language_model(corpus + [p for g in PROMPTS.values() for p in g], device=args.device)
        dataset = tokenized_dataset(model, corpus, args.context_size)
    else:
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(args.model, device=args.device)
        dataset = None

    anchors = class_mean_anchors_from_prompts(model, PROMPTS, args.hook)
    anchor_path = anchors.save(args.out / "anchors.safetensors")
    print(f"{anchors.k} class-mean anchors {anchors.names} at {args.hook} -> {anchor_path}")

    config = LanguageModelSAERunnerConfig(
        sae=sa.AnchoredTopKTrainingSAEConfig(
            d_in=model.cfg.d_model,
            d_sae=args.d_sae,
            k=args.k,
            anchor_path=str(anchor_path),
            anchor_coefficient=0.1,
        ),
        model_name=args.model or "toy",
        hook_name=args.hook,
        dataset_path=args.dataset or "",
        is_dataset_tokenized=args.model is None,
        context_size=args.context_size,
        training_tokens=args.training_tokens,
        train_batch_size_tokens=512,
        store_batch_size_prompts=16,
        n_batches_in_buffer=64,
        n_batches_for_norm_estimate=10,
        device=args.device,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(args.out / "sae"),
        verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(
        config,
        override_model=model if args.model is None else None,
        override_dataset=dataset,
    )
    trained = runner.run()

    anchor_cosine = float(
        sa.anchoring.mean_anchor_cosine(
            trained.W_enc,
            trained.W_dec,
            anchors.directions_in.to(args.device),
            anchors.directions_out.to(args.device),
        )
    )
    reloaded = SAE.load_from_disk(str(args.out / "sae"), device=args.device)
    print(
        f"trained {trained.cfg.architecture()} -> saved as {reloaded.cfg.architecture()} at {args.out / 'sae'}"
    )
    print(f"mean cosine of the anchored latents with their class-mean anchors: {anchor_cosine:.3f}")
    return {"anchor_cosine": anchor_cosine}


if __name__ == "__main__":
    main()
