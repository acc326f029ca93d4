"""Audit a saved SAE for first-letter feature absorption, and read the report.

By default, offline: a tiny model whose word embeddings carry each word's first letter along a known
direction (``sdl_anchor.testing.planted``), and an SAE saved in SAELens's format that has one latent per
letter, except that it absorbs half of the words starting with "a" to "e" into latents of their own. The
true absorption is 0.5 for those five letters and 0 for the rest. The audit (the same code as
``sdl-anchor audit absorption``) loads the SAE back from disk, finds each letter's main latent by probing,
and scores the held-out words (a fifth of each letter's words, so a letter's score is the absorbed share
of those few and scatters around 0.5). It prints the per-letter table next to the truth, checks that every
word it calls absorbed was planted as absorbed, and writes ``absorption.json``, ``report.png`` and
``report.html`` to ``--out``.

A pretrained SAELens SAE on a real model (online, GPU recommended):

    python examples/audit_saved_sae_absorption.py --release gpt2-small-res-jb \\
        --sae-id blocks.8.hook_resid_pre --model gpt2 --device cuda

which is what ``sdl-anchor audit absorption --release ... --sae-id ... --model gpt2 --out DIR`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sdl_anchor.absorption.audit import audit_absorption, write_report
from sdl_anchor.integrations.loading import load_model, load_sae, model_kwargs_of
from sdl_anchor.testing.planted import planted_letter_model, planted_letter_sae

LETTERS = "abcdefghij"
ABSORBING = "abcde"
HOOK = "blocks.0.hook_resid_pre"


def planted_case(folder: Path) -> tuple[Any, dict[str, float], set[str]]:
    """The offline model and the SAE saved to ``folder``; returns the model, the true absorption per
    letter and the absorbed words."""
    planted = planted_letter_model(LETTERS, words_per_letter=40)
    absorbed = [w for letter in ABSORBING for w in [w for w in planted.words if w[0] == letter][::2]]
    planted_letter_sae(planted, absorbed, HOOK).save_model(str(folder))
    return planted.model, {letter: 0.5 if letter in ABSORBING else 0.0 for letter in LETTERS}, set(absorbed)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--release", help="a SAELens release (with --sae-id and --model); default: offline")
    parser.add_argument("--sae-id", help="the SAE's id within --release")
    parser.add_argument("--model", help="the TransformerLens model the SAE was trained on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/absorption-audit-example"))
    args = parser.parse_args(argv)
    if args.release is not None:
        if args.sae_id is None or args.model is None:
            parser.error("--release needs --sae-id and --model")
        sae = load_sae(None, args.release, args.sae_id, args.device)
        model = load_model(args.model, None, args.device, model_kwargs_of(sae))
        label = f"{args.release}/{args.sae_id}"
        truth: dict[str, float] = {}
        planted: set[str] | None = None
    else:
        model, truth, planted = planted_case(args.out / "sae")
        sae, label = load_sae(args.out / "sae", None, None, args.device), str(args.out / "sae")
    report = audit_absorption(model, sae, model_label=args.model or "planted letters", sae_label=label)
    print(f"mean absorption fraction {report['mean_absorption_fraction_score']:.3f}")
    print(f"{'letter':<7} {'absorption':>10} {'full':>6} {'truth':>6}  main latents  (truth: over all words)")
    for letter, entry in report["per_letter"].items():
        if "skipped" in entry:
            print(f"{letter:<7} skipped: {entry['skipped']}")
            continue
        expected = f"{truth[letter]:.2f}" if letter in truth else "?"
        print(
            f"{letter:<7} {entry['absorption_fraction']:>10.3f} {entry['full_absorption']:>6.3f} "
            f"{expected:>6}  {entry['main_latents']}"
        )
    if planted is not None:
        flagged = {w["word"] for e in report["per_letter"].values() for w in e.get("absorbed_words", [])}
        print(
            f"{len(flagged)} held-out words flagged as absorbed; all planted as absorbed: {flagged <= planted}"
        )
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
