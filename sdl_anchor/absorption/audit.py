"""``sdl-anchor audit absorption``: the first-letter absorption audit of a pretrained or saved SAELens SAE.

Loads the SAE (``SAE.from_pretrained(release, sae_id)`` or ``SAE.load_from_disk(path)``) and the model
(as training loads it: ``HookedTransformer.from_pretrained_no_processing(name, **kwargs)`` with the SAE's
recorded ``model_from_pretrained_kwargs``, or a local Hugging Face checkpoint with its tokenizer through
TransformerLens's ``TransformerBridge.boot_transformers(path)``), runs
:func:`~sdl_anchor.absorption.real.concept_absorption` on the first-letter task at the SAE's own hook, and
writes ``absorption.json`` (SAEBench's key names, plus ``per_letter``) and a readable ``report.html`` with
its ``report.png``.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from sdl_anchor.absorption.concepts import default_cache_dir, first_letter_concepts
from sdl_anchor.absorption.real import concept_absorption
from sdl_anchor.io import atomic_write, write_json

HEADLINE_KEYS = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features")
PER_LETTER_KEYS = (
    "absorption_fraction",
    "full_absorption",
    "num_split_features",
    "probe_f1",
    "main_latents",
    "num_probe_true_positives",
    "num_full_absorption",
    "absorbed_words",
)


def per_letter(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """DESIGN.md's ``per_letter``: the scored letters' numbers, and ``skipped`` with a reason for the rest."""
    letters = {}
    for letter, entry in sorted(result["per_class"].items()):
        if "skipped" in entry:
            letters[letter] = {
                "skipped": entry["skipped"],
                **({"probe_f1": entry["probe_f1"]} if "probe_f1" in entry else {}),
            }
        else:
            letters[letter] = {key: entry[key] for key in PER_LETTER_KEYS}
    return letters


def audit_absorption(
    model: Any,
    sae: Any,
    *,
    model_label: str,
    sae_label: str,
    seed: int = 0,
    max_words: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The contents of ``absorption.json`` for ``sae`` on ``model``."""
    started = time.perf_counter()
    concepts = first_letter_concepts(model.tokenizer, max_words=max_words, seed=seed)
    result = concept_absorption(model, sae, concepts, seed=seed, cache_dir=cache_dir, progress=progress)
    letters = per_letter(result)
    metrics = {
        key: result[key]
        for key in (
            *HEADLINE_KEYS,
            "std_dev_absorption_fraction_score",
            "std_dev_full_absorption_score",
            "std_dev_num_split_features",
        )
    }
    return {
        "eval_type_id": result["eval_type_id"],
        **metrics,
        "per_letter": letters,
        "eval_result_metrics": {"mean": metrics},  # SAEBench's layout
        "eval_result_details": [
            {
                "first_letter": letter,
                "mean_absorption_fraction": entry["absorption_fraction"],
                "full_absorption_rate": entry["full_absorption"],
                "num_full_absorption": entry["num_full_absorption"],
                "num_probe_true_positives": entry["num_probe_true_positives"],
                "num_split_features": entry["num_split_features"],
            }
            for letter, entry in letters.items()
            if "skipped" not in entry
        ],
        "model": model_label,
        "sae": sae_label,
        "d_sae": int(sae.cfg.d_sae),
        "n_words": result["n_words"],
        "n_words_single_token": result["n_words_single_token"],
        "config": result["config"],
        "wall_seconds": time.perf_counter() - started,
    }


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Bars of the absorption fraction and full-absorption rate per scored letter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = {k: v for k, v in report["per_letter"].items() if "skipped" not in v}
    letters = list(scored)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(letters) + 2), 3.6))
    positions = range(len(letters))
    ax.bar(
        [p - 0.2 for p in positions],
        [scored[k]["absorption_fraction"] for k in letters],
        0.4,
        label="absorption fraction",
    )
    ax.bar(
        [p + 0.2 for p in positions],
        [scored[k]["full_absorption"] for k in letters],
        0.4,
        label="full absorption",
    )
    ax.set_xticks(list(positions), letters)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("first letter")
    ax.legend(fontsize=8)
    ax.set_title(
        f"{report['sae']} on {report['model']}: mean absorption fraction "
        f"{report['mean_absorption_fraction_score']:.3f}, full {report['mean_full_absorption_score']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def html_report(report: dict[str, Any], png: Path, path: Path) -> Path:
    """A self-contained page: the headline numbers, the plot, and one table row per letter."""
    image = base64.b64encode(png.read_bytes()).decode()
    rows = []
    for letter, entry in report["per_letter"].items():
        if "skipped" in entry:
            rows.append(
                f"<tr><td>{html.escape(letter)}</td><td colspan=6>skipped: {html.escape(entry['skipped'])}</td></tr>"
            )
            continue
        words = ", ".join(html.escape(w["word"]) for w in entry["absorbed_words"][:8])
        rows.append(
            f"<tr><td>{html.escape(letter)}</td><td>{entry['absorption_fraction']:.3f}</td>"
            f"<td>{entry['full_absorption']:.3f}</td><td>{entry['num_split_features']}</td>"
            f"<td>{entry['probe_f1']:.3f}</td><td>{entry['main_latents']}</td><td>{words}</td></tr>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Absorption audit: {html.escape(report["sae"])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style></head><body>
<h1>First-letter absorption audit</h1>
<p>SAE <b>{html.escape(report["sae"])}</b> (d_sae {report["d_sae"]}) on model <b>{html.escape(report["model"])}</b>,
hook <code>{html.escape(report["config"]["hook_name"])}</code>; {report["n_words_single_token"]} single-token words.</p>
<p>mean absorption fraction <b>{report["mean_absorption_fraction_score"]:.4f}</b>,
mean full absorption <b>{report["mean_full_absorption_score"]:.4f}</b>,
mean split features <b>{report["mean_num_split_features"]:.2f}</b> (SAEBench's absorption_first_letter metric).</p>
<img src="data:image/png;base64,{image}" alt="absorption per letter">
<table><tr><th>letter</th><th>absorption fraction</th><th>full absorption</th><th>split features</th>
<th>probe F1</th><th>main latents</th><th>absorbed words (first 8)</th></tr>
{"".join(rows)}
</table></body></html>
"""
    return atomic_write(path, lambda tmp: tmp.write_text(page))


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``absorption.json``, ``report.png`` and ``report.html`` in ``out``."""
    png = plot_report(report, out / "report.png")
    return [write_json(out / "absorption.json", report), png, html_report(report, png, out / "report.html")]


__all__ = ["audit_absorption", "default_cache_dir", "write_report"]
