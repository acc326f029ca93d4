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
    with pytest.raises(
        NonFiniteLossError, match="at step 2 .*no checkpoint"
    ):  # step 1 made the weights overflow
        sa.train_on_bench(sae, bench, n_steps=10, batch_size=BATCH, lr=1e30, show_progress=False)


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


def inputs_target_transcoder():
    torch.manual_seed(0)
    return sa.TopKTranscoderTrainingSAE(
        sa.TopKTranscoderTrainingSAEConfig(
            d_in=D_IN, d_out=16, d_sae=D_SAE, k=3, dtype="float64",
            self_anchor_coefficient=0.1, self_anchor_target="inputs", self_anchor_start_step=2,
        )
    )  # fmt: skip


def transcoder_batches(n):
    bench = sa.LinearRepresentationBench(
        kind="transcoder", n_features=32, d_in=D_IN, d_out=16, sparsity=0.9, max_interference=0.3, seed=0
    )
    stream = bench.stream(BATCH, seed=1, with_targets=True)
    return [tuple(t.double() for t in next(stream)) for _ in range(n)]


@pytest.mark.parametrize("resampled", [False, True])
def test_an_inputs_target_transcoder_resumed_from_a_checkpoint_equals_an_uninterrupted_one(
    tmp_path, resampled
):
    """Issue 35: the mean firing inputs (self_anchor_target="inputs") were not checkpointed: weights were
    0.041 apart after a resume, 0.32 with theory resampling."""
    data = transcoder_batches(STEPS)
    resampling = sa.ResamplingConfig(
        strategy="theory", every_n_steps=6, max_events=3, stop_fraction=0.0, dead_steps=3, pool_size=160
    )

    def make():
        if resampled:
            return ResamplingSAETrainer(
                cfg=trainer_config(tmp_path), sae=inputs_target_transcoder(), data_provider=iter(()),
                resampling=resampling,
            )  # fmt: skip
        return PairedSAETrainer(
            cfg=trainer_config(tmp_path), sae=inputs_target_transcoder(), data_provider=iter(())
        )

    whole = make()
    run(whole, data)
    first = make()
    run(first, data[:10])
    first.save_checkpoint("paused")
    assert (tmp_path / "checkpoints" / "paused" / "coder_training_state.safetensors").exists()
    resumed = make()
    resumed.load_trainer_state(tmp_path / "checkpoints" / "paused")
    resumed.sae.load_weights_from_checkpoint(tmp_path / "checkpoints" / "paused")
    run(resumed, data[10:])
    for name, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, rtol=0, atol=0, msg=name)
    for name, value in whole.sae.training_state().items():
        torch.testing.assert_close(resumed.sae.training_state()[name], value, rtol=0, atol=0, msg=name)
    if resampled:
        assert len(resumed.resample_log) == 3


def test_resampled_latents_forget_the_inputs_they_fired_on(tmp_path):
    """Issue 35: a resampled latent kept its old self-anchoring target (cos 0.94 to the direction it died on)."""
    trainer = ResamplingSAETrainer(
        cfg=trainer_config(tmp_path), sae=inputs_target_transcoder(), data_provider=iter(()),
        resampling=sa.ResamplingConfig(strategy="theory", every_n_steps=6, max_events=1, stop_fraction=0.0,
                                       dead_steps=3, pool_size=160),
    )  # fmt: skip
    data = transcoder_batches(6)
    run(trainer, data[:5])
    fired_before = trainer.sae._firing_inputs.weights > 0
    dead = trainer.dead_latents()
    assert fired_before[dead].any()  # some of the latents about to be resampled fired once
    run(trainer, data[5:])  # step 6: the event
    resampled = dead[: int(trainer.resample_log[0]["resample/latents"])]
    assert resampled.numel() and (trainer.sae._firing_inputs.weights[resampled] == 0).all()


def test_a_checkpoint_without_the_firing_inputs_is_refused_for_an_inputs_target_coder(tmp_path):
    old = PairedSAETrainer(cfg=trainer_config(tmp_path), sae=fresh_sae(), data_provider=iter(()))
    run(old, batches(2))
    old.save_checkpoint("old")
    trainer = PairedSAETrainer(
        cfg=trainer_config(tmp_path), sae=inputs_target_transcoder(), data_provider=iter(())
    )
    with pytest.raises(FileNotFoundError, match="coder_training_state.safetensors"):
        trainer.load_trainer_state(tmp_path / "checkpoints" / "old")


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

    from sdl_anchor.io import write_json, write_safetensors

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "results.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        anchors = sa.AnchorSet(torch.eye(3)).save(tmp_path / "anchors.safetensors")  # safetensors writes 0600
        assert anchors.stat().st_mode & 0o777 == 0o644
        assert (
            write_safetensors(tmp_path / "t.safetensors", {"x": torch.ones(2)}).stat().st_mode & 0o777
            == 0o644
        )
        os.umask(0o077)
        assert write_json(tmp_path / "private.json", {}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_the_progress_bar_moves_every_step_of_a_short_run(tmp_path, monkeypatch):
    """Issue 35: SAELens moves its bar every 100 steps, so a 40-step run on a real model showed 0% all along."""
    import sae_lens.training.sae_trainer as trainer_module

    bars, seen = [], []

    class Recorder:
        def __init__(self, total, initial=0, **kwargs):
            self.total, self.n = total, initial
            bars.append(self)

        def update(self, n):
            self.n += n
            seen.append(self.n)

        def set_description(self, text):
            pass

        def close(self):
            pass

    monkeypatch.setattr(trainer_module, "tqdm", Recorder)
    trainer = PairedSAETrainer(
        cfg=trainer_config(tmp_path, steps=5), sae=fresh_sae(), data_provider=iter(batches(5))
    )
    trainer.fit()
    assert seen == [BATCH * step for step in range(1, 6)] and bars[0].n == bars[0].total
