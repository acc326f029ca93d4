"""``sdl-anchor bench lrb``: the paper's Table 1 on the Linear Representation Bench.

Trains stock SAELens SAEs (standard = ReLU + L1, topk, batchtopk, jumprelu, matryoshka_batchtopk)
through SAELens's own ``SAETrainer`` on a finite LRB dataset, scores M_GT / M_IP (encoder side,
tau = 0.95) plus decoder-side scores and MCC, and prints them beside the paper's reported numbers.

Presets:
* ``quick``: 2 CPU cores, a few minutes. n=128, d=96 (n/d = 1.33 as in the paper), width 2048 (16 n),
  S=0.99, M=0.1.
* ``paper``: the paper's configuration (n=1000, d=768, width 16,000, S=0.99, M=0.1, N=100,000), for a GPU.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class
from tqdm.auto import tqdm

from sdl_anchor.eval.paper_numbers import PAPER_LABELS, paper_numbers
from sdl_anchor.integrations.training import train_on_bench
from sdl_anchor.io import write_json
from sdl_anchor.lrb.bench import LinearRepresentationBench
from sdl_anchor.metrics import recovery

METHODS = ("standard", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk")


@dataclass(frozen=True)
class LRBPreset:
    """Bench size, training budget and each method's (tuned) hyperparameters."""

    name: str
    n_features: int
    d_in: int
    d_sae: int
    sparsity: float = 0.99
    max_interference: float = 0.1
    n_samples: int = 100_000
    n_steps: int = 2000
    batch_size: int = 1024
    lr: float = 3e-4
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_settings.get(method, {}))


def _settings(k: int, l1: float, l0: float, widths: list[int]) -> dict[str, dict[str, Any]]:
    return {
        "standard": {"l1_coefficient": l1},
        "jumprelu": {"l0_coefficient": l0},
        "topk": {"k": k},
        "batchtopk": {"k": k},
        "matryoshka_batchtopk": {"k": k, "matryoshka_widths": widths},
    }


PRESETS: dict[str, LRBPreset] = {
    "quick": LRBPreset(
        name="quick",
        n_features=128,
        d_in=96,
        d_sae=2048,
        n_steps=2000,
        batch_size=1024,
        lr=3e-4,
        method_settings=_settings(k=2, l1=1.0, l0=1.0, widths=[128, 512, 2048]),
    ),
    "paper": LRBPreset(
        name="paper",
        n_features=1000,
        d_in=768,
        d_sae=16_000,
        n_steps=20_000,
        batch_size=4096,
        lr=3e-4,
        method_settings=_settings(k=10, l1=1.0, l0=1.0, widths=[1000, 4000, 16_000]),
    ),
}


