"""Self-anchoring coefficients against one method at the paper's dimensions, on a short budget.

Why ``paper-cpu`` starts ReLU's and JumpReLU's self-anchoring late: on from the first step, it stalls their
training (the decoder stays near its random start, L0 in the hundreds or thousands, FVU near 0.9). This
script measures that, and a later start (``--start-step``): each coefficient and target trains the method
from the same start, next to a plain run and an anchors-only run (coefficient 0), and prints encoder and
decoder M_IP, M_GT, L0 and FVU.

``python -m sdl_anchor.eval.self_anchor_sweep --method standard --d-sae 4000 --steps 120``
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from sdl_anchor.eval.lrb_table import PRESETS, run_lrb_bench

DEFAULT_COEFFICIENTS = (0.1, 0.01, 0.001)


def self_anchor_sweep(
    method: str = "standard",
    preset: str = "paper-cpu",
    d_sae: int | None = 4000,
    n_steps: int = 120,
    coefficients: tuple[float, ...] = DEFAULT_COEFFICIENTS,
    targets: tuple[str, ...] = ("decoder", "inputs"),
    start_step: int = 0,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One row for plain, one for the anchors alone, and one per (target, coefficient), self-anchoring from
    ``start_step`` on."""
    base = PRESETS[preset]
    runs: list[tuple[str, float, str]] = [("plain", 0.0, "-"), ("anchored", 0.0, "-")]
    runs += [("anchored", c, t) for t in targets for c in coefficients]
    rows = []
    for variant, coefficient, target in runs:
        settings = {m: dict(s) for m, s in base.method_settings.items()}
        settings[method].update(
            n_steps=n_steps, self_anchor_coefficient=coefficient, self_anchor_start=start_step / n_steps
        )
        if target != "-":
            settings[method]["self_anchor_target"] = target
        sized = replace(
            base, d_sae=d_sae or base.d_sae, recovery_points=0, method_settings=settings, topk_ks=()
        )
        result = run_lrb_bench(
            sized, methods=(method,), variants=(variant,), resampling=("none",), device=device, progress=False
        )
        row = result["rows"][-1]
        rows.append(
            {
                "variant": variant,
                "self_anchor_coefficient": coefficient,
                "self_anchor_target": target,
                "self_anchor_start_step": start_step,
                **{key: row[key] for key in ("M_GT", "M_IP", "M_GT_dec", "M_IP_dec", "l0", "fvu")},
                "seconds": row["train_seconds"],
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'variant':<9} {'self-anchor':>11} {'target':<8} {'M_GT':>6} {'M_IP':>6} {'dec M_GT':>8} "
        f"{'dec M_IP':>8} {'L0':>8} {'FVU':>6} {'s':>5}"
    ]
    for r in rows:
        lines.append(
            f"{r['variant']:<9} {r['self_anchor_coefficient']:>11g} {r['self_anchor_target']:<8} "
            f"{100 * r['M_GT']:>5.1f}% {r['M_IP']:>6.3f} {100 * r['M_GT_dec']:>7.1f}% {r['M_IP_dec']:>8.3f} "
            f"{r['l0']:>8.1f} {r['fvu']:>6.3f} {r['seconds']:>5.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="standard", help="a bench lrb method (default: standard, ReLU)")
    parser.add_argument("--preset", default="paper-cpu")
    parser.add_argument("--d-sae", type=int, default=4000, help="width (default 4000; 0: the preset's)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--start-step", type=int, default=0, help="the step self-anchoring starts at")
    parser.add_argument("--coefficients", default="0.1,0.01,0.001")
    parser.add_argument("--targets", default="decoder,inputs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rows = self_anchor_sweep(
        args.method,
        args.preset,
        args.d_sae,
        args.steps,
        coefficients=tuple(float(c) for c in args.coefficients.split(",")),
        targets=tuple(args.targets.split(",")),
        start_step=args.start_step,
        device=args.device,
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main()
