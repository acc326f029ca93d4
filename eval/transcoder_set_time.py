"""A transcoder set of L layers against L single-layer runs: model forward passes and wall time.

Both train the same L transcoders (``ln2.hook_normalized -> hook_mlp_out``) on the same tokens of a toy
TransformerLens model. The set reads every layer from one model pass per batch
(:class:`~sdl_anchor.integrations.transcoder_set.TranscoderSetRunner`); the single runs make one pass per
batch each. ``python -m sdl_anchor.eval.transcoder_set_time`` prints both ratios.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sae_lens import LoggingConfig

SIZES = {"n_layers": 4, "d_model": 128, "n_ctx": 64, "d_sae": 512, "k": 16, "training_tokens": 32_768}


def _config(sizes: dict[str, Any], hook_names: list[str] | None = None) -> Any:
    import sdl_anchor as sa
    from sdl_anchor.integrations.coder_runner import CoderRunnerConfig

    d = sizes["d_model"]
    return CoderRunnerConfig(
        sae=sa.TopKTranscoderTrainingSAEConfig(d_in=d, d_out=d, d_sae=sizes["d_sae"], k=sizes["k"]),
        hook_names=hook_names or [],
        model_name="toy",
        dataset_path="unused",
        context_size=sizes["n_ctx"],
        training_tokens=sizes["training_tokens"],
        train_batch_size_tokens=1024,
        store_batch_size_prompts=16,
        n_batches_in_buffer=32,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None,  # timing only: SAELens's default would save into ./output
    )


def measure_set_against_single_runs(sizes: dict[str, Any]) -> dict[str, Any]:
    """Forward passes and seconds of one set run and of ``n_layers`` single-layer runs."""
    from sdl_anchor.cli.train import count_forward_passes
    from sdl_anchor.integrations.coder_runner import CoderTrainingRunner
    from sdl_anchor.integrations.transcoder_set import TranscoderSetRunner, layer_hooks
    from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

    words = [f"w{i}" for i in range(300)]
    corpus = [" ".join(words[i:] + words[:i]) for i in range(0, 300, 7)]
    model = toy_language_model(
        corpus, d_model=sizes["d_model"], n_layers=sizes["n_layers"], n_ctx=sizes["n_ctx"]
    )
    dataset = tokenized_dataset(model, corpus, sizes["n_ctx"])
    passes = count_forward_passes(model)
    started = time.perf_counter()
    TranscoderSetRunner(_config(sizes), layers="all", override_model=model, override_dataset=dataset).run()
    set_seconds, set_passes = time.perf_counter() - started, passes["count"]
    passes["count"] = 0
    started = time.perf_counter()
    for layer in range(sizes["n_layers"]):
        config = _config(sizes, layer_hooks(layer))
        CoderTrainingRunner(config, override_model=model, override_dataset=dataset).run()
    single_seconds, single_passes = time.perf_counter() - started, passes["count"]
    model.reset_hooks(including_permanent=True)
    return {
        "n_layers": sizes["n_layers"],
        "set_seconds": set_seconds,
        "single_runs_seconds": single_seconds,
        "set_forward_passes": set_passes,
        "single_runs_forward_passes": single_passes,
        "passes_ratio": set_passes / single_passes,
        "seconds_ratio": set_seconds / single_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    row = measure_set_against_single_runs(SIZES)
    print(
        f"{row['n_layers']} layers: set {row['set_seconds']:.1f} s / {row['set_forward_passes']} model passes; "
        f"single runs {row['single_runs_seconds']:.1f} s / {row['single_runs_forward_passes']} passes; "
        f"ratios {row['seconds_ratio']:.3f} (time), {row['passes_ratio']:.3f} (passes)"
    )


if __name__ == "__main__":
    main()
