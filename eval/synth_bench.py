"""``sdl-anchor bench synth``: stock SAELens against our variants on SynthSAEBench-16k, judged by SAELens's
own evaluator (:func:`sae_lens.synthetic.eval_sae_on_synthetic_data`), not by our metric.

For each model seed (42, the published model, is the development seed; others are held out), method, L0
target and variant (:data:`~sdl_anchor.eval.synth_presets.VARIANTS`), one SAE of width 4,096 trains through
SAELens's ``SAETrainer`` (our subclass adds only the resampling events, the aligned-encoder tie and the L0
controller's callback) on data from :class:`~sdl_anchor.integrations.synth_sampler.FastSyntheticSampler`;
every variant of a (model seed, method, L0) cell sees the same samples. Each SAE is saved in SAELens's
format and scored:

- by ``eval_sae_on_synthetic_data`` on fresh samples: decoder MCC (Hungarian), F1 / precision / recall of
  each latent as a detector of its best-matching feature, uniqueness, explained variance, L0, dead latents,
  shrinkage; these are the table's numbers, as the evaluator computes them, for every row;
- and without the anchor features (``*_without_anchors``): the 100 anchor features leave the ground truth and
  the latents a Hungarian matching pairs with them leave the SAE (for an anchored SAE, its anchored latents;
  for any other, the latents that represent those features), then SAELens's own
  ``mean_correlation_coefficient``, ``feature_uniqueness`` and ``ClassificationMetricsCalculator`` score what
  is left. The evaluator cannot exclude features, and an anchored SAE's anchored latents are given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.synthetic import SyntheticModel, eval_sae_on_synthetic_data
from sae_lens.synthetic.evals import (
    ClassificationMetricsCalculator,
    feature_uniqueness,
    mean_correlation_coefficient,
)
from scipy.optimize import linear_sum_assignment

from sdl_anchor.anchoring import AnchorSet
from sdl_anchor.eval.bench_common import constant_lr_config, fit, pick_preset, resampling_facts
from sdl_anchor.eval.lrb_table import check_choices, check_resumable
from sdl_anchor.eval.synth_presets import (
    DEV_MODEL_SEED,
    K_METHODS,
    METHODS,
    PRESETS,
    PUBLISHED_KEYS,
    PUBLISHED_L0_25,
    PUBLISHED_SAMPLES,
    VARIANTS,
    SynthPreset,
)
from sdl_anchor.integrations.l0_control import COEFFICIENT_NAMES, L0Controller
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
from sdl_anchor.integrations.synth_sampler import FastActivationGenerator, FastSyntheticSampler
from sdl_anchor.integrations.synthsaebench import load_or_build_model, synthsaebench_16k_config
from sdl_anchor.resampling import ResamplingConfig

INITIAL_COEFFICIENT = {"standard": 1.0, "jumprelu": 1.0}  # where the L0 controller starts
EVAL_SEED_OFFSET = 1_000_003  # evaluation samples are drawn apart from the training stream
SCORE_BATCH = 1024


def resolve_preset(preset: SynthPreset | str) -> SynthPreset:
    return pick_preset(preset, PRESETS)


def choose_anchors(model: SyntheticModel, preset: SynthPreset, model_seed: int) -> AnchorSet:
    """``preset.n_anchors`` features drawn uniformly from the ``anchor_pool`` most frequent (seeded by the
    model seed), their ground-truth directions as anchors."""
    probabilities = model.activation_generator.firing_probabilities
    pool = torch.argsort(probabilities, descending=True, stable=True)[: preset.anchor_pool]
    generator = torch.Generator().manual_seed(model_seed)
    chosen = pool[torch.randperm(pool.numel(), generator=generator)[: preset.n_anchors]].sort().values
    directions = model.feature_dict.feature_vectors.detach()[chosen]
    return AnchorSet(directions, indices=chosen)


def build_sae(preset: SynthPreset, method: str, variant: str, target_l0: int, device: str) -> Any:
    """A fresh SAELens TrainingSAE: SAELens's own class for ``stock`` and ``theory``, ours otherwise."""
    anchored, _, aligned = VARIANTS[variant]
    architecture = f"anchored_{method}" if (anchored or aligned) else method
    settings: dict[str, Any] = {"d_in": preset.hidden_dim, "d_sae": preset.d_sae, "device": device}
    if method in K_METHODS:
        settings["k"] = target_l0
    if method == "matryoshka_batchtopk":
        settings["matryoshka_widths"] = list(preset.matryoshka_widths)
    if method == "standard":
        settings["l1_coefficient"] = INITIAL_COEFFICIENT["standard"]
    if method == "jumprelu":
        settings["l0_coefficient"] = INITIAL_COEFFICIENT["jumprelu"]
    if anchored:
        settings.update(anchor_coefficient=preset.anchor_coefficient, anchor_init=True)
    if aligned:
        settings["aligned_encoder"] = True
    sae_class, config_class = get_sae_training_class(architecture)
    return sae_class(config_class(**settings))


