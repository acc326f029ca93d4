"""``sdl-anchor bench lrb``: the paper's Table 1 on the Linear Representation Bench.

Trains SAELens SAEs (standard = ReLU + L1, topk, batchtopk, jumprelu, matryoshka_batchtopk), and our
transcoders and crosscoders (TopK by default, ``LRBPreset.coder_activation``) on the LRB's transcoder and
crosscoder kinds (``d_out = d_in``; ``n_sources`` blocks), through SAELens's ``SAETrainer`` (extended so a
batch can carry a target) on a finite LRB dataset in three variants:

* ``plain``: the stock architecture;
* ``init_only``: the anchored architecture with ``anchor_coefficient = 0``, i.e. the first k latents
  start at k ground-truth features (SAELens's ``init_sae_to_match_feature_dict`` idea) and nothing holds
  them there;
* ``anchored``: the anchor loss (paper section 4) with ``anchor_coefficient = lambda``.

Every variant is scored on the same non-anchor features (M_GT / M_IP on the encoder side, tau = 0.95;
decoder-side scores and MCC too) and printed beside the paper's reported numbers. ``resampling`` adds a
dead-latent resampling axis (``none``, ``anthropic``, ``theory``; :mod:`sdl_anchor.resampling`) on top of
each stock architecture. Rows also carry ``M_GT_live`` / ``M_IP_live``: the same scores over the latents
that fire on fresh samples, since resampling leaves dead latents whose encoders sit on features.

Presets:
* ``quick``: 2 CPU cores, a few minutes. n=128, d=96 (n/d = 1.33 as in the paper), width 2048 (16 n),
  S=0.99, M=0.1, 13 anchors (10% of the features, as the paper's 100 of 1000).
* ``paper``: the paper's configuration (n=1000, d=768, width 16,000, S=0.99, M=0.1, N=100,000,
  100 anchors, lambda = 0.1), for a GPU.
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
from sdl_anchor.integrations.anchored import DEFAULT_ANCHOR_LOSS
from sdl_anchor.integrations.training import train_on_bench
from sdl_anchor.io import atomic_write, write_json
from sdl_anchor.lrb.bench import LinearRepresentationBench
from sdl_anchor.metrics import live_recovery, recovery
from sdl_anchor.resampling import ResamplingConfig

METHODS = ("standard", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk", "transcoder", "crosscoder")
# the LRB kind each method trains on (SAE methods: "sae")
CODER_KINDS = {"transcoder": "transcoder", "crosscoder": "crosscoder"}
VARIANTS = ("plain", "init_only", "anchored")
RESAMPLING = ("none", "anthropic", "theory")


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
    n_anchors: int = 100
    anchor_coefficient: float = 0.1
    anchor_loss: str = DEFAULT_ANCHOR_LOSS
    coder_activation: str = "topk"  # the transcoder's and crosscoder's activation
    n_sources: int = 2  # the crosscoder's sources
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings_for(self, method: str) -> dict[str, Any]:
        """The SAELens config fields for ``method`` (its learning rate excluded)."""
        settings = dict(self.method_settings.get(method, {}))
        settings.pop("lr", None)
        return settings

    def lr_for(self, method: str) -> float:
        return float(self.method_settings.get(method, {}).get("lr", self.lr))

    def anchor_settings(self, variant: str) -> dict[str, Any]:
        """The anchoring config fields of ``variant`` (none for ``plain``; lambda 0 for ``init_only``)."""
        if variant == "plain":
            return {}
        return {
            "anchor_coefficient": self.anchor_coefficient if variant == "anchored" else 0.0,
            "anchor_loss": self.anchor_loss,
            "anchor_init": True,
        }


def _settings(
    k: int, l1: float, l0: float, widths: list[int], jumprelu_lr: float
) -> dict[str, dict[str, Any]]:
    return {
        "standard": {"l1_coefficient": l1},
        "jumprelu": {"l0_coefficient": l0, "lr": jumprelu_lr},
        "topk": {"k": k},
        "batchtopk": {"k": k},
        "matryoshka_batchtopk": {"k": k, "matryoshka_widths": widths},
        "transcoder": {"k": k},
        "crosscoder": {"k": k},
    }


PRESETS: dict[str, LRBPreset] = {
    "quick": LRBPreset(
        name="quick",
        n_features=128,
        d_in=96,
        d_sae=2048,
        n_steps=1000,
        batch_size=512,
        lr=3e-4,
        n_anchors=13,
        # JumpReLU's thresholds need lr 1e-3 to converge in 1000 steps (decoder M_GT 100% vs 5% at 3e-4)
        method_settings=_settings(k=2, l1=1.0, l0=1.0, widths=[128, 512, 2048], jumprelu_lr=1e-3),
    ),
    "paper": LRBPreset(
        name="paper",
        n_features=1000,
        d_in=768,
        d_sae=16_000,
        n_steps=20_000,
        batch_size=4096,
        lr=3e-4,
        n_anchors=100,
        method_settings=_settings(k=10, l1=1.0, l0=1.0, widths=[1000, 4000, 16_000], jumprelu_lr=3e-4),
    ),
}


def architecture_for(method: str, variant: str, preset: LRBPreset) -> str:
    """The registered training architecture a (method, variant) row trains."""
    if method in CODER_KINDS:  # transcoders and crosscoders carry the anchoring fields themselves
        return f"{preset.coder_activation}_{method}"
    return method if variant == "plain" else f"anchored_{method}"


def build_bench(preset: LRBPreset, kind: str, mode: str, seed: int, device: str) -> LinearRepresentationBench:
    """The preset's LRB of ``kind`` ("sae", "transcoder" or "crosscoder") and interference ``mode``."""
    return LinearRepresentationBench(
        kind=kind,
        n_features=preset.n_features,
        d_in=preset.d_in,
        d_out=preset.d_in if kind == "transcoder" else None,
        n_sources=preset.n_sources,
        sparsity=preset.sparsity,
        max_interference=preset.max_interference,
        interference=mode,
        seed=seed,
        device=device,
    )


