"""The researcher's workflow through the CLI, offline: anchors from each source, training every coder kind
with anchors and resampling on a local Hugging Face checkpoint, W&B runs read back from their files, and
bad input (exit 2, a message, nothing written)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from wandb_records import logged_history, offline_runs

import sdl_anchor as sa
from sdl_anchor.cli import main
from sdl_anchor.testing.toy_lm import word_level_tokenizer

CORPUS = [
    f"the {a} saw a {b} and the {c} ran"
    for a in ("cat", "dog", "cow")
    for b in ("red", "blue")
    for c in ("one", "two")
] * 20
HOOK = "blocks.0.hook_resid_post"
SMALL_RUN = [
    "--model_name", "toy", "--dataset_path", "DATA", "--context_size", "16", "--training_tokens", "8192",
    "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "16", "--n_batches_in_buffer", "32",
    "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 2-layer GPT-2 checkpoint with a word-level tokenizer, a text dataset and labelled prompts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("workflow")
    tokenizer = word_level_tokenizer(CORPUS)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(folder / "ckpt")
    tokenizer.save_pretrained(str(folder / "ckpt"))
    (folder / "data").mkdir()
    (folder / "data" / "train.txt").write_text("\n".join(CORPUS))
    prompts = {"animal": ["the cat", "a dog", "the cow"], "colour": ["a red", "the blue"]}
    (folder / "prompts.json").write_text(json.dumps(prompts))
    return folder


def train_argv(workspace, out, *extra):
    run = [str(workspace / "data") if a == "DATA" else a for a in SMALL_RUN]
    return ["train", "--out", str(out), "--model-path", str(workspace / "ckpt"), *run, *extra]


def class_means_argv(workspace):
    return [
        "anchors",
        "class-means",
        "--model",
        "toy",
        "--model-path",
        str(workspace / "ckpt"),
        "--hook",
        HOOK,
    ]


def test_class_mean_anchors_then_anchored_resampled_training_logged_to_wandb(
    workspace, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the runs go into --out
    anchors_out = tmp_path / "anchors"
    argv = class_means_argv(workspace)
    assert main([*argv, "--prompts", str(workspace / "prompts.json"), "--out", str(anchors_out)]) == 0
    described = json.loads((anchors_out / "anchors.json").read_text())
    assert (described["source"], described["k"], described["names"]) == (
        "class-means",
        2,
        ["animal", "colour"],
    )
    out = tmp_path / "run"
    argv = train_argv(workspace, out, "--hook_name", HOOK, "--architecture", "anchored_topk", "--anchor_path")
    argv += [str(anchors_out / "anchors.safetensors"), "--d_in", "32", "--d_sae", "64", "--k", "4"]
    argv += ["--resampling", "theory", "--resample-every", "8", "--duplicate-cosine", "0.8"]
    argv += ["--wandb-project", "sdl-anchor-test"]
    argv += ["--wandb_log_frequency", "4"]
    assert main(argv) == 0
    summary = json.loads((out / "train.json").read_text())
    assert (summary["architecture"], summary["kind"], summary["n_steps"]) == ("anchored_topk", "sae", 32)
    assert summary["anchor_cosine"] > 0.9
    assert [e["resample/step"] for e in summary["resampling"]["events"]] == [8.0, 16.0]
    assert all("resample/merged" in e for e in summary["resampling"]["events"])
    assert 0 <= summary["eval"]["sparsity/l0"] <= 4
    saved = json.loads((out / "sae" / "cfg.json").read_text())
    assert saved["architecture"] == "topk" and "anchor_path" not in saved  # anchors are stripped
    assert not (out / ".sae.partial").exists()
    (run,) = offline_runs(out)
    history = logged_history(run)
    for key in ("losses/anchor_loss", "losses/mse_loss", "metrics/anchor_cosine", "resample/events"):
        assert key in history, f"{key} was not logged; logged: {sorted(history)}"


@pytest.mark.parametrize(
    "architecture, hooks, widths, kind",
    [
        (
            "topk_transcoder",
            f"{HOOK},blocks.1.hook_resid_post",
            ["--d_in", "32", "--d_out", "32"],
            "transcoder",
        ),
        (
            "topk_crosscoder",
            f"{HOOK},blocks.1.hook_resid_post",
            ["--d_in", "64", "--n_sources", "2"],
            "crosscoder",
        ),
    ],
)
def test_transcoders_and_crosscoders_train_on_hook_pairs(
    workspace, tmp_path, architecture, hooks, widths, kind
):
    out = tmp_path / "run"
    argv = train_argv(workspace, out, "--hook-names", hooks, "--architecture", architecture, *widths)
    assert main([*argv, "--d_sae", "64", "--k", "4", "--log_to_wandb", "False"]) == 0
    summary = json.loads((out / "train.json").read_text())
    assert (summary["kind"], summary["hook_names"]) == (kind, hooks.split(","))
    assert summary["eval"]["reconstruction_quality/mse"] >= 0
    metadata = json.loads((out / "sae" / "cfg.json").read_text())["metadata"]
    assert metadata["hook_names"] == hooks.split(",")
    # issue 37: the sparse step's kernel choice, in the coder's metadata and the summary
    assert summary["kernels"] == metadata["kernels"] and summary["kernels"]["step"] == "sparse"
    assert summary["kernels"]["dense_product"] in ("onednn", "addmm")


def test_anchors_from_a_bench_and_from_probe_weights(tmp_path):
    bench = sa.LinearRepresentationBench(n_features=40, d_in=24, sparsity=0.9, max_interference=0.5, seed=1)
    bench_path = bench.save(tmp_path / "bench")
    assert (
        main(["anchors", "from-bench", "--bench", str(bench_path), "--k", "5", "--out", str(tmp_path / "a")])
        == 0
    )
    anchors = sa.AnchorSet.load(tmp_path / "a" / "anchors.safetensors")
    expected = bench.anchors(k=5)
    assert torch.equal(anchors.indices, expected.indices)
    assert torch.allclose(anchors.directions_in, expected.directions_in)
    weights = torch.randn(3, 24)
    save_file({"weight": weights, "bias": torch.zeros(3)}, str(tmp_path / "probe.safetensors"))
    argv = [
        "anchors",
        "probe",
        "--weights",
        str(tmp_path / "probe.safetensors"),
        "--out",
        str(tmp_path / "p"),
    ]
    assert main([*argv, "--key", "weight", "--names", "x,y,z"]) == 0
    probe = sa.AnchorSet.load(tmp_path / "p" / "anchors.safetensors")
    assert probe.names == ["x", "y", "z"]
    assert torch.allclose(probe.directions_in, torch.nn.functional.normalize(weights, dim=1))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--architecture", "anchored_relu"], "known architectures:"),
        (["--output_path", "x"], "either --out (sdl-anchor) or --output_path"),
        (["--hook-names", HOOK, "--hook_name", HOOK], "either --hook-names or --hook_name"),
        (["--resample-every", "5"], "--resample-every needs --resampling"),
        (["--duplicate-cosine", "0.8"], "--duplicate-cosine merges duplicated latents"),
        (["--resampling", "sometimes"], "unknown --resampling 'sometimes'"),
        (["--wandb-project", "p", "--log_to_wandb", "False"], "--log_to_wandb turns it off"),
        (["--architecture", "topk", "--d_sae", "lots"], "could not parse the training flags"),
        (
            ["--architecture", "topk", "--k", "0"],
            "--k must be positive",
        ),  # issue 35: trained all-dead, exit 0
        (["--architecture", "topk", "--k", "-1"], "--k must be positive"),
        (["--architecture", "topk", "--d_sae", "8", "--k", "16"], "--k 16 is larger than --d_sae 8"),
        (["--architecture", "topk", "--d_sae", "0"], "--d_sae must be a positive integer"),
        (["--architecture", "standard", "--d_sae", "0"], "--d_sae must be a positive integer"),
    ],
)
def test_bad_training_flags_exit_2_and_write_nothing(workspace, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(train_argv(workspace, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("inside", ["", "ckpts", "a/b"])
def test_checkpoints_inside_the_coder_folder_are_refused(workspace, tmp_path, capsys, inside):
    """Issue 35: --output_path DIR --checkpoint_path DIR/ckpts lost the run's checkpoints when the finished
    coder replaced DIR; refused before anything loads."""
    coder = tmp_path / "coder"
    argv = train_argv(workspace, tmp_path / "unused", "--architecture", "topk")
    argv = [a for a in argv if a not in ("--out", str(tmp_path / "unused"))]
    assert main([*argv, "--output_path", str(coder), "--checkpoint_path", str(coder / inside)]) == 2
    assert "lies inside the trained coder's folder" in capsys.readouterr().err
    assert not coder.exists()


def test_existing_output_is_refused_and_other_bad_anchor_input(workspace, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.json").write_text("{}")
    assert main(train_argv(workspace, tmp_path / "run", "--architecture", "topk")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--architecture", "topk"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"animal": "the cat"}')
    argv = class_means_argv(workspace)
    assert main([*argv, "--prompts", str(tmp_path / "bad.json"), "--out", str(tmp_path / "a")]) == 2
    assert '{"class": ["prompt", ...], ...}' in capsys.readouterr().err
    save_file({"w": torch.ones(2, 4), "b": torch.ones(2)}, str(tmp_path / "two.safetensors"))
    assert (
        main(
            ["anchors", "probe", "--weights", str(tmp_path / "two.safetensors"), "--out", str(tmp_path / "p")]
        )
        == 2
    )
    assert "choose one with --key" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "p").exists()


def test_no_credentials_falls_back_to_offline_with_a_warning(tmp_path, monkeypatch, capsys):
    from sdl_anchor.eval.wandb_logging import ensure_wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert ensure_wandb_mode() == "offline"
    assert "no W&B credentials" in capsys.readouterr().err
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE")
    assert ensure_wandb_mode() == "online"


def test_saelens_output_path_works_in_place_of_out(workspace, tmp_path):
    argv = train_argv(workspace, tmp_path / "unused", "--hook_name", HOOK, "--architecture", "topk")
    argv = argv[:1] + argv[3:]  # drop --out
    assert (
        main([*argv, "--output_path", str(tmp_path / "sae"), "--d_in", "32", "--d_sae", "64", "--k", "4"])
        == 0
    )
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["architecture"] == "topk"
    assert json.loads((tmp_path / "sae" / "train.json").read_text())["sae_path"] == str(tmp_path / "sae")
    assert not (tmp_path / "unused").exists() and not list(tmp_path.glob(".sae.partial*"))


@pytest.mark.parametrize("flags", [["--checkpoint_path", "ck/runs"], []])
def test_checkpoints_get_one_unique_id(tmp_path, flags):
    """Issue 35: checkpoint paths had two random ids (ck/5d7aaf7d/354301d1/4352): SAELens's parsed config and
    the coder config built from it each appended one."""
    import re

    from sdl_anchor.cli.train import _coder_config
    from sdl_anchor.integrations.compat import parse_runner_args

    config = parse_runner_args(["--architecture", "topk", "--d_in", "8", "--d_sae", "16", "--k", "2", *flags])
    coder = _coder_config(config, None, tmp_path / "sae", None)
    base = "ck/runs" if flags else "checkpoints"
    assert re.fullmatch(re.escape(base) + r"/[0-9a-f]{8}", coder.checkpoint_path), coder.checkpoint_path


def test_a_run_into_an_output_another_run_holds_exits_2_and_touches_nothing(workspace, tmp_path, capsys):
    """Issue 35: two runs into one --out shared one .partial folder and both reported success."""
    from sdl_anchor.io import exclusive_claim

    out = tmp_path / "run"
    (out / ".sae.partial-1").mkdir(parents=True)  # a live run's folder: the claim protects it
    argv = train_argv(workspace, out, "--hook_name", HOOK, "--architecture", "topk", "--d_in", "32")
    with exclusive_claim(out / ".sae.lock", "the other run's output"):
        assert main([*argv, "--d_sae", "64", "--k", "4"]) == 2
    assert "another run (pid" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".sae.partial-1"]
    assert main([*argv, "--d_sae", "64", "--k", "4"]) == 0  # free again: the dead run's folder is cleared
    assert sorted(p.name for p in out.iterdir()) == ["sae", "train.json"]


def test_two_concurrent_runs_into_one_output_one_wins_the_other_exits_2(workspace, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = train_argv(workspace, out, "--hook_name", HOOK, "--architecture", "topk", "--d_in", "32")
    argv += ["--d_sae", "64", "--k", "4", "--log_to_wandb", "False"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "sdl_anchor", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another run (pid" in loser or "already exists" in loser  # it started after the winner finished
    assert json.loads((out / "sae" / "cfg.json").read_text())["architecture"] == "topk"
    assert json.loads((out / "train.json").read_text())["sae_path"] == str(out / "sae")
    assert not list(out.glob(".sae.partial*"))


def test_ctrl_c_saves_a_resumable_checkpoint_and_the_resumed_run_finishes_the_rest(
    workspace, tmp_path, capsys, monkeypatch
):
    """Issue 35: Ctrl-C or SIGTERM during train saved nothing (SAELens's handler wrote into a folder it never
    made), and the weights and trainer state were never in its checkpoint."""
    import os
    import signal

    from safetensors.torch import load_file

    from sdl_anchor.integrations.paired_trainer import PairedSAETrainer

    steps = []
    original = PairedSAETrainer.after_step

    def after_step(self, output):
        original(self, output)
        steps.append(self.n_training_steps)
        if self.n_training_steps == 9 and interrupt:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C, in the middle of a step

    monkeypatch.setattr(PairedSAETrainer, "after_step", after_step)
    interrupt = True
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs as a background job
    argv = train_argv(workspace, tmp_path / "run", "--hook_name", HOOK, "--architecture", "topk")
    argv += ["--d_in", "32", "--d_sae", "64", "--k", "4", "--resampling", "theory", "--log_to_wandb", "False"]
    argv += ["--checkpoint_path", str(tmp_path / "ck")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT after step 10 of 32" in err
    (checkpoint,) = (tmp_path / "ck").glob("*/interrupted_2560")  # ck/<the run's unique id>/
    assert f"--resume_from_checkpoint {checkpoint}" in err
    assert {
        "cfg.json", "sae_weights.safetensors", "trainer_state.pt", "activations_store_state.safetensors",
        "runner_cfg.json", "resampling_state.json", "resampling_state.safetensors",
    } <= {p.name for p in checkpoint.iterdir()}  # fmt: skip
    assert not (tmp_path / "run" / "sae").exists() and not list((tmp_path / "run").glob(".sae.*"))
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is given back
    saved = load_file(str(checkpoint / "sae_weights.safetensors"))
    interrupt, steps[:] = False, []
    assert main([*argv, "--resume_from_checkpoint", str(checkpoint)]) == 0
    assert steps == list(range(10, 32))  # the remaining 22 steps, not 32 from scratch
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["n_steps"] == 32 and summary["resampling"]["events"]
    assert not torch.equal(
        load_file(str(tmp_path / "run" / "sae" / "sae_weights.safetensors"))["W_dec"], saved["W_dec"]
    )


def test_a_transcoder_set_refuses_resume_flags(workspace, tmp_path, capsys):
    """Issue 35: --layers with --resume_from_checkpoint silently trained from step 0."""
    for flag in ("--resume_from_checkpoint", "--from_pretrained_path"):
        argv = train_argv(workspace, tmp_path / "set", "--layers", "all", "--architecture", "topk_transcoder")
        assert (
            main([*argv, "--d_in", "32", "--d_out", "32", "--d_sae", "64", "--k", "4", flag, str(tmp_path)])
            == 2
        )
        assert f"{flag} is not supported with --layers" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()
