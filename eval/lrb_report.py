"""The README's and docs' ``bench lrb`` numbers, written from committed ``results.json`` files by this script,
never by hand.

A page holds a generated section between ``<!-- lrb-report NAME -->`` and ``<!-- /lrb-report NAME -->``
markers (``synth-report`` for ``bench synth``'s, rendered by
:func:`~sdl_anchor.eval.synth_bench.render_report`); :data:`REPORTS` names each section's results file and
the command that made it. The section has the command, the tables
(:func:`~sdl_anchor.eval.lrb_table.format_table`) and one paragraph per table row whose every number comes
from the held-out aggregate (:func:`claims`): what stock SAELens gets, what theory
resampling alone (no ground truth) gets, what anchoring adds over it and at what cost, the baselines, and
whether the goal is met.

A summary section (``<!-- lrb-summary NAME -->``, :data:`SUMMARIES`) puts several reports' rows side by side, one
line per table row: stock SAELens, theory resampling alone, self-anchoring with theory (the two without ground
truth) and anchored with theory, each as encoder and decoder M_GT and FVU, and the columns that meet the goal.

``python -m sdl_anchor.eval.lrb_report`` rewrites every section in place; ``--check`` only compares, exiting
1 when a page disagrees with its results (the test suite runs the check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdl_anchor.eval.lrb_presets import K_METHODS
from sdl_anchor.eval.lrb_protocol import GOAL_M_GT, aggregate, cell_key, column_key, meets_encoder_goal
from sdl_anchor.eval.lrb_table import (
    column_applies,
    format_table,
    row_label,
    seeds_sentence,
    short_column_name,
)


@dataclass(frozen=True)
class Report:
    """A generated section: its marker name, the results it reads and the command that wrote them."""

    name: str
    results: str  # relative to the repository root
    command: str
    pages: tuple[str, ...] = ("README.md",)
    kind: str = "lrb"  # "lrb" (bench lrb) or "synth" (bench synth, rendered by synth_bench.render_report)

    @property
    def tag(self) -> str:
        """The section markers' tag: ``lrb-report`` or ``synth-report``."""
        return f"{self.kind}-report"


REPORTS = (
    Report(
        "quick",
        "docs/assets/quick/results.json",
        "sdl-anchor bench lrb",
        ("README.md", "docs/index.md", "docs/results.md"),
    ),
    Report(
        "quick-heldout",
        "docs/assets/quick-heldout/results.json",
        "sdl-anchor bench lrb --preset quick --seeds 0,1,2,3 --interference bounded,negative "
        "--out runs/quick-heldout",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout",
        "docs/assets/paper-cpu-heldout/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods topk --k 32 --out runs/paper-cpu-heldout",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-batchtopk",
        "docs/assets/paper-cpu-heldout-batchtopk/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods batchtopk "
        "--out runs/paper-cpu-heldout-batchtopk",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-topk64",
        "docs/assets/paper-cpu-heldout-topk64/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods topk --k 64 "
        "--out runs/paper-cpu-heldout-topk64",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-negative",
        "docs/assets/paper-cpu-heldout-negative/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods topk --k 32 --interference negative "
        "--out runs/paper-cpu-heldout-negative",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-topk128",
        "docs/assets/paper-cpu-heldout-topk128/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods topk --k 128 "
        "--out runs/paper-cpu-heldout-topk128",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-matryoshka",
        "docs/assets/paper-cpu-heldout-matryoshka/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods matryoshka_batchtopk "
        "--out runs/paper-cpu-heldout-matryoshka",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-relu",
        "docs/assets/paper-cpu-heldout-relu/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods standard "
        "--out runs/paper-cpu-heldout-relu",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-transcoder",
        "docs/assets/paper-cpu-heldout-transcoder/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods transcoder "
        "--out runs/paper-cpu-heldout-transcoder",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "paper-cpu-heldout-transcoder-negative",
        "docs/assets/paper-cpu-heldout-transcoder-negative/results.json",
        "sdl-anchor bench lrb --preset paper-cpu --seeds 1,2,3 --methods transcoder --interference negative "
        "--out runs/paper-cpu-heldout-transcoder-negative",
        ("README.md", "docs/results.md"),
    ),
    Report(
        "synth-cpu",
        "docs/assets/synth-cpu/results.json",
        "sdl-anchor bench synth --preset synth-cpu --out runs/synth-cpu",
        ("README.md", "docs/synthsaebench.md"),
        kind="synth",
    ),
)


@dataclass(frozen=True)
class Summary:
    """A generated table across several reports (by name), one line per table row of each."""

    name: str
    reports: tuple[str, ...]
    pages: tuple[str, ...] = ("README.md",)
    tag: str = "lrb-summary"


