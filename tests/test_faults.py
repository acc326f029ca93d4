"""Training that survives faults: a NaN loss stops with a clear error and no bad checkpoint; a resampling run
resumed from a checkpoint equals an uninterrupted one; a failure after training keeps the coder."""

import json

import pytest
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig

import sdl_anchor as sa
from sdl_anchor.integrations.paired_trainer import NonFiniteLossError, PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer

D_IN, D_SAE, BATCH, STEPS = 24, 96, 32, 24


def trainer_config(tmp_path, steps=STEPS, n_checkpoints=0):
    return SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=3e-3,
        lr_end=3e-4,
        lr_decay_steps=steps // 4,
        device="cpu",
        dead_feature_window=4,
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(tmp_path / "checkpoints"),
        logger=LoggingConfig(log_to_wandb=False),
    )


def fresh_sae():
    torch.manual_seed(0)
    return sa.AnchoredTopKTrainingSAE(
        sa.AnchoredTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=3, dtype="float64")
    )


def batches(n):
    bench = sa.LinearRepresentationBench(n_features=32, d_in=D_IN, sparsity=0.9, max_interference=0.3, seed=0)
    stream = bench.stream(BATCH, seed=1)
    return [next(stream).double() for _ in range(n)]


def run(trainer, data):
    """What ``SAETrainer.fit`` does around each step."""
    for batch in data:
        trainer.maybe_reset_sparsity()
        trainer.step(batch)
        trainer.n_training_steps += 1


def test_a_nan_loss_stops_training_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    data = batches(STEPS)
    data[13] = data[13].clone()
    data[13][0, 0] = float("nan")
    trainer = PairedSAETrainer(
        cfg=trainer_config(tmp_path, n_checkpoints=3), sae=fresh_sae(), data_provider=iter(data)
    )
    with pytest.raises(NonFiniteLossError, match="at step 14 .*last good checkpoint is .*checkpoints/416"):
        trainer.fit()
    saved = sorted((p.name for p in (tmp_path / "checkpoints").iterdir()), key=int)
    assert saved == ["224", "416"]  # after steps 7 and 13; none after the loss went bad at step 14
    restored = fresh_sae()
    restored.load_weights_from_checkpoint(tmp_path / "checkpoints" / "416")
    assert torch.isfinite(restored.W_enc).all()


def test_train_on_bench_stops_on_a_nan_loss_with_the_step():
    bench = sa.LinearRepresentationBench(n_features=32, d_in=D_IN, sparsity=0.9, max_interference=0.3, seed=0)
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=3))
    with pytest.raises(NonFiniteLossError, match="at step 2 .*no checkpoint"):  # step 1 made the weights inf
        sa.train_on_bench(sae, bench, n_steps=10, batch_size=BATCH, lr=float("inf"), show_progress=False)


def test_a_resampling_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tmp_path):
    data = batches(STEPS)
    resampling = sa.ResamplingConfig(
        strategy="theory", every_n_steps=6, max_events=3, stop_fraction=0.0, dead_steps=3, pool_size=160
    )

    def make():
        return ResamplingSAETrainer(
            cfg=trainer_config(tmp_path), sae=fresh_sae(), data_provider=iter(()), resampling=resampling
        )

    whole = make()
    run(whole, data)
    first = make()
    run(first, data[:10])
    first.save_checkpoint("paused")
    resumed = make()
    resumed.load_trainer_state(tmp_path / "checkpoints" / "paused")
    resumed.sae.load_weights_from_checkpoint(tmp_path / "checkpoints" / "paused")
    run(resumed, data[10:])
    assert [e["resample/step"] for e in resumed.resample_log] == [6, 12, 18]  # two events after the resume
    without_time = [[{k: v for k, v in e.items() if k != "resample/seconds"} for e in t.resample_log]
                    for t in (resumed, whole)]  # fmt: skip
    assert without_time[0] == without_time[1]
    for name, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert torch.equal(resumed.tokens_since_fired, whole.tokens_since_fired)
    assert torch.equal(resumed.n_forward_passes_since_fired, whole.n_forward_passes_since_fired)


def test_resuming_a_resampling_run_from_a_plain_checkpoint_says_what_is_missing(tmp_path):
    plain = PairedSAETrainer(cfg=trainer_config(tmp_path), sae=fresh_sae(), data_provider=iter(()))
    run(plain, batches(2))
    plain.save_checkpoint("plain")
    trainer = ResamplingSAETrainer(
        cfg=trainer_config(tmp_path), sae=fresh_sae(), data_provider=iter(()),
        resampling=sa.ResamplingConfig(every_n_steps=6),
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="resampling_state.json"):
        trainer.load_trainer_state(tmp_path / "checkpoints" / "plain")


def test_sdl_anchor_train_keeps_the_coder_when_its_summary_fails(tmp_path, monkeypatch, capsys):
    from sdl_anchor.cli import main
    from sdl_anchor.cli import train as train_command
    from sdl_anchor.testing.toy_lm import toy_language_model

    corpus = ["the cat sat on the mat and the dog ran in the park"] * 20
    model = toy_language_model(corpus, d_model=16, n_layers=1, n_ctx=16)
    model.cfg.model_name = "toy"
    checkpoint = tmp_path / "ckpt"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=len(model.tokenizer), n_positions=16)
    ).save_pretrained(checkpoint)
    model.tokenizer.save_pretrained(checkpoint)
    data = tmp_path / "text"
    data.mkdir()
    (data / "corpus.txt").write_text("\n".join(corpus))

    def broken_summary(*args, **kwargs):
        raise RuntimeError("the evaluation ran out of memory")

    monkeypatch.setattr(train_command, "_summary", broken_summary)
    argv = [
        "train", "--out", str(tmp_path / "run"), "--model-path", str(checkpoint), "--model_name", "toy",
        "--hook_name", "blocks.0.hook_resid_post", "--dataset_path", str(data), "--architecture", "topk",
        "--d_in", "16", "--d_sae", "32", "--k", "2", "--context_size", "8", "--training_tokens", "1024",
        "--train_batch_size_tokens", "64", "--store_batch_size_prompts", "16", "--n_batches_in_buffer", "32",
        "--log_to_wandb", "False",
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="out of memory"):
        main(argv)
    assert (tmp_path / "run" / "sae" / "cfg.json").exists()
    assert not (tmp_path / "run" / "train.json").exists()
    assert "the trained coder is saved in" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["d_sae"] == 32


def test_atomically_written_files_honour_the_umask(tmp_path):
    """mkstemp makes its files 0600; results, anchors and exports must be readable as the umask allows."""
    import os

    from sdl_anchor.io import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "results.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert write_json(tmp_path / "private.json", {}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
