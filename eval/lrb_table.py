"""``sdl-anchor bench lrb``: the paper's Table 1 on the Linear Representation Bench, ours beside it.

Trains SAELens SAEs (standard = ReLU + L1, topk, batchtopk, jumprelu, matryoshka_batchtopk) and our
transcoders and crosscoders (``LRBPreset.coder_activation``, TopK by default) on the LRB's sae, transcoder
(``d_out = d_in``) and crosscoder (``n_sources`` blocks) kinds, through SAELens's ``SAETrainer`` (extended so
a batch can carry a target) on a finite LRB dataset. Every (method, k) runs in each variant:

* ``plain``: SAELens's stock architecture (the TopK family through the sparse-backward step, which
  ``tests/test_sparse_step.py`` shows equal to SAELens's own);
* ``anchored``: ground-truth anchors on the first ``n_anchors`` latents (Eq. 22) and self-anchoring of
  the others (:mod:`sdl_anchor.eval.lrb_presets`);
* ``init_only``: the anchored latents start at their features, nothing holds them (``small`` preset);

crossed with dead-latent resampling (``none``, ``theory``, ``anthropic``; :mod:`sdl_anchor.resampling`).
Every row is scored on the same non-anchor features (encoder M_GT / M_IP at tau = 0.95, the decoder-side
scores, MCC, and the same over live latents only) and carries the paper's numbers, its settings and its
wall time; with ``LRBPreset.recovery_points`` it also carries its recovery curve (M_GT and M_IP against
samples seen).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class
from tqdm.auto import tqdm

from sdl_anchor.eval.lrb_presets import (
    CODER_KINDS,
    K_METHODS,
    METHODS,
    PRESETS,
    RESAMPLING,
    VARIANTS,
    LRBPreset,
)
from sdl_anchor.eval.paper_numbers import PAPER_LABELS, paper_numbers, paper_source
from sdl_anchor.integrations.training import train_on_bench
from sdl_anchor.io import atomic_write, write_json
from sdl_anchor.lrb.bench import LinearRepresentationBench
from sdl_anchor.metrics import live_recovery, recovery
from sdl_anchor.resampling import ResamplingConfig

__all__ = [
    "METHODS",
    "PRESETS",
    "RESAMPLING",
    "VARIANTS",
    "LRBPreset",
    "build_bench",
    "build_sae",
    "format_table",
    "run_lrb_bench",
    "write_results",
]


def resolve_preset(preset: LRBPreset | str) -> LRBPreset:
    if isinstance(preset, LRBPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[preset]


def architecture_for(method: str, variant: str, preset: LRBPreset) -> str:
    """The registered training architecture a (method, variant) row trains. The TopK family's plain rows
    use our ``anchored_*`` class with no anchors (SAELens's step, through the sparse-backward path)."""
    if method in CODER_KINDS:  # transcoders and crosscoders carry the anchoring fields themselves
        return f"{preset.coder_activation}_{method}"
    if variant == "plain" and method not in K_METHODS:
        return method
    return f"anchored_{method}"


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
        c_min=preset.c_min,
        beta=preset.beta,
        seed=seed,
        device=device,
    )