def build_sae(
    method: str, preset: LRBPreset, bench: LinearRepresentationBench, device: str, variant: str = "plain"
) -> Any:
    """A fresh SAELens TrainingSAE for ``method`` on ``bench`` (anchored for the anchoring variants)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    settings = {**preset.settings_for(method), **preset.anchor_settings(variant)}
    if bench.kind == "transcoder":
        settings["d_out"] = bench.d_out
    if bench.kind == "crosscoder":
        settings["n_sources"] = bench.config.n_sources
    sae_class, config_class = get_sae_training_class(architecture_for(method, variant, preset))
    return sae_class(config_class(d_in=bench.d_in, d_sae=preset.d_sae, device=device, **settings))


def run_lrb_bench(
    preset: LRBPreset | str = "quick",
    *,
    device: str = "cpu",
    methods: tuple[str, ...] = METHODS,
    variants: tuple[str, ...] = VARIANTS,
    interference: tuple[str, ...] = ("bounded",),
    resampling: tuple[str, ...] = ("none",),
    seed: int = 0,
    n_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score every (interference, method, resampling, variant); return the results dict."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if n_steps is not None:
        preset = replace(preset, n_steps=n_steps)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    for strategy in resampling:
        if strategy not in RESAMPLING:
            raise ValueError(f"unknown resampling {strategy!r}; choose from {', '.join(RESAMPLING)}")
    rows: list[dict[str, Any]] = []
    benches: dict[str, dict[str, Any]] = {}
    jobs = [
        (mode, method, strategy, variant)
        for mode in interference
        for method in methods
        for strategy in resampling
        for variant in variants
    ]
    bar = tqdm(jobs, desc="LRB bench", disable=not progress)
    prepared: dict[str, Any] = {}
    for mode, method, strategy, variant in bar:
        kind = CODER_KINDS.get(method, "sae")
        if (mode, kind) not in prepared:
            bench = build_bench(preset, kind, mode, seed, device)
            anchors = bench.anchors(preset.n_anchors, seed=seed)
            prepared[mode, kind] = (bench, bench.dataset(preset.n_samples), anchors)
            benches[mode if kind == "sae" else f"{mode}/{kind}"] = {
                "generation_seconds": bench.generation_seconds,
                "interference_stats": bench.interference_stats,
                "anchor_indices": anchors.indices.tolist(),
            }
        bench, dataset, anchors = prepared[mode, kind]
        bar.set_postfix_str(f"{mode}/{method}/{strategy}/{variant}")
        torch.manual_seed(seed)
        sae = build_sae(method, preset, bench, device, variant)
        if variant != "plain":
            sae.set_anchors(anchors)
        started = time.perf_counter()
        train_on_bench(
            sae,
            bench,
            n_steps=preset.n_steps,
            batch_size=preset.batch_size,
            lr=preset.lr_for(method),
            dataset=dataset,
            seed=seed,
            device=device,
            show_progress=False,
            resampling=None if strategy == "none" else ResamplingConfig(strategy=strategy, seed=seed),
        )
        train_seconds = time.perf_counter() - started
        scores = {
            **recovery(sae, bench, exclude=anchors.indices),
            **live_recovery(sae, bench, exclude=anchors.indices),
        }
        rows.append(_row(method, variant, strategy, mode, scores, sae, bench, preset, train_seconds))
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
    variant: str,
    strategy: str,
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
    squared_error = (recon - sample.x_out).pow(2).sum(-1)
    fvu = float(squared_error.sum() / (sample.x_out - sample.x_out.mean(0)).pow(2).sum())
    paper = paper_numbers(method, anchored=variant == "anchored") if variant != "init_only" else None
    settings = {
        "architecture": architecture_for(method, variant, preset),
        "lr": preset.lr_for(method),
        "n_steps": preset.n_steps,
        "batch_size": preset.batch_size,
    }
    settings.update(preset.settings_for(method))
    if variant != "plain":
        settings.update(n_anchors=preset.n_anchors, **preset.anchor_settings(variant))
    if strategy != "none":
        settings["resampling"] = sae.cfg.metadata.resampling  # the strategy and each event's record
    return {
        "method": method,
        "label": PAPER_LABELS[method],
        "kind": bench.kind,
        "variant": variant,
        "anchored": variant == "anchored",
        "resampling": strategy,
        "interference": mode,
        **{k: float(v) for k, v in scores.items()},
        "l0": float((acts != 0).float().sum(-1).mean()),
        "dead_fraction": float(((acts != 0).sum(0) == 0).float().mean()),
        "fvu": fvu,
        "mse": float(squared_error.mean()),
        "train_seconds": train_seconds,
        "settings": settings,
        "paper_M_GT": None if paper is None else paper[0],
        "paper_M_IP": None if paper is None else paper[1],
    }


def _pair(row: dict[str, Any] | None, prefix: str = "") -> str:
    if row is None or row.get(f"{prefix}M_GT") is None:
        return f"{'-':>15}"
    return f"{100 * row[prefix + 'M_GT']:>6.1f}% / {row[prefix + 'M_IP']:.3f}"


def _label(method: str, strategy: str) -> str:
    """The method's paper label, with its resampling strategy when it has one."""
    return PAPER_LABELS[method] if strategy == "none" else f"{PAPER_LABELS[method]}+{strategy}"