SUMMARIES = (
    Summary(
        "paper-cpu",
        (
            "paper-cpu-heldout",
            "paper-cpu-heldout-batchtopk",
            "paper-cpu-heldout-topk64",
            "paper-cpu-heldout-topk128",
            "paper-cpu-heldout-negative",
            "paper-cpu-heldout-matryoshka",
            "paper-cpu-heldout-relu",
            "paper-cpu-heldout-transcoder",
            "paper-cpu-heldout-transcoder-negative",
        ),
        ("README.md", "docs/results.md"),
    ),
)

# the summary's columns: (variant, resampling) and heading; every one but the last uses no ground truth
SUMMARY_COLUMNS = (
    (("plain", "none"), "Stock SAELens (AuxK on)"),
    (("plain", "theory"), "Theory resampling alone"),
    (("self_anchored", "theory"), "Self-anchoring + theory"),
    (("aligned", "theory"), "Aligned encoder + theory"),
    (("anchored", "theory"), "Anchored + theory"),
)
NO_GROUND_TRUTH = {("plain", "none"), ("plain", "theory"), ("self_anchored", "theory"), ("aligned", "theory")}


def at_l0(config: dict[str, Any]) -> str:
    """``" at L0 N"`` for a row whose columns were matched to an L0 target, else ``""``."""
    target = config.get("l0_target")
    return "" if target is None else f" at L0 {target:g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _describe(cell: dict[str, Any]) -> str:
    flag = ", degenerate" if cell["degenerate"] else ""
    return (
        f"encoder M_GT {_pct(cell['M_GT_mean'])}, decoder M_GT {_pct(cell['M_GT_dec_mean'])}, MCC "
        f"{cell['MCC_mean']:.3f}, FVU {cell['fvu_mean']:.3f}, L0 {cell['l0_mean']:.1f}, dead "
        f"{_pct(cell['dead_fraction_mean'])}{flag}"
    )


def _table_rows(cells: list[dict[str, Any]]):
    """Each table row's key (interference, method, k) and its cells by column, in the order they ran."""
    for key in dict.fromkeys(cell_key(c) for c in cells):
        yield key, {column_key(c): c for c in cells if cell_key(c) == key}


def _standing(mine: dict[tuple[str, str], dict[str, Any]], method: str) -> str:
    """Which columns of one table row reach the encoder part of the goal and which lead on FVU, MCC and decoder
    M_GT (and, for ReLU and JumpReLU, whose L0 is free, on L0); columns level at the printed precision are
    named together, a degenerate one with its flag. The encoder part is
    :func:`~sdl_anchor.eval.lrb_protocol.meets_encoder_goal`'s."""

    def name(column: tuple[str, str]) -> str:
        return short_column_name(*column) + (" (degenerate)" if mine[column]["degenerate"] else "")

    def leaders(metric: str, best, shown) -> str:
        top = shown(best(cell[f"{metric}_mean"] for cell in mine.values()))
        named = [name(column) for column, cell in mine.items() if shown(cell[f"{metric}_mean"]) == top]
        return f"{', '.join(named)} ({top})"

    k_family = method in K_METHODS
    reached = [name(column) for column, cell in mine.items() if meets_encoder_goal(cell)]
    short = [name(column) for column, cell in mine.items() if not meets_encoder_goal(cell)]
    encoder = (
        f"Encoder M_GT at or above {_pct(GOAL_M_GT)}: {', '.join(reached) or 'no column'}; below: "
        if k_family
        else f"Encoder M_GT above 0: {', '.join(reached) or 'no column'}; at 0: "
    )
    leads = [] if k_family else [f"lowest L0: {leaders('l0', min, '{:.1f}'.format)}"]
    leads += [
        f"lowest FVU: {leaders('fvu', min, '{:.3f}'.format)}",
        f"highest MCC: {leaders('MCC', max, '{:.3f}'.format)}",
        f"highest decoder M_GT: {leaders('M_GT_dec', max, _pct)}",
    ]
    sentence = "; ".join(leads)
    return f"{encoder}{', '.join(short) or 'no column'}. {sentence[0].upper()}{sentence[1:]}."


