"""``sdl-anchor train --architecture <activation>_clt --layers all|0,1,...``: one cross-layer transcoder over
the chosen layers (:mod:`sdl_anchor.integrations.clt_training`), saved to ``DIR/clt`` (SAELens's format,
architecture ``cross_layer_transcoder``, plus ``manifest.json``), with ``DIR/train.json`` holding the manifest,
the run's size and the spliced evaluation (``clt/ce_loss_score``: every layer's MLP output replaced by the
CLT's reconstruction at once; ``layer_<L>/...``: each layer alone), of the CLT as saved and loaded back.
"""

from __future__ import annotations

import argparse
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
    from sdl_anchor.cli.train import LayerCoderRun, train_layer_coder
    from sdl_anchor.integrations.clt_training import CLTBundle, CrossLayerTranscoderRunner

    def evaluate(runner: Any, saved_path: Path) -> dict[str, float]:
        saved = CLTBundle.load(saved_path, device=str(runner.sae.device))  # as saved (BatchTopK: JumpReLU)
        return runner.evaluator(saved.coder)

    def records(runner: Any) -> dict[str, Any]:  # resampling events; the sparse step's kernel choice
        metadata = runner.sae.cfg.metadata
        return {
            key: getattr(metadata, key) for key in ("resampling", "kernels") if getattr(metadata, key, None)
        }

    run = LayerCoderRun(
        runner_class=CrossLayerTranscoderRunner,
        kind="cross_layer_transcoder",
        path_key="clt_path",
        evaluate=evaluate,
        record=records,
        sentence="trained a {architecture} cross-layer transcoder over layers {layers} in {seconds:.1f} s from "
        "{training_passes} model forward passes",
    )
    return train_layer_coder(ours, config, model, resampling, clt_path, summary_path, partial, started, run)