def build_sae(
    method: str,
    preset: LRBPreset,
    bench: LinearRepresentationBench,
    device: str,
    variant: str = "plain",
    k: int | None = None,
) -> Any:
    """A fresh SAELens TrainingSAE for ``method`` on ``bench`` (anchored for the anchoring variants)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    settings = {**preset.settings_for(method), **preset.anchor_settings(variant, method, k)}
    if k is not None:
        settings["k"] = k
    if bench.kind == "transcoder":
        settings["d_out"] = bench.d_out
    if bench.kind == "crosscoder":
        settings["n_sources"] = bench.config.n_sources
    sae_class, config_class = get_sae_training_class(architecture_for(method, variant, preset))
    return sae_class(config_class(d_in=bench.d_in, d_sae=preset.d_sae, device=device, **settings))


def _jobs(
    preset: LRBPreset,
    methods: tuple[str, ...],
    ks: tuple[int, ...] | None,
    variants: tuple[str, ...],
    interference: tuple[str, ...],
    resampling: tuple[str, ...],
) -> list[tuple[str, str, int | None, str, str]]:
    jobs = []
    for mode in interference:
        for method in methods:
            method_ks = preset.ks_for(method)
            if method == "topk" and ks is not None:
                unknown = [k for k in ks if k not in method_ks]
                if unknown:
                    raise ValueError(
                        f"--k {','.join(map(str, unknown))} is not a TopK k of preset {preset.name!r}; "
                        f"choose from {','.join(map(str, method_ks))}"
                    )
                method_ks = ks
            for k in method_ks:
                for strategy in resampling:
                    for variant in variants:
                        jobs.append((mode, method, k, strategy, variant))
    return jobs


def _check_choices(values: tuple[str, ...], allowed: tuple[str, ...], what: str) -> None:
    for value in values:
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def run_lrb_bench(
    preset: LRBPreset | str = "quick",
    *,
    device: str = "cpu",
    methods: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
    interference: tuple[str, ...] = ("bounded",),
    resampling: tuple[str, ...] | None = None,
    ks: tuple[int, ...] | None = None,
    seed: int = 0,
    n_steps: int | None = None,
    progress: bool = True,
    previous: dict[str, Any] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and score every (interference, method, k, resampling, variant); return the results dict.
    ``methods``, ``variants`` and ``resampling`` default to the preset's; ``ks`` selects TopK rows.

    ``previous`` (an earlier results dict of the same preset and settings) resumes: its rows are kept and
    not rerun, and ``wall_seconds`` adds up over the runs. ``on_row`` receives the results so far after
    each row, so an interrupted run loses at most the row in progress."""
    preset = resolve_preset(preset)
    if n_steps is not None:
        preset = preset.with_steps(n_steps)
    methods = methods or preset.methods
    variants = variants or preset.variants
    resampling = resampling or preset.resampling
    _check_choices(methods, METHODS, "method")
    _check_choices(variants, VARIANTS, "variant")
    _check_choices(resampling, RESAMPLING, "resampling")
    _check_choices(interference, ("bounded", "negative"), "interference")
    jobs = _jobs(preset, methods, ks, variants, interference, resampling)
    config = {
        **{key: value for key, value in asdict(preset).items() if key != "method_settings"},
        "method_settings": preset.method_settings,
        "device": device,
        "seed": seed,
        "tau": 0.95,
    }
    rows: list[dict[str, Any]] = []
    benches: dict[str, dict[str, Any]] = {}
    earlier_seconds = 0.0
    if previous is not None:
        _check_resumable(previous, config)
        rows = list(previous["rows"])
        benches = dict(previous["config"].get("benches", {}))
        earlier_seconds = float(previous["config"].get("wall_seconds", 0.0))
    done = {_row_key(r) for r in rows}
    prepared: dict[tuple[str, str], Any] = {}
    started_all = time.perf_counter()

    def results() -> dict[str, Any]:
        wall = earlier_seconds + time.perf_counter() - started_all
        return {"rows": rows, "config": {**config, "benches": benches, "wall_seconds": wall}}

    todo = [job for job in jobs if job not in done]
    bar = tqdm(todo, desc=f"bench lrb ({preset.name})", disable=not progress, unit="run")
    for mode, method, k, strategy, variant in bar:
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
        bar.set_postfix_str(f"{_label(method, k, strategy)} {variant}")
        rows.append(
            _train_and_score(
                preset, bench, dataset, anchors, mode, method, k, strategy, variant, seed, device
            )
        )
        if on_row is not None:
            on_row(results())
    return results()


def _row_key(row: dict[str, Any]) -> tuple[str, str, int | None, str, str]:
    return (row["interference"], row["method"], row["k"], row["resampling"], row["variant"])


