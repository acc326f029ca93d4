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
samples seen, on the same features: a plain row's curve leaves out the anchor features it has no anchors for).
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

from sdl_anchor.eval.bench_common import pick_preset
from sdl_anchor.eval.lrb_presets import (
    ANCHOR_VARIANTS,
    CLT_VARIANTS,
    CODER_KINDS,
    DEV_SEED,
    K_METHODS,
    METHODS,
    PRESETS,
    RESAMPLING,
    VARIANTS,
    LRBPreset,
)
from sdl_anchor.eval.lrb_protocol import (
    L0_TARGET_TOLERANCE,
    aggregate,
    cell_key,
    column_key,
    flag_degenerate,
    held_out_seeds,
)
from sdl_anchor.eval.paper_numbers import PAPER_LABELS, paper_numbers, paper_source
from sdl_anchor.integrations.l0_control import COEFFICIENT_NAMES, check_l0_target
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
    return pick_preset(preset, PRESETS)


def architecture_for(method: str, variant: str, preset: LRBPreset) -> str:
    """The registered training architecture a (method, variant) row trains. The TopK family's plain rows
    use our ``anchored_*`` class with no anchors (SAELens's step, through the sparse-backward path)."""
    if method in CODER_KINDS:  # transcoders and crosscoders carry the anchoring fields themselves
        return f"{preset.coder_activation}_{method}"
    if variant == "plain" and method not in K_METHODS:
        return method
    return f"anchored_{method}"


def build_bench(preset: LRBPreset, kind: str, mode: str, seed: int, device: str) -> LinearRepresentationBench:
    """The preset's LRB of ``kind`` ("sae", "transcoder", "crosscoder" or "clt") and interference ``mode``."""
    return LinearRepresentationBench(
        kind=kind,
        n_features=preset.n_features,
        d_in=preset.d_in,
        d_out=preset.d_in if kind in ("transcoder", "clt") else None,
        **(preset.clt_bench_for("clt") if kind == "clt" else {}),
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
    d_in = bench.d_in
    if bench.kind == "clt":
        if variant not in CLT_VARIANTS:
            raise ValueError(f"a CLT runs the variants {', '.join(CLT_VARIANTS)}, not {variant!r}")
        settings.update(d_out=bench.config.output_width, n_layers=bench.n_layers)
        d_in = bench.config.d_in  # per layer
    sae_class, config_class = get_sae_training_class(architecture_for(method, variant, preset))
    return sae_class(config_class(d_in=d_in, d_sae=preset.d_sae, device=device, **settings))


def check_l0_target_fits(l0_target: Any, methods: tuple[str, ...]) -> None:
    """Refuse an L0 target that is not a positive number, or one for a method whose L0 is not a coefficient's
    doing (the TopK family keeps k latents per input)."""
    check_l0_target(l0_target, "the L0 target")
    fixed = [method for method in methods if method not in COEFFICIENT_NAMES]
    if fixed:
        raise ValueError(
            f"an L0 target applies to standard (ReLU) and jumprelu SAEs, whose sparsity is a coefficient; "
            f"{', '.join(fixed)} keep{'s' * (len(fixed) == 1)} k latents per input (choose their k with --k or "
            "the preset)"
        )


def column_applies(method: str, variant: str) -> bool:
    """Whether ``method`` runs the column of ``variant``: a transcoder has no aligned encoder (its encoder and
    decoder live in different spaces), a CLT runs only ``CLT_VARIANTS`` (no self-anchoring)."""
    if method == "transcoder":
        return variant != "aligned"
    if method == "clt":
        return variant in CLT_VARIANTS
    return True


def _jobs(
    preset: LRBPreset,
    methods: tuple[str, ...],
    ks: tuple[int, ...] | None,
    columns: tuple[tuple[str, str], ...],
    interference: tuple[str, ...],
    seeds: tuple[int, ...],
) -> list[tuple[int, str, str, int | None, str, str]]:
    """(seed, interference, method, k, resampling, variant) in run order: a table row's every seed and
    column before the next row, so that a partial run holds whole rows; only the columns each method has
    (:func:`column_applies`)."""
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
                for seed in seeds:
                    for variant, strategy in columns:
                        if column_applies(method, variant):
                            jobs.append((seed, mode, method, k, strategy, variant))
    return jobs


def select_columns(
    preset: LRBPreset, variants: tuple[str, ...] | None, resampling: tuple[str, ...] | None
) -> tuple[tuple[str, str], ...]:
    """The (variant, resampling) columns to run: the preset's; those of them with the given ``variants``
    or ``resampling`` when one is given; every pair of the two when both are."""
    if variants and resampling:
        return tuple((v, s) for s in dict.fromkeys(resampling) for v in dict.fromkeys(variants))
    columns = tuple(
        (v, s)
        for v, s in preset.default_columns()
        if (not variants or v in variants) and (not resampling or s in resampling)
    )
    if not columns:
        raise ValueError(
            f"no column of preset {preset.name!r} has variant {','.join(variants or ('any',))} with resampling "
            f"{','.join(resampling or ('any',))}; its columns are "
            f"{', '.join(_column_name(*c) for c in preset.default_columns())}. Pass both --variants and "
            "--resampling to run every pair of them"
        )
    return columns


def check_choices(values: tuple[Any, ...], allowed: tuple[Any, ...], what: str) -> None:
    """Refuse an empty selection, a repeated entry or one outside ``allowed`` (ValueError naming it)."""
    if not values:
        raise ValueError(f"no {what} given; choose from {', '.join(map(str, allowed))}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} {', '.join(map(str, repeated))} given twice; name each once")
    for value in values:
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(map(str, allowed))}")


