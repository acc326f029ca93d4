"""A transcoder set of L layers against L single-layer runs: model forward passes and wall time.

Both train the same L transcoders (``ln2.hook_normalized -> hook_mlp_out``) on the same tokens of a toy
TransformerLens model. The set reads every layer from one model pass per batch
(:class:`~sdl_anchor.integrations.transcoder_set.TranscoderSetRunner`); the single runs make one pass per
batch each. Both are timed over several rounds (medians), with the noise floor of identical repeated runs
beside them. ``python -m sdl_anchor.eval.transcoder_set_time`` prints both ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from sae_lens import LoggingConfig

SIZES = {
    "n_layers": 4, "d_model": 128, "n_ctx": 64, "d_sae": 512, "k": 16, "training_tokens": 32_768, "repeats": 3,
}  # fmt: skip


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
    """Forward passes and seconds of one set run and of ``n_layers`` single-layer runs, over
    ``sizes["repeats"]`` rounds (default 3; set first in even rounds, single runs first in odd ones).

    ``seconds_ratio`` is the median over rounds of set / single runs within the round; ``noise_floor`` is
    the spread (max - min) of the rounds' single-run times over their median: the same work repeated, so
    how far this machine's noise alone moves a time (a ratio closer to its target than that is not read
    as met or missed)."""
    from sdl_anchor.cli.train import count_forward_passes
    from sdl_anchor.integrations.coder_runner import CoderTrainingRunner
    from sdl_anchor.integrations.transcoder_set import TranscoderSetRunner, layer_hooks
    from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

    repeats = sizes.get("repeats", 3)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    words = [f"w{i}" for i in range(300)]
    corpus = [" ".join(words[i:] + words[:i]) for i in range(0, 300, 7)]
    model = toy_language_model(
        corpus, d_model=sizes["d_model"], n_layers=sizes["n_layers"], n_ctx=sizes["n_ctx"]
    )
    dataset = tokenized_dataset(model, corpus, sizes["n_ctx"])
    passes = count_forward_passes(model)

    def run_set() -> tuple[float, int]:
        passes["count"] = 0
        started = time.perf_counter()
        TranscoderSetRunner(
            _config(sizes), layers="all", override_model=model, override_dataset=dataset
        ).run()
        return time.perf_counter() - started, passes["count"]

    def run_singles() -> tuple[float, int]:
        passes["count"] = 0
        started = time.perf_counter()
        for layer in range(sizes["n_layers"]):
            config = _config(sizes, layer_hooks(layer))
            CoderTrainingRunner(config, override_model=model, override_dataset=dataset).run()
        return time.perf_counter() - started, passes["count"]

    set_times, single_times = [], []
    for round_index in range(repeats):
        if round_index % 2 == 0:
            (set_seconds, set_passes), (single_seconds, single_passes) = run_set(), run_singles()
        else:
            (single_seconds, single_passes), (set_seconds, set_passes) = run_singles(), run_set()
        set_times.append(set_seconds)
        single_times.append(single_seconds)
    model.reset_hooks(including_permanent=True)
    ratios = [a / b for a, b in zip(set_times, single_times, strict=True)]
    single_median = statistics.median(single_times)
    return {
        "n_layers": sizes["n_layers"],
        "repeats": repeats,
        "set_seconds": statistics.median(set_times),
        "single_runs_seconds": single_median,
        "set_seconds_rounds": set_times,
        "single_runs_seconds_rounds": single_times,
        "seconds_ratio_rounds": ratios,
        "noise_floor": (max(single_times) - min(single_times)) / single_median,
        "set_forward_passes": set_passes,
        "single_runs_forward_passes": single_passes,
        "passes_ratio": set_passes / single_passes,
        "seconds_ratio": statistics.median(ratios),
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
        f"ratios {row['seconds_ratio']:.3f} (time, median of {row['repeats']} rounds: "
        f"{', '.join(f'{r:.3f}' for r in row['seconds_ratio_rounds'])}; noise floor {row['noise_floor']:.3f}), "
        f"{row['passes_ratio']:.3f} (passes)"
    )


if __name__ == "__main__":
    main()
