"""Data-parallel training under torchrun (gloo, 2 processes on CPU): the same result as one process on the
global batches, resampling events included; ``sdl-anchor train`` under torchrun; bad input fails on
every rank without hanging."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import outcome, train
from test_cli_workflow import SMALL_RUN, workspace  # noqa: F401  (the fixture)

TESTS = Path(__file__).parent
TIMEOUT = 240


def torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)


# every equivalence run trains in one launch (each launch costs the two ranks' imports, most of its time)
SINGLE_RUNS = [
    "topk:theory",
    "topk_transcoder:theory",
    "anchored_topk:anthropic",
    "standard_crosscoder:none",
    "anchored_jumprelu:none",
    "batchtopk:theory",
]
CLT_RUNS = ["topk_clt:theory", "topk_clt:anthropic", "jumprelu_clt:none", "batchtopk_clt:theory"]
SET_RUNS = ["topk_transcoder_set:theory", "batchtopk_transcoder_set:theory"]  # 2-layer transcoder sets


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One 2-rank launch training every run of SINGLE_RUNS, CLT_RUNS and SET_RUNS; ``{run: [rank 0's, rank
    1's]}``."""
    out = tmp_path_factory.mktemp("ddp")
    runs = SINGLE_RUNS + CLT_RUNS + SET_RUNS
    done = torchrun(str(TESTS / "ddp_worker.py"), ",".join(runs), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        run: [torch.load(out / f"{run.replace(':', '.')}.rank{r}.pt", weights_only=True) for r in range(2)]
        for run in runs
    }


def assert_ranks_identical(ranks):
    first, second = ranks
    for name, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][name]), name
    assert torch.equal(first["passes_since_fired"], second["passes_since_fired"])
    assert first["resample_log"][0]["resample/latents"] == second["resample_log"][0]["resample/latents"] > 0


def assert_ranks_train_what_one_process_trains(run, ranks):
    architecture, resampling = run.split(":")
    sae, trainer = train(architecture, 64, resampling)  # one process, batches of 64
    for name, reference in sae.state_dict().items():
        for rank in ranks:
            assert torch.allclose(rank["state"][name], reference, rtol=1e-6, atol=1e-9), (run, name)
    for rank in ranks:
        assert torch.equal(rank["passes_since_fired"], trainer.n_forward_passes_since_fired), run
        assert torch.allclose(rank["act_freq_scores"], trainer.act_freq_scores), run
        assert rank["n_training_samples"] == trainer.n_training_samples == 12 * 64
    if resampling != "none":
        (event,) = trainer.resample_log
        assert event["resample/latents"] > 0 and event["resample/step"] == 6, run
        for rank in ranks:
            (theirs,) = rank["resample_log"]
            for key in ("resample/latents", "resample/split", "resample/dead_before"):
                assert theirs[key] == event[key], (run, key)
            assert theirs["resample/loss_after"] == pytest.approx(event["resample/loss_after"], rel=1e-9)
    return sae


@pytest.mark.parametrize("run", SINGLE_RUNS[:-1])
def test_two_ranks_train_what_one_process_trains_on_the_global_batches(two_rank_runs, run):
    assert_ranks_train_what_one_process_trains(run, two_rank_runs[run])


def test_batchtopk_ranks_stay_identical(two_rank_runs):
    """BatchTopK selects over each rank's rows (so it differs from one process), but the ranks agree."""
    assert_ranks_identical(two_rank_runs["batchtopk:theory"])


@pytest.mark.parametrize("run", CLT_RUNS[:-1])
def test_two_ranks_train_the_cross_layer_transcoder_one_process_trains(two_rank_runs, run):
    """CLTs (2 layers): TopK with a theory and an anthropic event and JumpReLU match one process on the global
    batches (weights, dead-latent counters over all n_layers * d_sae latents, the event's per-layer updates)."""
    sae = assert_ranks_train_what_one_process_trains(run, two_rank_runs[run])
    assert two_rank_runs[run][0]["passes_since_fired"].shape == (sae.n_latents,)


def test_batchtopk_clt_ranks_stay_identical(two_rank_runs):
    """BatchTopK CLTs select within each rank's rows; the ranks agree, thresholds included."""
    ranks = two_rank_runs["batchtopk_clt:theory"]
    assert_ranks_identical(ranks)
    assert (ranks[0]["state"]["topk_threshold"] > 0).all()