def _stream(sampler: FastSyntheticSampler, batch_size: int) -> Any:
    while True:
        yield sampler.sample(batch_size)


def train_sae(
    sae: Any,
    model: SyntheticModel,
    preset: SynthPreset,
    method: str,
    variant: str,
    target_l0: int,
    data_seed: int,
    device: str,
    progress: bool,
) -> dict[str, Any]:
    """Train ``sae`` on ``preset.training_samples`` samples (seed ``data_seed``); returns training facts."""
    _, theory, _ = VARIANTS[variant]
    n_steps = preset.n_steps
    config = constant_lr_config(n_steps, preset.batch_size, preset.lr, device, preset.dead_window_fraction)
    sampler = FastSyntheticSampler(model, seed=data_seed)
    provider = _stream(sampler, preset.batch_size)
    if theory:
        trainer: PairedSAETrainer = ResamplingSAETrainer(
            cfg=config,
            sae=sae,
            data_provider=provider,
            resampling=ResamplingConfig(strategy="theory", seed=data_seed),
        )
    else:
        trainer = PairedSAETrainer(cfg=config, sae=sae, data_provider=provider)
    controller = None
    if method in COEFFICIENT_NAMES:
        controller = L0Controller(target=target_l0, coefficient=COEFFICIENT_NAMES[method])
        trainer.step_callbacks.append(controller)
    torch.manual_seed(data_seed)
    facts: dict[str, Any] = {"train_seconds": round(fit(trainer, progress), 1), "n_steps": n_steps}
    if controller is not None and controller.last is not None:
        facts["final_coefficient"] = controller.last[2]
        facts["final_batch_l0"] = controller.last[1]
    return facts | resampling_facts(trainer)


def _anchor_latents(decoder: torch.Tensor, gt_anchor_directions: torch.Tensor) -> torch.Tensor:
    """The latents a Hungarian matching (by |cosine|) pairs with the anchor features."""
    cosine = (gt_anchor_directions / gt_anchor_directions.norm(dim=1, keepdim=True)) @ (
        decoder / decoder.norm(dim=1, keepdim=True).clamp(min=1e-12)
    ).T
    _, latents = linear_sum_assignment(-cosine.abs().cpu().numpy())
    return torch.as_tensor(latents, dtype=torch.long)


