"""Theory-guided dead-latent resampling on the Linear Representation Bench, with recovery over training.

A TopK SAE 16 times wider than the bench's feature count, started from SAELens's normal initialisation,
falls into the paper's spurious minimum: most latents die and the live ones are polysemantic. This trains
the same SAE (same seed, same data) with each resampling strategy and records the bench's recovery
scores every few steps (``train_on_bench(..., recovery_every=N)``):

- ``none``: SAELens as it is;
- ``anthropic``: Bricken et al.'s resampling of dead latents onto badly reconstructed inputs;
- ``theory``: sdl-anchor's split of polysemantic live latents into dead ones (the paper's Theorem 3.5).

It prints the final scores, with ``live M_GT`` counting only latents that fire, since a dead latent whose
encoder was planted on a feature raises M_GT without recovering anything. It writes
``recovery_over_training.png`` (live M_GT and M_GT against the step, resampling events marked) and
``results.json`` to ``--out``.

The default is the bench's ``small`` preset (n=128 features in d=96, width 2048, 1000 steps) on CPU,
about 1.5 minutes. The paper's size on a GPU:

    python examples/resampling_on_the_lrb.py --preset paper --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import sdl_anchor as sa
from sdl_anchor.eval.lrb_table import PRESETS, build_bench, build_sae

STRATEGIES = ("none", "anthropic", "theory")


def train(strategy: str, preset: Any, bench: Any, dataset: Any, steps: int, device: str) -> dict[str, Any]:
    """One TopK SAE trained with ``strategy``; its recovery curve, events and final scores."""
    torch.manual_seed(0)
    sae = build_sae("topk", preset, bench, device, "plain")
    resampling = None if strategy == "none" else sa.ResamplingConfig(strategy=strategy)
    sa.train_on_bench(
        sae,
        bench,
        n_steps=steps,
        batch_size=preset.batch_size,
        lr=preset.lr_for("topk"),
        dataset=dataset,
        device=device,
        show_progress=False,
        resampling=resampling,
        recovery_every=max(1, steps // 20),
    )
    events = sae.cfg.metadata.resampling["events"] if resampling is not None else []
    return {
        "curve": sae.cfg.metadata.recovery_curve,
        "events": [e["resample/step"] for e in events],
        "latents_resampled": sum(e["resample/latents"] for e in events),
        **sa.recovery(sae, bench, mcc=False),
        **sa.live_recovery(sae, bench),
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for (strategy, result), colour in zip(results.items(), ("tab:gray", "tab:blue", "tab:red"), strict=False):
        steps = [point["step"] for point in result["curve"]]
        for axis, key in zip(axes, ("M_GT_live", "M_GT"), strict=True):
            axis.plot(steps, [point[key] for point in result["curve"]], color=colour, label=strategy)
            for event in result["events"]:
                axis.axvline(event, color=colour, linestyle=":", linewidth=0.8)
    titles = ("live M_GT (latents that fire)", "M_GT (every latent, dead ones too)")
    for axis, key in zip(axes, titles, strict=True):
        axis.set_xlabel("training step")
        axis.set_title(key)
        axis.set_ylim(0, 1.02)
    axes[0].legend(title="resampling")
    figure.suptitle("TopK SAE on the LRB: recovery over training (dotted: resampling events)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="bench and SAE size")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated, of " + ", ".join(STRATEGIES)
    )
    parser.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/resampling-example"))
    args = parser.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    preset = PRESETS[args.preset]
    steps = args.steps or preset.n_steps
    bench = build_bench(preset, "sae", "bounded", 0, args.device)
    dataset = bench.dataset(preset.n_samples)
    results = {s: train(s, preset, bench, dataset, steps, args.device) for s in strategies}
    print(f"TopK SAE, {bench.n_features} features in d={bench.d_in}, width {preset.d_sae}, {steps} steps")
    print(f"{'resampling':<11} {'M_GT':>6} {'live M_GT':>10} {'M_IP':>6} {'live latents':>13} {'events':>7}")
    for strategy, r in results.items():
        print(
            f"{strategy:<11} {r['M_GT']:>6.1%} {r['M_GT_live']:>10.1%} {r['M_IP']:>6.3f} "
            f"{r['n_live']:>13} {len(r['events']):>7}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    figure = plot(results, args.out / "recovery_over_training.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {figure}\nwrote {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