def test_two_ranks_train_the_transcoder_set_one_process_trains(two_rank_runs):
    """A transcoder set (2 layers, a theory event each) matches one process on the global batches: every
    layer's weights, dead-latent counters and event, through one DDP wrapper and one pool per layer."""
    architecture, resampling = SET_RUNS[0].split(":")
    saes, trainer = train(architecture, 64, resampling)  # one process, batches of 64
    reference = outcome(saes, trainer)
    assert [event["resample/latents"] > 0 for event in reference["resample_log"]] == [True, True]
    for rank in two_rank_runs[SET_RUNS[0]]:
        assert rank["state"].keys() == reference["state"].keys()
        for name, tensor in reference["state"].items():
            assert torch.allclose(rank["state"][name], tensor, rtol=1e-6, atol=1e-9), name
        assert torch.equal(rank["passes_since_fired"], reference["passes_since_fired"])
        assert torch.allclose(rank["act_freq_scores"], reference["act_freq_scores"])
        assert rank["n_training_samples"] == reference["n_training_samples"] == 12 * 64
        for theirs, event in zip(rank["resample_log"], reference["resample_log"], strict=True):
            for key in ("resample/step", "resample/latents", "resample/split", "resample/dead_before"):
                assert theirs[key] == event[key], key
            assert theirs["resample/loss_after"] == pytest.approx(event["resample/loss_after"], rel=1e-9)


def test_batchtopk_transcoder_set_ranks_stay_identical(two_rank_runs):
    """A BatchTopK set selects within each rank's rows; the ranks agree, every layer's threshold included."""
    first, second = two_rank_runs[SET_RUNS[1]]
    for name, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][name]), name
    assert torch.equal(first["passes_since_fired"], second["passes_since_fired"])
    assert [e["resample/latents"] for e in first["resample_log"]] == [
        e["resample/latents"] for e in second["resample_log"]
    ]
    assert len(first["resample_log"]) == 2
    assert all((first["state"][f"layer_{layer}.topk_threshold"] > 0).all() for layer in (0, 1))


def test_mismatched_configs_fail_on_every_rank(tmp_path):
    done = torchrun(str(TESTS / "ddp_worker.py"), "topk", str(tmp_path), "--config-seed", "0")
    assert done.returncode != 0
    assert (done.stdout + done.stderr).count("the ranks were launched with different configs") == 2
    assert not list(tmp_path.iterdir())


def test_a_batch_the_ranks_cannot_split_fails_on_every_rank(tmp_path):
    done = torchrun(str(TESTS / "ddp_worker.py"), "topk", str(tmp_path), "--batch", "63")
    assert done.returncode != 0
    assert (done.stdout + done.stderr).count("the batch of 63 does not split over 2 ranks") == 2


def _cli(workspace, out, *extra):  # noqa: F811
    run = [str(workspace / "data") if a == "DATA" else a for a in SMALL_RUN]
    return torchrun(
        "-m",
        "sdl_anchor",
        "train",
        "--out",
        str(out),
        "--model-path",
        str(workspace / "ckpt"),
        *run,
        "--architecture",
        "anchored_topk",
        "--k",
        "4",
        "--d_in",
        "32",
        "--d_sae",
        "128",
        "--hook_name",
        "blocks.0.hook_resid_post",
        *extra,
    )


def test_sdl_anchor_train_under_torchrun(workspace, tmp_path):  # noqa: F811
    from sae_lens import SAE

    import sdl_anchor as sa

    anchors = sa.AnchorSet(torch.nn.functional.normalize(torch.randn(3, 32), dim=1))
    anchors.save(tmp_path / "anchors.safetensors")
    out = tmp_path / "run"
    done = _cli(
        workspace, out, "--anchor_path", str(tmp_path / "anchors.safetensors"), "--resampling", "theory"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["n_steps"] == 32
    assert summary["anchor_cosine"] > 0.9
    assert len(summary["resampling"]["events"]) >= 1
    assert done.stdout.count("wrote ") == 2  # rank 0 alone reports (and writes)
    sae = SAE.load_from_disk(str(out / "sae"))
    assert sae.cfg.d_sae == 128
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("wandb")) == ["sae", "train.json"]