@torch.no_grad()
def score_sae(
    sae: Any, model: SyntheticModel, anchors: AnchorSet, n_samples: int, eval_seed: int
) -> dict[str, Any]:
    """SAELens's evaluator on ``n_samples`` fresh samples, and the same metrics without the anchor features."""
    generator = FastActivationGenerator(model, seed=eval_seed)
    result = eval_sae_on_synthetic_data(
        sae, model.feature_dict, generator, num_samples=n_samples, batch_size=SCORE_BATCH
    )
    scores: dict[str, Any] = {
        "mcc": result.mcc,
        "f1": result.classification.f1_score,
        "precision": result.classification.precision,
        "recall": result.classification.recall,
        "uniqueness": result.uniqueness,
        "explained_variance": result.explained_variance,
        "l0": result.sae_l0,
        "true_l0": result.true_l0,
        "dead_latents": result.dead_latents,
        "dead_fraction": result.dead_latents / sae.cfg.d_sae,
        "shrinkage": result.shrinkage,
    }
    decoder = sae.W_dec.detach()
    features = model.feature_dict.feature_vectors.detach()
    keep_features = torch.ones(features.shape[0], dtype=torch.bool)
    keep_features[anchors.indices] = False
    keep_latents = torch.ones(decoder.shape[0], dtype=torch.bool)
    keep_latents[_anchor_latents(decoder, features[anchors.indices])] = False
    kept_decoder, kept_features = decoder[keep_latents], features[keep_features]
    scores["mcc_without_anchors"] = mean_correlation_coefficient(kept_decoder, kept_features)
    scores["uniqueness_without_anchors"] = feature_uniqueness(kept_decoder, kept_features)
    calculator = ClassificationMetricsCalculator(kept_decoder, kept_features)
    sampler = FastSyntheticSampler(model, seed=eval_seed)
    sae.eval()
    for start in range(0, n_samples, SCORE_BATCH):
        codes = sampler.sample_codes(min(SCORE_BATCH, n_samples - start))
        latents = sae.encode(sampler.hidden(codes))
        calculator.add_batch(latents[:, keep_latents], codes.dense()[:, keep_features])
    classification = calculator.compute()
    scores["f1_without_anchors"] = classification.f1_score
    scores["precision_without_anchors"] = classification.precision
    scores["recall_without_anchors"] = classification.recall
    return scores


def _row_key(row: dict[str, Any]) -> tuple[int, str, int, str]:
    return (row["model_seed"], row["method"], row["target_l0"], row["variant"])


