"""LRB throughput, measured in one process against SAELens's synthetic data path.

``python -m sdl_anchor.eval.lrb_throughput`` prints:
* samples/s of ``LinearRepresentationBench.stream`` against SAELens's ``ActivationGenerator`` +
  ``FeatureDictionary`` at the same n, d and S (median of repeats after a warm-up), and the ratio;
* wall time of building a feature matrix to M = 0.1 at the sizes asked for.

:func:`measure_feed` compares drawing one LRB batch with the TopK SAE training step that batch feeds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _random_bench(n_features: int, d: int, sparsity: float, device: torch.device) -> Any:
    """An LRB on random unit directions: sampling speed does not depend on the directions' interference,
    so the optimisation is skipped."""
    from sdl_anchor.lrb.bench import LinearRepresentationBench, LRBConfig

    config = LRBConfig(n_features=n_features, d_in=d, sparsity=sparsity, max_interference=0.99)
    directions = torch.nn.functional.normalize(torch.randn(n_features, d, device=device), dim=1)
    return LinearRepresentationBench.from_features(config, directions, device=device)


@torch.no_grad()
def measure_sampling(
    n_features: int = 16_384,
    d: int = 768,
    sparsity: float = 0.99,
    batch_size: int = 4096,
    repeats: int = 5,
    device: str = "cpu",
) -> dict[str, Any]:
    """Samples/s of the LRB stream and of SAELens's generator + dictionary (same n, d, S)."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary

    dev = torch.device(device)
    stream = _random_bench(n_features, d, sparsity, dev).stream(batch_size)
    ours = median_seconds(lambda: next(stream), repeats, dev)

    dictionary = FeatureDictionary(n_features, d, initializer=None, device=dev)
    generator = ActivationGenerator(
        n_features, 1.0 - sparsity, std_firing_magnitudes=1.0, mean_firing_magnitudes=1.0, device=dev
    )
    theirs = median_seconds(lambda: dictionary(generator.sample(batch_size)), repeats, dev)
    return {
        "n_features": n_features,
        "d": d,
        "sparsity": sparsity,
        "batch_size": batch_size,
        "device": str(dev),
        "lrb_seconds": ours,
        "sae_lens_seconds": theirs,
        "lrb_samples_per_s": batch_size / ours,
        "sae_lens_samples_per_s": batch_size / theirs,
        "ratio": theirs / ours,
    }


def measure_feed(
    n_features: int,
    d: int,
    d_sae: int,
    batch_size: int,
    sparsity: float = 0.99,
    steps: int = 5,
    device: str = "cpu",
) -> dict[str, Any]:
    """Seconds to draw one LRB batch (``stream``) against one step of a TopK SAE (k = 32) training on it."""
    from sae_lens.registry import get_sae_training_class

    from sdl_anchor.eval.step_timing import median_step_seconds, trainer_for_timing

    dev = torch.device(device)
    stream = _random_bench(n_features, d, sparsity, dev).stream(batch_size)
    with torch.no_grad():
        generation = median_seconds(lambda: next(stream), steps, dev)
    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=d, d_sae=d_sae, k=32, device=device))
    batches = [next(stream) for _ in range(2)]
    step = median_step_seconds(
        {"step": (trainer_for_timing(sae, batch_size, device), batches)}, steps, device, warm_up=1
    )["step"]
    return {
        "n_features": n_features,
        "d": d,
        "d_sae": d_sae,
        "batch_size": batch_size,
        "generation_seconds": generation,
        "step_seconds": step,
        "ratio": generation / step,
    }


def measure_feature_matrix(
    n_features: int, d: int = 768, max_interference: float = 0.1, device: str = "cpu"
) -> dict[str, Any]:
    """Wall time to build ``n_features`` directions in ``R^d`` to max |cos| <= M."""
    from sdl_anchor.lrb.feature_matrix import make_feature_matrix

    started = time.perf_counter()
    matrix = make_feature_matrix(n_features, d, max_interference, "bounded", device=device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return {
        "n_features": n_features,
        "d": d,
        "max_interference": max_interference,
        "seconds": time.perf_counter() - started,
        "steps": matrix.steps,
        "achieved_max_abs_cos": matrix.max_abs_cos,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-features", type=int, nargs="+", default=[1000, 16_384])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--skip-feature-matrix", action="store_true")
    args = parser.parse_args(argv)
    for n in args.n_features:
        s = measure_sampling(n, args.d, batch_size=args.batch_size, device=args.device)
        print(
            f"sampling n={n} d={args.d} S=0.99 batch={args.batch_size}: LRB {s['lrb_samples_per_s']:,.0f}/s, "
            f"SAELens {s['sae_lens_samples_per_s']:,.0f}/s, ratio {s['ratio']:.1f}x"
        )
    if not args.skip_feature_matrix:
        for n in args.n_features:
            f = measure_feature_matrix(n, args.d, device=args.device)
            print(
                f"feature matrix n={n} d={args.d} M=0.1: {f['seconds']:.2f} s, {f['steps']} steps, "
                f"max |cos| {f['achieved_max_abs_cos']:.4f}"
            )


if __name__ == "__main__":
    main()