def run_lrb_bench(
    preset: LRBPreset | str = "quick",
    *,
    device: str = "cpu",
    methods: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
    interference: tuple[str, ...] = ("bounded",),
    resampling: tuple[str, ...] | None = None,
    ks: tuple[int, ...] | None = None,
    seed: int | None = None,
    seeds: tuple[int, ...] | None = None,
    n_steps: int | None = None,
    l0_target: float | None = None,
    progress: bool = True,
    previous: dict[str, Any] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and score every (interference, method, k, seed, column); return the results dict.
    ``methods`` defaults to the preset's, the columns to the preset's (``select_columns``: ``variants`` and
    ``resampling`` select); ``ks`` selects TopK rows. ``seeds`` (or one ``seed``; default the development
    seed) each seed the bench's features, codes and anchors, the coder's initialisation and the data order.
    ``l0_target`` (ReLU and JumpReLU only) matches every column's L0 to it by an L0 controller on the
    sparsity coefficient, so the row compares columns at one L0.

    ``previous`` (an earlier results dict of the same preset and settings) resumes: its rows are kept and
    not rerun, and ``wall_seconds`` adds up over the runs. ``on_row`` receives the results so far after
    each row, so an interrupted run loses at most the row in progress. The results hold every seed's rows
    (each flagged ``degenerate`` or not) and their ``aggregate`` over the held-out seeds
    (:mod:`sdl_anchor.eval.lrb_protocol`)."""
    preset = resolve_preset(preset)
    if n_steps is not None:
        preset = preset.with_steps(n_steps)
    if seed is not None and seeds is not None:
        raise ValueError("pass seed (one) or seeds (several), not both")
    seeds = (DEV_SEED,) if seed is None and seeds is None else seeds if seeds is not None else (seed,)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat a seed; name each once")
    methods = preset.methods if methods is None else methods
    check_choices(methods, METHODS, "method")
    if variants is not None:
        check_choices(variants, VARIANTS, "variant")
    if resampling is not None:
        check_choices(resampling, RESAMPLING, "resampling")
    check_choices(interference, ("bounded", "negative"), "interference")
    if l0_target is not None:
        check_l0_target_fits(l0_target, methods)
    columns = select_columns(preset, variants, resampling)
    jobs = _jobs(preset, methods, ks, columns, interference, seeds)
    if not jobs:
        raise ValueError(
            f"nothing to run: the columns {', '.join(_column_name(*c) for c in columns)} hold no run of "
            f"{', '.join(methods)} (a CLT runs the variants {', '.join(CLT_VARIANTS)}; a transcoder skips aligned)"
        )
    config = {
        **{key: value for key, value in asdict(preset).items() if key != "method_settings"},
        "method_settings": preset.method_settings,
        "device": device,
        "seeds": list(seeds),
        "dev_seed": DEV_SEED,
        "held_out_seeds": held_out_seeds(seeds),
        "tau": 0.95,
        "l0_target": l0_target,
    }
    rows: list[dict[str, Any]] = []
    benches: dict[str, dict[str, Any]] = {}
    earlier_seconds = 0.0
    if previous is not None:
        check_resumable(
            previous,
            config,
            what="bench lrb",
            row_keys=("seed", "interference", "method", "k", "resampling", "variant"),
            per_run=("seeds", "held_out_seeds"),  # a resume may add seeds
            listed=("seeds",),
        )
        rows = list(previous["rows"])
        benches = dict(previous["config"].get("benches", {}))
        earlier_seconds = float(previous["config"].get("wall_seconds", 0.0))
        config["seeds"] = list(dict.fromkeys([*previous["config"]["seeds"], *seeds]))
        config["held_out_seeds"] = held_out_seeds(config["seeds"])
    done = {_row_key(r) for r in rows}
    prepared: dict[tuple[str, str, int], Any] = {}
    started_all = time.perf_counter()

    def results() -> dict[str, Any]:
        wall = earlier_seconds + time.perf_counter() - started_all
        flagged = flag_degenerate(rows)
        return {
            "rows": flagged,
            "aggregate": aggregate(flagged, config["seeds"]),
            "config": {**config, "benches": benches, "wall_seconds": wall},
        }

    todo = [job for job in jobs if job not in done]
    bar = tqdm(todo, desc=f"bench lrb ({preset.name})", disable=not progress, unit="run")
    for run_seed, mode, method, k, strategy, variant in bar:
        kind = CODER_KINDS.get(method, "sae")
        if (mode, kind, run_seed) not in prepared:
            prepared.clear()  # one bench's dataset in memory at a time (paper size: 300 MB each)
            bench = build_bench(preset, kind, mode, run_seed, device)
            anchors = bench.anchors(preset.n_anchors, seed=run_seed)
            prepared[mode, kind, run_seed] = (bench, bench.dataset(preset.n_samples), anchors)
            benches[_bench_name(mode, kind, run_seed)] = {
                "generation_seconds": bench.generation_seconds,
                "interference_stats": bench.interference_stats,
                "anchor_indices": anchors.indices.tolist(),
            }
        bench, dataset, anchors = prepared[mode, kind, run_seed]
        bar.set_postfix_str(f"{row_label(method, k, strategy)} {variant} seed {run_seed}")
        rows.append(
            _train_and_score(
                preset,
                bench,
                dataset,
                anchors,
                mode,
                method,
                k,
                strategy,
                variant,
                run_seed,
                device,
                l0_target,
            )
        )
        if on_row is not None:
            on_row(results())
    return results()


def _bench_name(mode: str, kind: str, seed: int) -> str:
    return f"{mode}/{kind}/seed {seed}"


def _row_key(row: dict[str, Any]) -> tuple[int, str, str, int | None, str, str]:
    return (row["seed"], row["interference"], row["method"], row["k"], row["resampling"], row["variant"])


def check_resumable(
    previous: Any,
    config: dict[str, Any],
    *,
    what: str,
    row_keys: tuple[str, ...],
    per_run: tuple[str, ...],
    listed: tuple[str, ...] = (),
) -> None:
    """Refuse to resume from results made with other settings (their rows would not be comparable): ``previous``
    must be ``what``'s results, with ``rows`` that carry ``row_keys``, a list under each ``listed`` config key,
    and a ``config`` equal to ``config`` except in the ``per_run`` keys (those a resume may change, e.g. adding
    seeds)."""
    if (
        not isinstance(previous, dict)
        or "rows" not in previous
        or not isinstance(previous.get("config"), dict)
    ):
        raise ValueError(f"the results to resume from are not a {what} results.json (no 'rows'/'config')")
    earlier = json.loads(json.dumps(previous["config"]))
    current = json.loads(json.dumps(config))  # tuples become lists, as in the saved file
    if not isinstance(previous["rows"], list) or not all(
        isinstance(r, dict) and set(row_keys) <= set(r) for r in previous["rows"]
    ):
        raise ValueError(
            f"the results to resume from have rows without {'/'.join(row_keys)}; they are not this version's "
            f"{what} results. Use another --out, or --overwrite"
        )
    for key in listed:
        if not isinstance(earlier.get(key), list):
            raise ValueError(f"the results to resume from name no {key}; use another --out, or --overwrite")
    differing = [key for key in current if key not in per_run and earlier.get(key) != current[key]]
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
    l0_target: float | None = None,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    sae = build_sae(method, preset, bench, device, variant, k)
    if variant in ANCHOR_VARIANTS:
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
        dead_feature_window=preset.dead_window_for(method, k),
        resampling=None
        if strategy == "none"
        else ResamplingConfig(strategy=strategy, seed=seed, **preset.resampling_for(method, k)),
        recovery_every=max(1, training["n_steps"] // points) if points else None,
        exclude=anchors.indices,  # every row, plain ones too, scored on the table's features
        l0_target=l0_target,
    )
    train_seconds = time.perf_counter() - started
    scores = {
        **recovery(sae, bench, exclude=anchors.indices),
        **live_recovery(sae, bench, exclude=anchors.indices),
    }
    row = _row(method, k, variant, strategy, mode, scores, sae, bench, preset, training, train_seconds)
    return {"seed": seed, **row}


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
    data_l0 = float((sample.codes != 0).float().sum(-1).mean())
    acts = sae.encode(sample.x_in)
    recon = sae.decode(acts)
    if getattr(sae.cfg, "skip_connection", False):
        recon = recon + sample.x_in @ sae.W_skip.T
    squared_error = (recon - sample.x_out).pow(2).sum(-1)
    fvu = float(squared_error.sum() / (sample.x_out - sample.x_out.mean(0)).pow(2).sum())
    # like for like: the paper's plain numbers beside plain, its anchored ones beside its method (anchors)
    paper_anchored = {"plain": False, "anchors": True}.get(variant)
    paper = None if paper_anchored is None else paper_numbers(method, anchored=paper_anchored, k=k)
    settings: dict[str, Any] = {
        "architecture": architecture_for(method, variant, preset),
        **training,
        "dead_feature_window": preset.dead_window_for(method, k),
    }
    settings.update(preset.settings_for(method))
    if k is not None:
        settings["k"] = k
    if variant in ANCHOR_VARIANTS:
        settings["n_anchors"] = preset.n_anchors
    settings.update(preset.anchor_settings(variant, method, k))
    if strategy != "none":
        settings["resampling"] = sae.cfg.metadata.resampling  # the strategy and each event's record
    l0_control = getattr(sae.cfg.metadata, "l0_control", None)
    if l0_control is not None:
        settings["l0_control"] = l0_control  # the target and the coefficient the controller ended at
    curve = getattr(sae.cfg.metadata, "recovery_curve", None)
    return {
        "method": method,
        "label": row_label(method, k),
        "k": k,
        "kind": bench.kind,
        "variant": variant,
        "anchored": variant in ("anchors", "anchored"),
        "resampling": strategy,
        "interference": mode,
        **{key: float(value) for key, value in scores.items()},
        "decoder_mcc": float(scores["MCC"]),  # MCC under the protocol tables' name
        # a CLT keeps k latents per layer: its L0 (over every layer) is bounded by k times its layers
        **({"k_all_layers": k * bench.n_layers} if bench.kind == "clt" and k is not None else {}),
        "data_l0": data_l0,
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


def row_label(method: str, k: int | None = None, strategy: str = "none") -> str:
    """The method's paper label (TopK with its k), with its resampling strategy when it has one."""
    label = PAPER_LABELS[method] + (f" k={k}" if method == "topk" and k is not None else "")
    return label if strategy == "none" else f"{label}+{strategy}"


def _columns(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (variant, resampling) columns present, in the order they ran."""
    return list(dict.fromkeys(column_key(e) for e in entries))


def _column_name(variant: str, strategy: str) -> str:
    if strategy == "none":
        return variant
    return strategy if variant == "plain" else f"{variant}+{strategy}"


def short_column_name(variant: str, strategy: str) -> str:
    return _column_name("self" if variant == "self_anchored" else variant, strategy)


def _format_mean_std(cell: dict[str, Any], metric: str, scale: float = 1.0, digits: int = 1) -> str:
    mean, std = cell[f"{metric}_mean"], cell[f"{metric}_std"]
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text}±{scale * std:.{digits}f}"


def _flags(cell: dict[str, Any]) -> str:
    return ("!" if cell["degenerate"] else "") + ("*" if cell.get("goal") else "")


def _paper_cell(paper: tuple[float, float | None] | None) -> str:
    if paper is None:
        return f"{'-':>14}"
    m_ip = "  -  " if paper[1] is None else f"{paper[1]:.3f}"
    return f"{100 * paper[0]:>6.1f}% / {m_ip}"


def l0_matched(config: dict[str, Any]) -> str:
    """``", L0 matched to N ..."`` for results run with an L0 target, else ``""``."""
    target = config.get("l0_target")
    return "" if target is None else f", every column's L0 matched to {target:g} by its sparsity coefficient"


def seeds_sentence(config: dict[str, Any]) -> str:
    """Which seeds a table reports, and whether they are held out."""
    reported = held_out_seeds(config["seeds"])
    if reported == [DEV_SEED]:
        return f"seed {DEV_SEED} only, the development seed every setting was chosen on: in-sample, no spread"
    return (
        f"mean ± std over held-out seeds {','.join(map(str, reported))} (settings chosen on seed "
        f"{config.get('dev_seed', DEV_SEED)}, which is not in the mean)"
    )


def format_table(results: dict[str, Any]) -> str:
    """The summary table, one line per (interference, method, k): each column's encoder M_GT (mean ± std
    over the held-out seeds, %), the paper's plain and anchored numbers; then :func:`format_metrics`."""
    config = results["config"]
    cells = aggregate(results["rows"], config["seeds"])
    columns = _columns(cells)
    lines = [
        f"LRB (preset {config['name']}; n={config['n_features']}, d={config['d_in']}, width={config['d_sae']}, "
        f"S={config['sparsity']}, M={config['max_interference']}, {config['n_anchors']} anchors not scored"
        f"{l0_matched(config)}); encoder M_GT %, tau=0.95, {seeds_sentence(config)}",
        f"{'interference':<12} {'method':<12} "
        + " ".join(f"{short_column_name(*c):>15}" for c in columns)
        + f" | {'paper plain':>14} {'paper anchors':>14}",
    ]
    for mode, method, k in dict.fromkeys(cell_key(c) for c in cells):
        mine = {column_key(c): c for c in cells if cell_key(c) == (mode, method, k)}
        shown = [
            f"{_format_mean_std(mine[c], 'M_GT', 100) + _flags(mine[c]):>15}" if c in mine else f"{'-':>15}"
            for c in columns
        ]
        lines.append(
            f"{mode:<12} {row_label(method, k):<12} "
            + " ".join(shown)
            + f" | {_paper_cell(paper_numbers(method, False, k))} {_paper_cell(paper_numbers(method, True, k))}"
        )
    lines.append(
        "! degenerate on some seed (L0 above 3x the data's true L0 or k, "
        + (
            f"or more than {100 * L0_TARGET_TOLERANCE:.0f}% off its target, "
            if config.get("l0_target") is not None
            else ""
        )
        + "or decoder M_GT below plain's): not a win. * meets the goal (TopK family: encoder M_GT >= 95%, MCC >= plain's, FVU <= 1.1x plain's; ReLU, "
        "JumpReLU: encoder M_GT > 0, L0 <= 2x plain's, decoder M_GT >= plain's). paper = arXiv 2512.05534 "
        "(TopK k=32/64/128: Table 7, M_GT only; the rest: Table 1), quoted, not rerun; its anchored number is "
        "its method, our 'anchors' column."
    )
    return "\n".join([*lines, "", format_metrics(results)])


def format_metrics(results: dict[str, Any]) -> str:
    """The companion table: every metric of every cell (mean ± std over the held-out seeds), its wall time,
    its flags and, for the columns of ours, why it misses the goal."""
    config = results["config"]
    cells = aggregate(results["rows"], config["seeds"])
    names = (
        "enc M_GT %",
        "live M_GT %",
        "enc M_IP",
        "dec M_GT %",
        "dec MCC",
        "FVU",
        "L0",
        "dead %",
        "wall s",
    )
    lines = [
        f"Every metric, {seeds_sentence(config)}",
        f"{'interference':<12} {'method':<12} {'column':<15} "
        + " ".join(f"{n:>13}" for n in names)
        + "  flags",
    ]
    for cell in cells:
        values = (
            _format_mean_std(cell, "M_GT", 100),
            _format_mean_std(cell, "M_GT_live", 100),
            _format_mean_std(cell, "M_IP", 1, 3),
            _format_mean_std(cell, "M_GT_dec", 100),
            _format_mean_std(cell, "MCC", 1, 3),
            _format_mean_std(cell, "fvu", 1, 3),
            _format_mean_std(cell, "l0", 1, 1),
            _format_mean_std(cell, "dead_fraction", 100),
            _format_mean_std(cell, "train_seconds", 1, 0),
        )
        note = "degenerate" if cell["degenerate"] else ""
        if "goal" in cell:
            note = f"{note}; goal: {cell['goal_reason']}" if note else f"goal: {cell['goal_reason']}"
        lines.append(
            f"{cell['interference']:<12} {row_label(cell['method'], cell['k']):<12} "
            f"{short_column_name(cell['variant'], cell['resampling']):<15} "
            + " ".join(f"{v:>13}" for v in values)
            + f"  {note}"
        )
    lines.append(f"Total wall time {config.get('wall_seconds', 0.0):.0f} s.")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars of encoder M_GT and decoder MCC per table row and column (held-out means, std as error
    bars), degenerate cells hatched and outlined in red, the paper's M_GT as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results["config"]
    cells = aggregate(results["rows"], config["seeds"])
    columns = _columns(cells)
    groups = list(dict.fromkeys(cell_key(c) for c in cells))
    width = 0.8 / len(columns)
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.6 * len(groups) * 2), 5.2))
    for ax, metric, title in zip(
        axes, ("M_GT", "MCC"), ("encoder M_GT (non-anchor features)", "decoder MCC"), strict=True
    ):
        for i, column in enumerate(columns):
            found = [
                next((c for c in cells if cell_key(c) == g and column_key(c) == column), None) for g in groups
            ]
            xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(groups))]
            bars = ax.bar(
                xs,
                [c[f"{metric}_mean"] if c else 0.0 for c in found],
                width,
                yerr=[(c[f"{metric}_std"] or 0.0) if c else 0.0 for c in found],
                capsize=2,
                label=short_column_name(*column),
            )
            for bar, cell in zip(bars, found, strict=True):
                if cell is not None and cell["degenerate"]:
                    bar.set_hatch("//")
                    bar.set_edgecolor("red")
        if metric == "M_GT":
            for anchored, marker in ((False, "x"), (True, "o")):
                papers = [paper_numbers(method, anchored, k) for _, method, k in groups]
                xs = [j for j, p in enumerate(papers) if p is not None]
                ys = [p[0] for p in papers if p is not None]
                ax.scatter(
                    xs,
                    ys,
                    marker=marker,
                    color="black",
                    zorder=3,
                    facecolors="none" if anchored else None,
                    label=f"paper {'anchors' if anchored else 'plain'}",
                )
        ax.set_xticks(
            range(len(groups)), [f"{row_label(m, k)}\n({mode})" for mode, m, k in groups], fontsize=8
        )
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=7)
    fig.suptitle(
        f"LRB, preset {config['name']} (n={config['n_features']}, d={config['d_in']}); hatched red = degenerate"
        f"\n{seeds_sentence(config)}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """M_GT and M_IP against samples seen, one line per row of the first reported seed (None when no row
    recorded a curve)."""
    first = held_out_seeds(results["config"]["seeds"])[0]
    rows = [r for r in results["rows"] if r.get("recovery_curve") and r["seed"] == first]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for row in rows:
        batch = row["settings"]["batch_size"]
        samples = [point["step"] * batch for point in row["recovery_curve"]]
        name = f"{row['label']} {short_column_name(row['variant'], row['resampling'])}"
        for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
            ax.plot(samples, [point[metric] for point in row["recovery_curve"]], marker=".", label=name)
    for ax, metric in zip(axes, ("M_GT", "M_IP"), strict=True):
        ax.set_xlabel("training samples seen")
        ax.set_title(f"{metric} over training (seed {first})")
        ax.set_ylim(0, 1.05)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``results.json``, ``table.txt`` (the printed tables), ``recovery.png`` and (with curves)
    ``recovery_curves.png`` into ``out``; a stale ``recovery_curves.png`` is removed when there are none."""
    table = format_table(results) + "\n"
    written = [
        write_json(out / "results.json", results),
        atomic_write(out / "table.txt", lambda tmp: Path(tmp).write_text(table)),
        plot_results(results, out / "recovery.png"),
    ]
    curves = plot_curves(results, out / "recovery_curves.png")
    if curves is None:
        (out / "recovery_curves.png").unlink(missing_ok=True)
    return written + ([curves] if curves is not None else [])