def run_synth_bench(
    preset: SynthPreset | str = "synth-cpu",
    *,
    device: str = "cpu",
    methods: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
    l0_targets: tuple[int, ...] | None = None,
    model_seeds: tuple[int, ...] | None = None,
    training_samples: int | None = None,
    out: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    previous: dict[str, Any] | None = None,
    on_row: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Train and score every (model seed, method, L0 target, variant) of the selection; returns results with
    ``rows``, ``config`` and ``published``. Trained SAEs are saved under ``out/saes/`` when ``out`` is set."""
    preset = resolve_preset(preset)
    if training_samples is not None:
        if training_samples < preset.batch_size:
            raise ValueError(
                f"--samples must be at least one batch ({preset.batch_size}), got {training_samples}"
            )
        preset = preset.with_samples(training_samples)
    methods = tuple(methods or preset.methods)
    variants = tuple(variants or preset.variants)
    l0_targets = tuple(l0_targets or preset.l0_targets)
    model_seeds = tuple(model_seeds or preset.model_seeds)
    check_choices(methods, METHODS, "method")
    check_choices(variants, tuple(VARIANTS), "variant")
    check_choices(model_seeds, model_seeds, "model seed")
    check_choices(l0_targets, l0_targets, "L0 target")
    for target in l0_targets:
        if isinstance(target, bool) or not isinstance(target, int) or not 0 < target < preset.d_sae:
            raise ValueError(f"an L0 target must be an integer in (0, {preset.d_sae}), got {target!r}")
    config = {
        "preset": preset.name,
        "description": preset.description,
        **{
            key: value
            for key, value in dataclasses.asdict(preset).items()
            if key not in ("name", "description", "model_seeds", "methods", "variants", "l0_targets")
        },
        "model_seeds": list(model_seeds),
        "dev_model_seed": DEV_MODEL_SEED,
        "methods": list(methods),
        "variants": list(variants),
        "l0_targets": list(l0_targets),
        "n_steps": preset.n_steps,
        "published_samples": PUBLISHED_SAMPLES,
        "published_protocol": preset.published_protocol,
        "budget_fraction": preset.training_samples / PUBLISHED_SAMPLES,
        "device": device,
        "data": "FastSyntheticSampler (SAELens's distribution, tested); evaluation by eval_sae_on_synthetic_data",
    }
    rows: list[dict[str, Any]] = []
    if previous is not None:
        check_resumable(
            previous,
            config,
            what="bench synth",
            row_keys=("model_seed", "method", "target_l0", "variant"),
            per_run=("description", "model_seeds", "methods", "variants", "l0_targets", "device"),
        )
        rows = list(previous["rows"])
    done = {_row_key(row) for row in rows}
    models: dict[int, dict[str, Any]] = {}

    def results() -> dict[str, Any]:
        return {
            "rows": rows,
            "config": config,
            "models": models,
            "published": {
                "l0": 25,
                "samples": PUBLISHED_SAMPLES,
                "keys": list(PUBLISHED_KEYS),
                "values": {
                    method: dict(zip(PUBLISHED_KEYS, PUBLISHED_L0_25[method], strict=True))
                    for method in methods
                },
            },
        }

    for model_seed in model_seeds:
        model_config = synthsaebench_16k_config(model_seed, preset.num_features, preset.hidden_dim)
        model, record = load_or_build_model(model_config, cache_dir=cache_dir, show_progress=progress)
        models[model_seed] = record
        anchors = choose_anchors(model, preset, model_seed)
        for method in methods:
            for target in l0_targets:
                for variant in variants:
                    key = (model_seed, method, target, variant)
                    if key in done:
                        continue
                    data_seed = model_seed * 1000 + target
                    torch.manual_seed(data_seed)
                    sae = build_sae(preset, method, variant, target, device)
                    if VARIANTS[variant][0]:
                        sae.set_anchors(anchors)
                    facts = train_sae(
                        sae, model, preset, method, variant, target, data_seed, device, progress
                    )
                    scores = score_sae(sae, model, anchors, preset.eval_samples, data_seed + EVAL_SEED_OFFSET)
                    row = {
                        "model_seed": model_seed,
                        "held_out": model_seed != DEV_MODEL_SEED,
                        "method": method,
                        "target_l0": target,
                        "variant": variant,
                        "anchored": VARIANTS[variant][0],
                        "resampling": "theory" if VARIANTS[variant][1] else "none",
                        "ground_truth_used": VARIANTS[variant][0],
                        "training_samples": preset.training_samples,
                        "eval_samples": preset.eval_samples,
                        **facts,
                        **scores,
                        "anchor_features": anchors.indices.tolist(),
                    }
                    if out is not None:
                        folder = Path(out) / "saes" / f"seed{model_seed}-{method}-l0{target}-{variant}"
                        sae.save_inference_model(str(folder))
                        row["saved_to"] = str(folder.relative_to(out))
                    rows.append(row)
                    if on_row is not None:
                        on_row(results())
    return results()


def format_table(results: dict[str, Any]) -> str:
    """One line per (method, L0, variant): every metric per model seed (H: held out, D: development seed 42),
    the published number at L0 = 25 beside the method's stock row, and the budget."""
    config = results["config"]
    rows = results["rows"]
    budget = (
        f"{config['training_samples']:,} training samples per SAE ({100 * config['budget_fraction']:.2f}% of "
        f"the published {config['published_samples']:,})"
    )
    lines = [
        f"SynthSAEBench ({config['preset']}): {budget}; {config['eval_samples']:,} evaluation samples; "
        "scored by SAELens's eval_sae_on_synthetic_data",
    ]
    if not config["published_protocol"]:
        lines.append(
            "NOT the published protocol: the published numbers used 200M samples; compare rows, not to them"
        )
    header = (
        f"{'method':<22}{'L0':>4} {'variant':<16}{'seed':>6} {'MCC':>6} {'F1':>6} {'uniq':>6} {'EV':>7} "
        f"{'L0 got':>7} {'dead':>6} {'MCC-a':>6} {'F1-a':>6}"
    )
    lines += [header, "-" * len(header)]
    published = results.get("published", {}).get("values", {})
    for row in sorted(
        rows,
        key=lambda r: (r["method"], -r["target_l0"], list(VARIANTS).index(r["variant"]), r["model_seed"]),
    ):
        seed = f"{row['model_seed']}{'H' if row['held_out'] else 'D'}"
        lines.append(
            f"{row['method']:<22}{row['target_l0']:>4} {row['variant']:<16}{seed:>6} {row['mcc']:>6.3f} "
            f"{row['f1']:>6.3f} {row['uniqueness']:>6.3f} {row['explained_variance']:>7.3f} {row['l0']:>7.1f} "
            f"{row['dead_fraction']:>6.3f} {row['mcc_without_anchors']:>6.3f} {row['f1_without_anchors']:>6.3f}"
        )
    for method, values in published.items():
        lines.append(
            f"{method:<22}{25:>4} {'published':<16}{'200M':>6} {values['mcc']:>6.3f} {values['f1']:>6.3f} "
            f"{values['uniqueness']:>6.3f} {values['explained_variance']:>7.3f}"
        )
    lines.append("MCC-a / F1-a: without the anchor features and the latents matched to them (every row)")
    return "\n".join(lines)


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each non-stock variant against stock SAELens of the same (model seed, method, L0): the differences in
    MCC, F1 and explained variance (without the anchor features for MCC and F1), and whether the issue's
    goal (+0.02 MCC, +0.02 F1, at most -0.01 EV) holds."""
    stock = {
        (r["model_seed"], r["method"], r["target_l0"]): r for r in results["rows"] if r["variant"] == "stock"
    }
    out = []
    for row in results["rows"]:
        base = stock.get((row["model_seed"], row["method"], row["target_l0"]))
        if row["variant"] == "stock" or base is None:
            continue
        d_mcc = row["mcc_without_anchors"] - base["mcc_without_anchors"]
        d_f1 = row["f1_without_anchors"] - base["f1_without_anchors"]
        d_ev = row["explained_variance"] - base["explained_variance"]
        out.append(
            {
                "model_seed": row["model_seed"],
                "held_out": row["held_out"],
                "method": row["method"],
                "target_l0": row["target_l0"],
                "variant": row["variant"],
                "d_mcc": d_mcc,
                "d_f1": d_f1,
                "d_explained_variance": d_ev,
                "goal": d_mcc >= 0.02 and d_f1 >= 0.02 and d_ev >= -0.01,
            }
        )
    return out


def format_comparisons(results: dict[str, Any]) -> str:
    lines = [
        f"{'method':<22}{'L0':>4} {'variant':<16}{'seed':>6} {'dMCC-a':>7} {'dF1-a':>7} {'dEV':>7}  goal"
    ]
    for c in comparisons(results):
        seed = f"{c['model_seed']}{'H' if c['held_out'] else 'D'}"
        lines.append(
            f"{c['method']:<22}{c['target_l0']:>4} {c['variant']:<16}{seed:>6} {c['d_mcc']:>+7.3f} "
            f"{c['d_f1']:>+7.3f} {c['d_explained_variance']:>+7.3f}  {'yes' if c['goal'] else 'no'}"
        )
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """MCC and F1 (evaluator's, every row) against the measured L0, one marker per variant (the variants of
    one L0 drawn side by side, 0.15 apart, so that they do not hide each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = dict(zip(VARIANTS, "os^Dv", strict=True))
    methods = sorted({r["method"] for r in results["rows"]})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for axis, metric in zip(axes, ("mcc", "f1"), strict=True):
        for row in results["rows"]:
            spread = list(VARIANTS).index(row["variant"]) - (len(VARIANTS) - 1) / 2
            axis.scatter(
                row["l0"] + 0.15 * spread + (0.04 if row["method"] == methods[-1] else 0.0),
                row[metric],
                marker=markers[row["variant"]],
                color=colours[row["method"]],
                facecolors="none" if row["held_out"] else colours[row["method"]],
                s=40,
            )
        for method, values in results.get("published", {}).get("values", {}).items():
            if method in colours:
                axis.scatter(25, values[metric], marker="*", s=140, color=colours[method], edgecolors="black")
        axis.set_xlabel("L0 (measured; the variants drawn side by side)")
        axis.set_ylabel(metric.upper())
        axis.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], marker=m, linestyle="", color="grey", label=v) for v, m in markers.items()
    ] + [plt.Line2D([], [], marker="s", linestyle="", color=colours[m], label=m) for m in methods]
    handles.append(
        plt.Line2D([], [], marker="*", linestyle="", color="grey", markersize=12, label="published (200M)")
    )
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    config = results["config"]
    fig.suptitle(
        f"SynthSAEBench, {config['training_samples']:,} samples per SAE (filled: seed 42, hollow: held out)",
        fontsize=10,
    )
    fig.tight_layout()
    from sdl_anchor.io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    from sdl_anchor.io import atomic_write, write_json

    results = {**results, "comparisons": comparisons(results)}
    paths = [write_json(out / "results.json", results)]
    text = format_table(results) + "\n\n" + format_comparisons(results) + "\n"
    paths.append(atomic_write(out / "table.txt", lambda tmp: tmp.write_text(text)))
    paths.append(plot_results(results, out / "mcc_f1_vs_l0.png"))
    return paths


