"""``sdl-anchor train --architecture <activation>_clt --layers all|0,1,...``: one cross-layer transcoder over
the chosen layers (:mod:`sdl_anchor.integrations.clt_training`), saved to ``DIR/clt`` (SAELens's format,
architecture ``cross_layer_transcoder``, plus ``manifest.json``), with ``DIR/train.json`` holding the manifest,
the run's size and the spliced evaluation (``clt/ce_loss_score``: every layer's MLP output replaced by the
CLT's reconstruction at once; ``layer_<L>/...``: each layer alone), of the CLT as saved and loaded back.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any


def check_clt_flags(ours: argparse.Namespace, runner_args: list[str]) -> None:
    """Flags a CLT cannot take, refused before a model loads."""
    if ours.layers is None:
        raise ValueError(
            "a cross-layer transcoder reads every layer it spans: give --layers all (or e.g. --layers 0,1,2); "
            "--hook-names / --hook_name train single coders"
        )
    if ours.duplicate_cosine is not None:
        raise ValueError("--duplicate-cosine is not supported for cross-layer transcoders yet; drop it")


def train_clt(
    ours: argparse.Namespace,
    config: Any,
    model: Any,
    resampling: Any,
    clt_path: Path,
    summary_path: Path,
    partial: Path,
    started: float,
) -> int:
    """Train the CLT into ``partial``, rename it onto ``clt_path``, write the summary; return the exit code."""
    from sdl_anchor.cli.train import count_forward_passes
    from sdl_anchor.integrations.clt_training import CLTBundle, CrossLayerTranscoderRunner
    from sdl_anchor.integrations.transcoder_set import DEFAULT_LAYER_HOOKS
    from sdl_anchor.io import write_json

    hooks = tuple(ours.layer_hooks or DEFAULT_LAYER_HOOKS)
    try:
        runner = CrossLayerTranscoderRunner(
            config, layers=ours.layers, hooks=hooks, override_model=model, resampling=resampling
        )
        passes = count_forward_passes(runner.model)
        bundle = runner.run()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    shutil.rmtree(clt_path, ignore_errors=True)
    partial.rename(clt_path)  # the CLT is kept first: whatever fails below, it is on disk
    print(f"wrote {clt_path}")
    training_passes = passes["count"]
    saved = CLTBundle.load(
        clt_path, device=str(runner.sae.device)
    )  # evaluated as saved (BatchTopK: JumpReLU)
    summary = {
        **bundle.manifest(),
        "kind": "cross_layer_transcoder",
        "training_tokens": config.training_tokens,
        "n_steps": config.training_tokens // config.train_batch_size_tokens,
        "model_forward_passes": training_passes,
        "wall_seconds": seconds,
        "clt_path": str(clt_path),
        "eval": runner.evaluator(saved.coder),
    }
    resampling_record = getattr(runner.sae.cfg.metadata, "resampling", None)
    if resampling_record:
        summary["resampling"] = resampling_record
    path = write_json(summary_path, summary)
    print(
        f"trained a {summary['architecture']} cross-layer transcoder over layers "
        f"{','.join(map(str, bundle.layers))} in {seconds:.1f} s from {training_passes} model forward passes"
    )
    for key, value in summary["eval"].items():
        print(f"  {key}: {value:.4f}")
    print(f"wrote {path}")
    return 0
