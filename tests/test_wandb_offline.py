"""What reaches W&B, read back from offline runs' files: training losses and metrics through SAELens's
logger, resampling events, LRB recovery over training, and the CLI's result tables and plots."""

import json
import warnings

import pytest
import torch
from sae_lens.config import LoggingConfig
from wandb_records import logged_history, offline_runs

import sdl_anchor as sa


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


def test_training_on_the_lrb_logs_anchor_resampling_and_recovery_keys(wandb_dir):
    bench = sa.LinearRepresentationBench(n_features=48, d_in=32, sparsity=0.95, max_interference=0.4, seed=0)
    anchor_path = bench.anchors(k=8).save(wandb_dir / "anchors.safetensors")
    torch.manual_seed(0)
    sae = sa.AnchoredTopKTrainingSAE(
        sa.AnchoredTopKTrainingSAEConfig(d_in=32, d_sae=96, k=4, anchor_path=str(anchor_path))
    )
    with torch.no_grad():
        sae.b_enc[48:] = -100.0  # half the latents start dead, so the event resamples some
    logger = LoggingConfig(
        log_to_wandb=True, wandb_project="sdl-anchor-test", wandb_log_frequency=5, eval_every_n_wandb_logs=4
    )
    resampling = sa.ResamplingConfig(strategy="theory", every_n_steps=20, max_events=1, pool_size=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sa.train_on_bench(
            sae, bench, n_steps=60, batch_size=128, lr=3e-3, logger=logger, resampling=resampling,
            show_progress=False,
        )  # fmt: skip
    (run,) = offline_runs(wandb_dir)
    history = logged_history(run)
    for key in ("losses/anchor_loss", "losses/mse_loss", "metrics/anchor_cosine", "lrb/M_GT", "lrb/M_IP"):
        assert key in history, f"{key} was not logged; logged: {sorted(history)}"
    assert len(history["lrb/M_GT"]) == 3  # steps 20, 40 and 60: every 5 x 4 steps
    assert all(0.0 <= float(v) <= 1.0 for v in history["lrb/M_GT"] + history["metrics/anchor_cosine"])
    assert json.loads(history["resample/events"][0]) == 1.0
    assert json.loads(history["resample/latents"][0]) >= 40  # the planted-dead latents were rewritten
    for key in ("resample/dead_before", "resample/split", "resample/loss_before", "resample/loss_after"):
        assert key in history


def test_bench_lrb_logs_its_table_and_plot(wandb_dir):
    from sdl_anchor.cli import main

    out = wandb_dir / "bench"
    argv = ["bench", "lrb", "--steps", "10", "--methods", "topk", "--variants", "plain"]
    argv += ["--resampling", "none", "--interference", "bounded", "--out", str(out), "--no-progress"]
    argv += ["--wandb-project", "sdl-anchor-test"]
    assert main(argv) == 0
    (run,) = offline_runs(out)
    history = logged_history(run)
    assert json.loads(history["lrb/results/_type"][0]) == "table-file"
    assert json.loads(history["lrb/results/nrows"][0]) == 1
    assert json.loads(history["lrb/recovery/_type"][0]) == "image-file"
    (table,) = run.glob("files/media/table/lrb/results_*.table.json")
    logged = json.loads(table.read_text())
    row = dict(zip(logged["columns"], logged["data"][0], strict=True))
    saved = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["method"] == "topk" and row["M_GT"] == saved["M_GT"]