def train_every_layer_under_torchrun(workspace, tmp_path, architecture):  # noqa: F811
    """``sdl-anchor train --layers all`` of ``architecture`` on 2 ranks, 8 steps of 256 tokens (128 a rank) with
    a theory event at step 4: ``(out, the launch, train.json)``, its common checks done."""
    run = [str(workspace / "data") if a == "DATA" else a for a in SMALL_RUN]
    run[run.index("--training_tokens") + 1] = "2048"
    out = tmp_path / "run"
    done = torchrun(
        "-m", "sdl_anchor", "train", "--out", str(out), "--model-path", str(workspace / "ckpt"), *run,
        "--architecture", architecture, "--layers", "all", "--k", "4", "--d_in", "32", "--d_out", "32",
        "--d_sae", "64", "--resampling", "theory", "--resample-every", "4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["layers"] == [0, 1] and summary["n_steps"] == 8
    return out, done, summary


def test_sdl_anchor_train_a_cross_layer_transcoder_under_torchrun(workspace, tmp_path):  # noqa: F811
    from sdl_anchor.integrations.clt_training import CLTBundle

    out, done, summary = train_every_layer_under_torchrun(workspace, tmp_path, "batchtopk_clt")
    assert summary["kind"] == "cross_layer_transcoder"
    assert [event["resample/step"] for event in summary["resampling"]["events"]] == [4.0]
    assert "clt/ce_loss_score" in summary["eval"]
    assert done.stdout.count("wrote ") == 2  # rank 0 alone reports (and writes)
    bundle = CLTBundle.load(out / "clt")
    assert bundle.coder.cfg.n_layers == 2 and bundle.coder.threshold.shape == (2, 64)
    assert bundle.coder.cfg.metadata.train_batch_size_tokens == 128  # the rows BatchTopK chose within
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("wandb")) == ["clt", "train.json"]


def test_sdl_anchor_train_a_transcoder_set_under_torchrun(workspace, tmp_path):  # noqa: F811
    from sdl_anchor.integrations.transcoder_set import TranscoderSet

    out, done, summary = train_every_layer_under_torchrun(workspace, tmp_path, "topk_transcoder")
    assert summary["kind"] == "transcoder_set"
    assert "set/ce_loss_score" in summary["eval"]
    assert done.stdout.count("wrote ") == 2  # rank 0 alone reports (and writes)
    transcoder_set = TranscoderSet.load(out / "set")
    assert transcoder_set.layers == [0, 1]
    for coder in transcoder_set.transcoders.values():
        events = coder.cfg.metadata.resampling["events"]
        assert [event["resample/step"] for event in events] == [4.0]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("wandb")) == ["set", "train.json"]


def test_sdl_anchor_train_batch_that_does_not_split_exits_2_on_every_rank(workspace, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    done = _cli(workspace, out, "--train_batch_size_tokens", "255")
    assert done.returncode != 0
    assert done.stderr.count("sdl-anchor: error: the batch of 255 does not split over 2 ranks") == 2
    assert not (out / "sae").exists() and not (out / "train.json").exists()


def test_two_ranks_resumed_from_a_checkpoint_train_what_one_process_trains(tmp_path):
    """Saved after 4 steps (every rank's pool rows kept), resumed in fresh trainers, with the theory event at
    step 6 after the resume: the same weights, counters and event as one uninterrupted process."""
    done = torchrun(
        str(TESTS / "ddp_worker.py"), "topk", str(tmp_path), "--resampling", "theory", "--resume-at", "4"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "paused" / "resampling_pool.rank1.safetensors").exists()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    sae, trainer = train("topk", 64, "theory")
    for name, reference in sae.state_dict().items():
        for rank in ranks:
            assert torch.allclose(rank["state"][name], reference, rtol=1e-6, atol=1e-9), name
    for rank in ranks:
        assert torch.equal(rank["passes_since_fired"], trainer.n_forward_passes_since_fired)
        assert rank["resample_log"][0]["resample/step"] == 6 == trainer.resample_log[0]["resample/step"]


def test_a_nan_loss_on_one_rank_stops_every_rank_without_hanging(tmp_path):
    done = torchrun(str(TESTS / "ddp_worker.py"), "topk", str(tmp_path), "--nan-at", "5")
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: training stopped: the loss was NaN or infinite at step 5" in done.stderr