def claims(results: dict[str, Any]) -> list[str]:
    """One sentence per (method, model seed): every number from ``results``."""
    sentences = []
    by_cell: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for comparison in comparisons(results):
        key = (comparison["method"], comparison["target_l0"], comparison["model_seed"])
        by_cell.setdefault(key, []).append(comparison)
    stock = {
        (r["method"], r["target_l0"], r["model_seed"]): r for r in results["rows"] if r["variant"] == "stock"
    }
    for (method, target, seed), cell in sorted(by_cell.items()):
        base = stock[(method, target, seed)]
        best = max(cell, key=lambda c: c["d_mcc"] + c["d_f1"])
        met = [c["variant"] for c in cell if c["goal"]]
        kind = "held-out" if seed != DEV_MODEL_SEED else "development"
        sentences.append(
            f"{method}, L0 {target}, {kind} model seed {seed}: stock SAELens reaches MCC "
            f"{base['mcc_without_anchors']:.3f}, F1 {base['f1_without_anchors']:.3f} and explained variance "
            f"{base['explained_variance']:.3f} (without the anchor features); the best variant, {best['variant']}, "
            f"changes them by {best['d_mcc']:+.3f}, {best['d_f1']:+.3f} and {best['d_explained_variance']:+.3f}. "
            + (
                f"The goal (+0.02 MCC, +0.02 F1, at most -0.01 explained variance) is met by {', '.join(met)}."
                if met
                else "No variant meets the goal (+0.02 MCC, +0.02 F1, at most -0.01 explained variance)."
            )
        )
    return sentences


def render_report(command: str, results: dict[str, Any]) -> str:
    """The README's and docs' generated section for a ``bench synth`` run (see ``eval/lrb_report.py``)."""
    config = results["config"]
    seconds = sum(row["train_seconds"] for row in results["rows"])
    lines = [
        "```bash",
        command,
        "```",
        "",
        f"{len(results['rows'])} SAEs, {seconds / 60:.0f} minutes of training on 2 CPU cores; "
        f"{config['training_samples']:,} samples each, {100 * config['budget_fraction']:.2f}% of the published "
        f"protocol's {config['published_samples']:,}, so the published numbers below are not comparable to ours, "
        "only ours to each other.",
        "",
        "```",
        format_table(results),
        "```",
        "",
        "Against stock SAELens of the same method, L0 and model seed (without the anchor features):",
        "",
        "```",
        format_comparisons(results),
        "```",
        "",
        *[f"- {sentence}" for sentence in claims(results)],
    ]
    return "\n".join(lines)