def claims(results: dict[str, Any]) -> list[str]:
    """One paragraph per table row, every number from the held-out aggregate."""
    cells = aggregate(results["rows"], results["config"]["seeds"])
    paragraphs = []
    for key, mine in _table_rows(cells):
        mode, method, k = key
        seeds = sorted({seed for cell in mine.values() for seed in cell["seeds"]})
        parts = [
            f"**{row_label(method, k)}{at_l0(results['config'])}, {mode} interference** (seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))}):"
        ]
        plain = mine.get(("plain", "none"))
        if plain is not None:
            auxk = " (AuxK on)" if method in K_METHODS else ""  # SAELens's AuxK loss is the TopK family's
            parts.append(f"Stock SAELens{auxk}: {_describe(plain)}.")
        theory = mine.get(("plain", "theory"))
        if theory is not None:
            parts.append(f"Theory resampling alone, no ground truth: {_describe(theory)}.")
        ours = mine.get(("anchored", "theory"))
        if ours is not None and theory is not None:
            parts.append(
                f"Anchored + theory: {_describe(ours)}; over theory alone, anchoring adds "
                f"{100 * (ours['M_GT_mean'] - theory['M_GT_mean']):+.1f} points of encoder M_GT, "
                f"{100 * (ours['M_GT_dec_mean'] - theory['M_GT_dec_mean']):+.1f} of decoder M_GT and "
                f"{ours['MCC_mean'] - theory['MCC_mean']:+.3f} MCC, at {ours['fvu_mean'] / theory['fvu_mean']:.2f}x "
                "its FVU."
            )
        for column, name in (
            (("anchors", "none"), "The paper's method alone (Eq. 22, no self-anchoring)"),
            (("self_anchored", "theory"), "Self-anchoring + theory, no ground truth"),
            (("aligned", "theory"), "The aligned-encoder baseline + theory"),
        ):
            if column in mine:
                parts.append(f"{name}: {_describe(mine[column])}.")
        parts.append(_standing(mine, method))
        met = [short_column_name(*c) for c, cell in mine.items() if cell.get("goal")]
        parts.append(
            f"Goal met by: {', '.join(met)}."
            if met
            else "No column meets the goal"
            + (f" (anchored + theory: {ours['goal_reason']})." if ours is not None else ".")
        )
        paragraphs.append(" ".join(parts))
    summary = _summary(cells, results["config"]["n_anchors"])
    return paragraphs + ([summary] if summary else [])


SAME_POINTS = 1.0  # encoder M_GT differences under this many points count as "nothing"


def _compare(
    cells: list[dict[str, Any]], ours: tuple[str, str], base: tuple[str, str]
) -> dict[str, list[str]]:
    """The table rows where column ``ours`` is ahead of, level with or behind column ``base`` in encoder M_GT
    (by ``SAME_POINTS``), a degenerate ``ours`` counting as no gain."""
    verdicts: dict[str, list[str]] = {"adds": [], "nothing": [], "loses": []}
    for key, mine in _table_rows(cells):
        if ours not in mine or base not in mine:
            continue
        delta = 100 * (mine[ours]["M_GT_mean"] - mine[base]["M_GT_mean"])
        name = f"{row_label(key[1], key[2])} {key[0]} ({delta:+.1f})"
        if delta <= -SAME_POINTS:
            verdicts["loses"].append(name)
        elif delta < SAME_POINTS or mine[ours]["degenerate"]:
            verdicts["nothing"].append(name + (", degenerate" if mine[ours]["degenerate"] else ""))
        else:
            verdicts["adds"].append(name)
    return verdicts


def _summary(cells: list[dict[str, Any]], n_anchors: int) -> str | None:
    """Across rows: what the ground-truth anchors add over theory resampling alone and over self-anchoring
    alone, and what self-anchoring adds over the aligned tie (points of encoder M_GT)."""
    sentences = []
    for ours, base, what in (
        (
            ("anchored", "theory"),
            ("plain", "theory"),
            "Anchoring (anchors + self-anchoring) over theory alone",
        ),
        (
            ("anchored", "theory"),
            ("self_anchored", "theory"),
            f"The {n_anchors} ground-truth anchors over none",
        ),
        (("self_anchored", "theory"), ("aligned", "theory"), "Self-anchoring over the aligned tie"),
    ):
        verdicts = _compare(cells, ours, base)
        if not any(verdicts.values()):
            continue
        said = [f"{verdict} on {', '.join(rows)}" for verdict, rows in verdicts.items() if rows]
        sentences.append(f"{what}, encoder M_GT points: {'; '.join(said)}.")
    return " ".join(sentences) if sentences else None


def render(report: Report, results: dict[str, Any]) -> str:
    """The section's markdown: the command, the tables, the claims."""
    if report.kind == "synth":
        from sdl_anchor.eval.synth_bench import render_report

        return render_report(report.command, results)
    config = results["config"]
    lines = [
        "```bash",
        report.command,
        "```",
        "",
        f"{len(results['rows'])} runs, {config['wall_seconds'] / 60:.0f} minutes of wall time on 2 CPU cores; "
        f"{seeds_sentence(config)}.",
        "",
        "```",
        format_table(results),
        "```",
        "",
        *[f"- {paragraph}" for paragraph in claims(results)],
    ]
    return "\n".join(lines)