def build_sae(method: str, preset: LRBPreset, d_in: int, device: str) -> Any:
    """A fresh SAELens TrainingSAE of architecture ``method`` with the preset's settings."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    sae_class, config_class = get_sae_training_class(method)
    config = config_class(d_in=d_in, d_sae=preset.d_sae, device=device, **preset.settings_for(method))
    return sae_class(config)


def run_lrb_bench(
    preset: LRBPreset | str = "quick",
    *,
    device: str = "cpu",
    methods: tuple[str, ...] = METHODS,
    interference: tuple[str, ...] = ("bounded",),
    seed: int = 0,
    n_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score every method on every interference mode; return the results dict."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if n_steps is not None:
        preset = replace(preset, n_steps=n_steps)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    rows: list[dict[str, Any]] = []
    benches: dict[str, dict[str, Any]] = {}
    jobs = [(mode, method) for mode in interference for method in methods]
    bar = tqdm(jobs, desc="LRB bench", disable=not progress)
    datasets: dict[str, Any] = {}
    for mode, method in bar:
        if mode not in datasets:
            bench = LinearRepresentationBench(
                kind="sae",
                n_features=preset.n_features,
                d_in=preset.d_in,
                sparsity=preset.sparsity,
                max_interference=preset.max_interference,
                interference=mode,
                seed=seed,
                device=device,
            )
            datasets[mode] = (bench, bench.dataset(preset.n_samples))
            benches[mode] = {
                "generation_seconds": bench.generation_seconds,
                "interference_stats": bench.interference_stats,
            }
        bench, dataset = datasets[mode]
        bar.set_postfix_str(f"{mode}/{method}")
        torch.manual_seed(seed)
        sae = build_sae(method, preset, bench.d_in, device)
        started = time.perf_counter()
        train_on_bench(
            sae,
            bench,
            n_steps=preset.n_steps,
            batch_size=preset.batch_size,
            lr=preset.lr,
            dataset=dataset,
            seed=seed,
            device=device,
            show_progress=False,
        )
        train_seconds = time.perf_counter() - started
        scores = recovery(sae, bench)
        rows.append(_row(method, mode, scores, sae, bench, preset, train_seconds))
    return {
        "rows": rows,
        "config": {
            **{k: v for k, v in asdict(preset).items() if k != "method_settings"},
            "device": device,
            "seed": seed,
            "tau": 0.95,
            "benches": benches,
        },
    }


@torch.no_grad()
def _row(
    method: str,
    mode: str,
    scores: dict[str, float],
    sae: Any,
    bench: LinearRepresentationBench,
    preset: LRBPreset,
    train_seconds: float,
) -> dict[str, Any]:
    sample = bench.sample(4096, torch.Generator(device=bench.device).manual_seed(12345))
    sae.eval()
    acts = sae.encode(sample.x_in)
    recon = sae.decode(acts)
    fvu = float(((recon - sample.x_out) ** 2).sum() / ((sample.x_out - sample.x_out.mean(0)) ** 2).sum())
    paper = paper_numbers(method)
    return {
        "method": method,
        "label": PAPER_LABELS[method],
        "kind": "sae",
        "anchored": False,
        "resampling": "none",
        "interference": mode,
        **{k: float(v) for k, v in scores.items()},
        "l0": float((acts != 0).float().sum(-1).mean()),
        "dead_fraction": float(((acts != 0).sum(0) == 0).float().mean()),
        "fvu": fvu,
        "train_seconds": train_seconds,
        "settings": {
            "lr": preset.lr,
            "n_steps": preset.n_steps,
            "batch_size": preset.batch_size,
            **preset.settings_for(method),
        },
        "paper_M_GT": None if paper is None else paper[0],
        "paper_M_IP": None if paper is None else paper[1],
    }


def format_table(results: dict[str, Any]) -> str:
    """The paper's Table 1 layout: ours beside the paper's reported numbers (clearly labelled)."""
    lines = [
        f"LRB Table 1 (preset {results['config']['name']}; n={results['config']['n_features']}, "
        f"d={results['config']['d_in']}, width={results['config']['d_sae']}; tau=0.95, encoder side)",
        f"{'interference':<12} {'method':<12} {'ours M_GT':>9} {'ours M_IP':>9} | "
        f"{'paper M_GT':>10} {'paper M_IP':>10} | {'dec M_GT':>8} {'MCC':>6} {'L0':>6} {'dead':>6} {'FVU':>7}",
    ]
    for row in results["rows"]:
        paper_gt = "-" if row["paper_M_GT"] is None else f"{100 * row['paper_M_GT']:.1f}%"
        paper_ip = "-" if row["paper_M_IP"] is None else f"{row['paper_M_IP']:.3f}"
        lines.append(
            f"{row['interference']:<12} {row['label']:<12} {100 * row['M_GT']:>8.1f}% {row['M_IP']:>9.3f} | "
            f"{paper_gt:>10} {paper_ip:>10} | {100 * row['M_GT_dec']:>7.1f}% {row['MCC']:>6.3f} "
            f"{row['l0']:>6.2f} {100 * row['dead_fraction']:>5.1f}% {row['fvu']:>7.4f}"
        )
    lines.append("paper = numbers reported in arXiv 2512.05534 Table 1 at n=1000, d=768 (not rerun here)")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of ours vs the paper's M_GT and M_IP per method, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = [f"{r['label']}\n({r['interference']})" for r in rows]
    x = torch.arange(len(rows)).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows)), 4))
    for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
        ours = [r[metric] for r in rows]
        paper = [r[f"paper_{metric}"] if r[f"paper_{metric}"] is not None else 0.0 for r in rows]
        ax.bar(x - 0.2, ours, 0.4, label="ours")
        ax.bar(x + 0.2, paper, 0.4, label="paper (reported)", alpha=0.6)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.suptitle(f"LRB recovery, preset {results['config']['name']}")
    fig.tight_layout()
    from sdl_anchor.io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``results.json`` and ``recovery.png`` into ``out``."""
    return [write_json(out / "results.json", results), plot_results(results, out / "recovery.png")]