def format_table(results: dict[str, Any]) -> str:
    """The paper's Table 1 layout, M_GT / M_IP per variant, beside the paper's reported numbers."""
    config = results["config"]
    rows = results["rows"]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    lines = [
        f"LRB Table 1 (preset {config['name']}; n={config['n_features']}, d={config['d_in']}, "
        f"width={config['d_sae']}, {config['n_anchors']} anchors excluded from scoring; M_GT / M_IP, "
        "encoder side, tau=0.95)",
        f"{'interference':<12} {'method':<19} "
        + " ".join(f"{'ours ' + v:>15}" for v in variants)
        + f" | {'paper plain':>15} {'paper anchored':>15} | {'dec M_GT':>8} {'live M_GT':>9} {'MCC':>6} "
        f"{'L0':>5} {'dead':>6}",
    ]
    keys = list(dict.fromkeys((r["interference"], r["method"], r["resampling"]) for r in rows))
    for mode, method, strategy in keys:
        by_variant = {
            r["variant"]: r
            for r in rows
            if (r["interference"], r["method"], r["resampling"]) == (mode, method, strategy)
        }
        last = by_variant[variants[-1]]
        paper_plain = paper_numbers(method)
        paper_anchored = paper_numbers(method, anchored=True)
        paper_cells = [
            "-" if p is None else f"{100 * p[0]:>6.1f}% / {p[1]:.3f}" for p in (paper_plain, paper_anchored)
        ]
        lines.append(
            f"{mode:<12} {_label(method, strategy):<19} "
            + " ".join(_pair(by_variant.get(v)) for v in variants)
            + f" | {paper_cells[0]:>15} {paper_cells[1]:>15} | {100 * last['M_GT_dec']:>7.1f}% "
            f"{100 * last['M_GT_live']:>8.1f}% {last['MCC']:>6.3f} {last['l0']:>5.2f} "
            f"{100 * last['dead_fraction']:>5.1f}%"
        )
    lines.append(
        f"dec M_GT, live M_GT (firing latents only), MCC, L0, dead: the '{variants[-1]}' variant. paper = "
        "numbers reported in arXiv 2512.05534 Table 1 at n=1000, d=768 (not rerun here)"
    )
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars of M_GT and M_IP per method and variant, the paper's numbers as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    groups = list(dict.fromkeys((r["interference"], r["method"], r["resampling"]) for r in rows))
    width = 0.8 / len(variants)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(groups) * 2), 4.2))
    for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
        for i, variant in enumerate(variants):
            values = [
                next(
                    (
                        r[metric]
                        for r in rows
                        if (r["interference"], r["method"], r["resampling"], r["variant"]) == (*g, variant)
                    ),
                    0.0,
                )
                for g in groups
            ]
            ax.bar(
                [j + (i - (len(variants) - 1) / 2) * width for j in range(len(groups))],
                values,
                width,
                label=variant,
            )
        for anchored, marker in ((False, "x"), (True, "o")):
            paper = [paper_numbers(method, anchored) for _, method, _ in groups]
            xs = [j for j, p in enumerate(paper) if p is not None]
            ys = [p[0 if metric == "M_GT" else 1] for p in paper if p is not None]
            label = f"paper {'anchored' if anchored else 'plain'}"
            ax.scatter(
                xs,
                ys,
                marker=marker,
                color="black",
                zorder=3,
                label=label,
                facecolors="none" if anchored else None,
            )
        ax.set_xticks(
            range(len(groups)),
            [f"{_label(m, strategy)}\n({mode})" for mode, m, strategy in groups],
            fontsize=8,
        )
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"LRB recovery on non-anchor features, preset {results['config']['name']}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``results.json`` and ``recovery.png`` into ``out``."""
    return [write_json(out / "results.json", results), plot_results(results, out / "recovery.png")]