# why a method has no cell in some summary column (lrb_table.column_applies)
WHY_NOT_APPLICABLE = {
    "transcoder": "A transcoder has no aligned encoder: its encoder reads one space, its decoder writes another.",
    "clt": "A CLT runs neither self-anchoring nor the aligned encoder.",
}


def _summary_cell(cell: dict[str, Any] | None, method: str, variant: str) -> str:
    if cell is None:
        return "not run" if column_applies(method, variant) else "does not apply"
    text = f"{100 * cell['M_GT_mean']:.1f} / {100 * cell['M_GT_dec_mean']:.1f}, {cell['fvu_mean']:.3f}"
    return text + (" (degenerate)" if cell["degenerate"] else "")


def render_summary(summary: Summary, root: Path) -> str:
    """The summary's markdown: one line per table row of its reports, then how many rows meet the goal and
    how many of those by a column that uses no ground truth."""
    by_name = {report.name: report for report in REPORTS}
    lines = [
        "| Row (held-out seeds) | "
        + " | ".join(heading for _, heading in SUMMARY_COLUMNS)
        + " | Goal met by |",
        "|---" * (len(SUMMARY_COLUMNS) + 2) + "|",
    ]
    met_rows, met_without_truth, without_columns = [], [], []
    for name in summary.reports:
        results = json.loads((root / by_name[name].results).read_text())
        cells = aggregate(results["rows"], results["config"]["seeds"])
        for key, mine in _table_rows(cells):
            seeds = sorted({seed for cell in mine.values() for seed in cell["seeds"]})
            label = f"{row_label(key[1], key[2])}{at_l0(results['config'])}, {key[0]}"
            met = [column for column, cell in mine.items() if cell.get("goal")]
            if met:
                met_rows.append(label)
                if any(column in NO_GROUND_TRUTH for column in met):
                    met_without_truth.append(label)
            label += f" ({','.join(map(str, seeds))})"
            cells_text = [_summary_cell(mine.get(column), key[1], column[0]) for column, _ in SUMMARY_COLUMNS]
            if not all(column_applies(key[1], column[0]) for column, _ in SUMMARY_COLUMNS):
                without_columns.append(key[1])
            goal_text = ", ".join(short_column_name(*column) for column in met) or "none"
            lines.append(f"| {label} | " + " | ".join(cells_text) + f" | {goal_text} |")
    n_rows = len(lines) - 2
    lines += [
        "",
        "Each cell: encoder M_GT % / decoder M_GT %, FVU; the mean over the row's held-out seeds. Only the "
        "anchored column uses ground truth (its anchors, which are not scored)."
        + "".join(f" {WHY_NOT_APPLICABLE[method]}" for method in dict.fromkeys(without_columns)),
        "",
        f"The goal is met on {len(met_rows)} of {n_rows} rows"
        + (f" ({'; '.join(met_rows)})" if met_rows else "")
        + (f", on {len(met_without_truth)} of them by a column without ground truth." if met_rows else "."),
    ]
    return "\n".join(lines)


def _markers(report: Report | Summary) -> tuple[str, str]:
    return f"<!-- {report.tag} {report.name} -->", f"<!-- /{report.tag} {report.name} -->"


def updated_page(text: str, report: Report | Summary, section: str) -> str:
    """``text`` with ``report``'s section replaced by ``section`` (ValueError when its markers are missing)."""
    start, end = _markers(report)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"the page has no {start} ... {end} section; add the two markers where it goes")
    return pattern.sub(lambda _: f"{start}\n{section}\n{end}", text, count=1)


def stale_pages(root: Path, write: bool) -> list[str]:
    """The pages whose generated sections differ from their results (rewritten when ``write``)."""
    stale = []
    sections: list[tuple[Report | Summary, str]] = [
        (report, render(report, json.loads((root / report.results).read_text()))) for report in REPORTS
    ]
    sections += [(summary, render_summary(summary, root)) for summary in SUMMARIES]
    for report, section in sections:
        for page in report.pages:
            path = root / page
            text = path.read_text()
            new = updated_page(text, report, section)
            if new != text:
                stale.append(f"{page} ({report.name})")
                if write:
                    path.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root (default: here)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a page is stale")
    args = parser.parse_args(argv)
    stale = stale_pages(args.root, write=not args.check)
    for page in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {page}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
