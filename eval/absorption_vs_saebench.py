"""Our first-letter absorption audit against SAEBench 0.6.0's, on the same tiny model and SAEs (issue 6).

Builds the planted first-letter model (:mod:`sdl_anchor.testing.planted`: 26 letters, attention and MLP
outputs zeroed so ``blocks.0.hook_resid_post``, the hook SAEBench always reads, carries the planted
directions) and SAEs of known absorption, then times ``concept_absorption`` (no activation cache) here and
SAEBench's ``run_eval`` in the virtual environment given by ``--saebench-python`` (SAEBench pins numpy<2),
one fresh process; prints both, the truth, and the speed-up. Two presets:

- ``toy``: 1 layer, 30 words per letter, orthonormal directions (d_model 832); a clean SAE (true absorption
  0) and one where half the words of the first 13 letters are absorbed (true mean absorption 0.25).
- ``realistic``: the shape of a real audit of an early-layer SAE: 4 layers (the SAE reads layer 0), 200
  words per letter (a 5,200-token vocabulary), d_model 256, and a clean SAE with a latent per letter and per
  word (d_sae 5,226).

``python -m sdl_anchor.eval.absorption_vs_saebench --saebench-python VENV/bin/python [--preset P] [--out F]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from sdl_anchor.absorption import concept_absorption, first_letter_concepts
from sdl_anchor.absorption.audit import HEADLINE_KEYS
from sdl_anchor.testing.planted import planted_letter_model, planted_letter_sae

LETTERS = "abcdefghijklmnopqrstuvwxyz"
HOOK = "blocks.0.hook_resid_post"
CONFIG_FIELDS = (
    "n_layers", "d_model", "d_head", "n_heads", "d_mlp", "d_vocab", "n_ctx", "act_fn", "normalization_type",
    "tokenizer_prepends_bos", "default_prepend_bos",
)  # fmt: skip


PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"words_per_letter": 30, "n_layers": 1, "d_model": None, "realistic": False},
    "realistic": {"words_per_letter": 200, "n_layers": 4, "d_model": 256, "realistic": True},
}


def build(folder: Path, preset: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """Save the model (config, weights, tokenizer); return it, the SAEs and their true scores."""
    planted = planted_letter_model(
        LETTERS, preset["words_per_letter"], preset["d_model"], pass_through=True, n_layers=preset["n_layers"]
    )
    model = planted.model
    (folder / "model").mkdir(parents=True)
    config = {name: getattr(model.cfg, name) for name in CONFIG_FIELDS}
    (folder / "model" / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model" / "model.safetensors"),
    )
    model.tokenizer.save_pretrained(str(folder / "model" / "tokenizer"))
    if preset["realistic"]:
        return model, {"clean": planted_letter_sae(planted, (), HOOK, word_latents=True)}, {"clean": 0.0}
    absorbed = [w for w in planted.words if w[0] in LETTERS[:13]][::2]
    saes = {
        "clean": planted_letter_sae(planted, (), HOOK),
        "half_of_13_letters": planted_letter_sae(planted, absorbed, HOOK),
    }
    truth = {"clean": 0.0, "half_of_13_letters": 13 * 0.5 / 26}
    return model, saes, truth


def compare(preset_name: str, saebench_python: str) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Audit every SAE of the preset here and with SAEBench (a fresh process); return the model and
    ``{sae: {"ours": {...}, "saebench": {...}, "truth_mean_absorption": float}}`` (seconds and headline keys)."""
    preset = PRESETS[preset_name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, saes, truth = build(folder, preset)
        for name, sae in saes.items():
            sae.save_model(str(folder / name))
        rows: dict[str, dict[str, Any]] = {}
        for name, sae in saes.items():
            started = time.perf_counter()
            result = concept_absorption(
                model, sae, first_letter_concepts(model.tokenizer), hook_name=HOOK, progress=False
            )
            rows[name] = {
                "ours": {"seconds": time.perf_counter() - started, **{k: result[k] for k in HEADLINE_KEYS}},
                "truth_mean_absorption": truth[name],
            }
        runner = Path(__file__).with_name("saebench_absorption_runner.py")
        command = [
            saebench_python,
            str(runner),
            str(folder / "model"),
            str(folder / "saebench"),
            *(str(folder / n) for n in saes),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=folder, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"SAEBench failed:\n{completed.stderr[-4000:]}")
        for line in completed.stdout.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                rows[entry.pop("sae")]["saebench"] = entry
    return model, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--saebench-python", required=True, help="python of a venv with sae-bench==0.6.0")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    try:
        model, rows = compare(args.preset, args.saebench_python)
    except RuntimeError as err:
        raise SystemExit(str(err)) from err
    print(
        f"first-letter absorption, planted {preset['n_layers']}-layer model (26 letters x "
        f"{preset['words_per_letter']} words, d_model {model.cfg.d_model}), CPU"
    )
    print(
        f"{'SAE':<20} {'truth':>6} | {'ours AF / full / split':>24} {'s':>6} | {'SAEBench AF / full / split':>27} {'s':>6} | speed-up"
    )
    for name, row in rows.items():
        ours, theirs = row["ours"], row.get("saebench", {})
        cells = [f"{r.get(k, float('nan')):.3f}" for r in (ours, theirs) for k in HEADLINE_KEYS]
        print(
            f"{name:<20} {row['truth_mean_absorption']:>6.3f} | {' / '.join(cells[:3]):>24} {ours['seconds']:>6.1f} | "
            f"{' / '.join(cells[3:]):>27} {theirs.get('seconds', float('nan')):>6.1f} | "
            f"{theirs.get('seconds', float('nan')) / ours['seconds']:.1f}x"
        )
    if args.out is not None:
        from sdl_anchor.io import write_json

        write_json(args.out, rows)


if __name__ == "__main__":
    main()