def _check_resumable(previous: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to resume from results made with other settings: their rows would not be comparable."""
    if not isinstance(previous, dict) or "rows" not in previous or "config" not in previous:
        raise ValueError("the results to resume from are not a bench lrb results.json (no 'rows'/'config')")
    earlier = json.loads(json.dumps(previous["config"]))
    current = json.loads(json.dumps(config))  # tuples become lists, as in the saved file
    differing = [key for key in current if earlier.get(key) != current[key]]
    if differing:
        key = differing[0]
        raise ValueError(
            f"cannot resume: the results there were made with {key}={earlier.get(key)!r}, this run has "
            f"{current[key]!r}; use another --out, or --overwrite to start again"
        )


def _train_and_score(
    preset: LRBPreset,
    bench: LinearRepresentationBench,
    dataset: Any,
    anchors: Any,
    mode: str,
    method: str,
    k: int | None,
    strategy: str,
    variant: str,
    seed: int,
    device: str,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    sae = build_sae(method, preset, bench, device, variant, k)
    if variant != "plain":
        sae.set_anchors(anchors)
    training = preset.training_for(method, k)
    points = preset.recovery_points
    started = time.perf_counter()
    train_on_bench(
        sae,
        bench,
        n_steps=training["n_steps"],
        batch_size=training["batch_size"],
        lr=training["lr"],
        lr_decay_steps=round(training["lr_decay_fraction"] * training["n_steps"]),
        dataset=dataset,
        seed=seed,
        device=device,
        show_progress=False,
        dead_feature_window=preset.dead_feature_window,
        resampling=None
        if strategy == "none"
        else ResamplingConfig(strategy=strategy, seed=seed, **preset.resampling_for(method, k)),
        recovery_every=max(1, training["n_steps"] // points) if points else None,
    )
    train_seconds = time.perf_counter() - started
    scores = {
        **recovery(sae, bench, exclude=anchors.indices),
        **live_recovery(sae, bench, exclude=anchors.indices),
    }
    return _row(method, k, variant, strategy, mode, scores, sae, bench, preset, training, train_seconds)


@torch.no_grad()
def _row(
    method: str,
    k: int | None,
    variant: str,
    strategy: str,
    mode: str,
    scores: dict[str, float],
    sae: Any,
    bench: LinearRepresentationBench,
    preset: LRBPreset,
    training: dict[str, Any],
    train_seconds: float,
) -> dict[str, Any]:
    sample = bench.sample(4096, torch.Generator(device=bench.device).manual_seed(12345))
    sae.eval()
    acts = sae.encode(sample.x_in)
    recon = sae.decode(acts)
    if getattr(sae.cfg, "skip_connection", False):
        recon = recon + sample.x_in @ sae.W_skip.T
    squared_error = (recon - sample.x_out).pow(2).sum(-1)
    fvu = float(squared_error.sum() / (sample.x_out - sample.x_out.mean(0)).pow(2).sum())
    paper = paper_numbers(method, anchored=variant == "anchored", k=k) if variant != "init_only" else None
    settings: dict[str, Any] = {"architecture": architecture_for(method, variant, preset), **training}
    settings.update(preset.settings_for(method))
    if k is not None:
        settings["k"] = k
    if variant != "plain":
        settings.update(n_anchors=preset.n_anchors, **preset.anchor_settings(variant, method, k))
    if strategy != "none":
        settings["resampling"] = sae.cfg.metadata.resampling  # the strategy and each event's record
    curve = getattr(sae.cfg.metadata, "recovery_curve", None)
    return {
        "method": method,
        "label": _label(method, k),
        "k": k,
        "kind": bench.kind,
        "variant": variant,
        "anchored": variant == "anchored",
        "resampling": strategy,
        "interference": mode,
        **{key: float(value) for key, value in scores.items()},
        "l0": float((acts != 0).float().sum(-1).mean()),
        "dead_fraction": float(((acts != 0).sum(0) == 0).float().mean()),
        "fvu": fvu,
        "mse": float(squared_error.mean()),
        "train_seconds": train_seconds,
        "samples_seen": training["n_steps"] * training["batch_size"],
        "settings": settings,
        "paper_M_GT": None if paper is None else paper[0],
        "paper_M_IP": None if paper is None else paper[1],
        "paper_source": paper_source(method, k),
        **({"recovery_curve": curve} if curve else {}),
    }


def _label(method: str, k: int | None = None, strategy: str = "none") -> str:
    """The method's paper label (TopK with its k), with its resampling strategy when it has one."""
    label = PAPER_LABELS[method] + (f" k={k}" if method == "topk" and k is not None else "")
    return label if strategy == "none" else f"{label}+{strategy}"


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (variant, resampling) pairs present, in the table's order: plain, anchored, then resampled."""
    present = {(r["variant"], r["resampling"]) for r in rows}
    order = [(v, s) for s in RESAMPLING for v in VARIANTS]
    return [pair for pair in order if pair in present]


def _column_name(variant: str, strategy: str) -> str:
    if strategy == "none":
        return variant
    return strategy if variant == "plain" else f"{variant}+{strategy}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return f"{'-':>14}"
    return f"{100 * row['M_GT']:>6.1f}% / {row['M_IP']:.3f}"


def _paper_cell(paper: tuple[float, float | None] | None) -> str:
    if paper is None:
        return f"{'-':>14}"
    m_ip = "  -  " if paper[1] is None else f"{paper[1]:.3f}"
    return f"{100 * paper[0]:>6.1f}% / {m_ip}"


def format_table(results: dict[str, Any]) -> str:
    """One line per (interference, method, k): ours in each variant, the paper's plain and anchored numbers,
    and, for the last variant, the decoder-side and live scores, FVU, L0 and every run's wall time."""
    config = results["config"]
    rows = results["rows"]
    columns = _columns(rows)
    last = columns[-1]
    lines = [
        f"LRB (preset {config['name']}; n={config['n_features']}, d={config['d_in']}, width={config['d_sae']}, "
        f"S={config['sparsity']}, M={config['max_interference']}, {config['n_anchors']} anchors not scored); "
        "encoder M_GT / M_IP, tau=0.95",
        f"{'interference':<12} {'method':<12} "
        + " ".join(f"{_column_name(*c):>14}" for c in columns)
        + f" | {'paper plain':>14} {'paper anch.':>14} | {'dec M_GT':>8} {'live M_GT':>9} {'FVU':>6} {'L0':>6} "
        "  wall s (each column)",
    ]
    keys = list(dict.fromkeys((r["interference"], r["method"], r["k"]) for r in rows))
    for mode, method, k in keys:
        mine = {
            (r["variant"], r["resampling"]): r
            for r in rows
            if (r["interference"], r["method"], r["k"]) == (mode, method, k)
        }
        shown = mine.get(last) or next(iter(mine.values()))
        walls = "/".join(f"{mine[c]['train_seconds']:.0f}" if c in mine else "-" for c in columns)
        lines.append(
            f"{mode:<12} {_label(method, k):<12} "
            + " ".join(_cell(mine.get(c)) for c in columns)
            + f" | {_paper_cell(paper_numbers(method, False, k))} {_paper_cell(paper_numbers(method, True, k))} | "
            f"{100 * shown['M_GT_dec']:>7.1f}% {100 * shown['M_GT_live']:>8.1f}% {shown['fvu']:>6.3f} "
            f"{shown['l0']:>6.1f}   {walls}"
        )
    lines.append(
        f"dec M_GT, live M_GT (latents that fire), FVU, L0: the '{_column_name(*last)}' column (a row without "
        "it: its first run). paper = arXiv 2512.05534 (TopK at k=32/64/128: Table 7, M_GT only; the rest: "
        "Table 1), not rerun here. "
        f"Total wall time {config.get('wall_seconds', 0.0):.0f} s."
    )
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars of M_GT and M_IP per method and column, the paper's numbers as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    columns = _columns(rows)
    groups = list(dict.fromkeys((r["interference"], r["method"], r["k"]) for r in rows))
    width = 0.8 / len(columns)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.4 * len(groups) * 2), 4.4))
    for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
        for i, column in enumerate(columns):
            values = [
                next(
                    (
                        r[metric]
                        for r in rows
                        if (r["interference"], r["method"], r["k"]) == g
                        and (r["variant"], r["resampling"]) == column
                    ),
                    0.0,
                )
                for g in groups
            ]
            xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(groups))]
            ax.bar(xs, values, width, label=_column_name(*column))
        for anchored, marker in ((False, "x"), (True, "o")):
            papers = [paper_numbers(method, anchored, k) for _, method, k in groups]
            index = 0 if metric == "M_GT" else 1
            xs = [j for j, p in enumerate(papers) if p is not None and p[index] is not None]
            ys = [p[index] for p in papers if p is not None and p[index] is not None]
            ax.scatter(
                xs,
                ys,
                marker=marker,
                color="black",
                zorder=3,
                facecolors="none" if anchored else None,
                label=f"paper {'anchored' if anchored else 'plain'}",
            )
        ax.set_xticks(range(len(groups)), [f"{_label(m, k)}\n({mode})" for mode, m, k in groups], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} (encoder, non-anchor features)")
        ax.legend(fontsize=7)
    config = results["config"]
    fig.suptitle(f"LRB recovery, preset {config['name']} (n={config['n_features']}, d={config['d_in']})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """M_GT and M_IP against samples seen, one line per row (None when no row recorded a curve)."""
    rows = [r for r in results["rows"] if r.get("recovery_curve")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for row in rows:
        batch = row["settings"]["batch_size"]
        samples = [point["step"] * batch for point in row["recovery_curve"]]
        name = f"{row['label']} {_column_name(row['variant'], row['resampling'])}"
        for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
            ax.plot(samples, [point[metric] for point in row["recovery_curve"]], marker=".", label=name)
    for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
        ax.set_xlabel("training samples seen")
        ax.set_title(f"{metric} over training")
        ax.set_ylim(0, 1.05)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``results.json``, ``recovery.png`` and (with curves) ``recovery_curves.png`` into ``out``."""
    written = [write_json(out / "results.json", results), plot_results(results, out / "recovery.png")]
    curves = plot_curves(results, out / "recovery_curves.png")
    return written + ([curves] if curves is not None else [])
