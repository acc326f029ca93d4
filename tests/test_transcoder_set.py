"""Transcoder sets: every layer from the same forward passes, saved and reloaded, spliced in together, exported
in circuit-tracer's format; bad layers, hooks and sets refused before anything is written."""

import json

import pytest
import torch
import yaml
from sae_lens import LoggingConfig
from safetensors.torch import load_file

import sdl_anchor as sa
from sdl_anchor.cli.train import count_forward_passes
from sdl_anchor.integrations.circuit_tracer import export_circuit_tracer
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig, CoderTrainingRunner
from sdl_anchor.integrations.transcoder_set import TranscoderSet, TranscoderSetRunner, evaluate_spliced_set
from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

CORPUS = ["the cat sat on the mat and the dog ran in the park while the birds sang"] * 40
D = 16


@pytest.fixture(scope="module")
def toy():
    model = toy_language_model(CORPUS, d_model=D, n_layers=3, n_ctx=16, train_steps=30)
    return model, tokenized_dataset(model, CORPUS, 16)


def config(sae, out=None, tokens=2048, hook_names=None):
    return CoderRunnerConfig(
        sae=sae, model_name="toy", dataset_path="unused", context_size=16, training_tokens=tokens,
        hook_names=hook_names or [],
        train_batch_size_tokens=128, store_batch_size_prompts=16, n_batches_in_buffer=8, device="cpu",
        output_path=None if out is None else str(out), logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip


def test_a_set_trains_every_layer_from_one_forward_pass_per_batch(toy, tmp_path):
    model, dataset = toy
    sae = sa.BatchTopKTranscoderTrainingSAEConfig(d_in=D, d_out=D, d_sae=64, k=4)
    runner = TranscoderSetRunner(config(sae, tmp_path / "set"), layers="all", override_model=model,
                                 override_dataset=dataset, resampling=sa.ResamplingConfig(every_n_steps=4))  # fmt: skip
    passes = count_forward_passes(model)
    transcoder_set = runner.run()
    model.reset_hooks(including_permanent=True)
    assert transcoder_set.layers == [0, 1, 2]
    one = count_forward_passes(model)
    single = config(
        sa.BatchTopKTranscoderTrainingSAEConfig(d_in=D, d_out=D, d_sae=64, k=4),
        hook_names=["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"],
    )
    CoderTrainingRunner(single, override_model=model, override_dataset=dataset).run()
    model.reset_hooks(including_permanent=True)
    assert passes["count"] == one["count"]  # three layers cost the forward passes of one
    for layer, coder in transcoder_set.transcoders.items():
        assert coder.cfg.metadata.hook_names == [
            f"blocks.{layer}.ln2.hook_normalized",
            f"blocks.{layer}.hook_mlp_out",
        ]
        assert coder.cfg.metadata.resampling["events"]
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["layers"] == [0, 1, 2] and manifest["architecture"] == "batchtopk_transcoder"
    back = TranscoderSet.load(tmp_path / "set")
    assert {type(t).__name__ for t in back.transcoders.values()} == {"JumpReLUTranscoder"}
    tokens = model.to_tokens(CORPUS[0])
    together = evaluate_spliced_set(back.transcoders, model, tokens)
    assert set(together["layers"]) == {"0", "1", "2"}
    assert together["set"]["ce_loss_with_set"] > 0 and -1 < together["set"]["ce_loss_score"] <= 1.5


def test_the_circuit_tracer_export_has_its_keys_orientation_and_config(toy, tmp_path):
    model, dataset = toy
    sae = sa.JumpReLUTranscoderTrainingSAEConfig(d_in=D, d_out=D, d_sae=32)
    transcoder_set = TranscoderSetRunner(config(sae, tmp_path / "set", tokens=512), layers="all",
                                         override_model=model, override_dataset=dataset).run()  # fmt: skip
    with torch.no_grad():
        transcoder_set.transcoders[1].threshold[:3] = -0.25
    transcoder_set.save(tmp_path / "set")
    out = export_circuit_tracer(tmp_path / "set", tmp_path / "ct")
    config_lines = dict(line.split(": ", 1) for line in (out / "config.yaml").read_text().splitlines())
    assert config_lines["model_kind"] == "transcoder_set"
    assert config_lines["feature_input_hook"] == "ln2.hook_normalized"
    assert config_lines["feature_output_hook"] == "hook_mlp_out"
    assert config_lines["activation_function"] == "jumprelu"
    for layer, coder in transcoder_set.transcoders.items():
        tensors = load_file(str(out / f"layer_{layer}.safetensors"))
        assert set(tensors) == {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold"}
        torch.testing.assert_close(
            tensors["W_enc"], coder.W_enc.detach().T
        )  # circuit-tracer: [d_sae, d_model]
        torch.testing.assert_close(tensors["W_dec"], coder.W_dec.detach())
        assert tensors["activation_function.threshold"].min() >= 0  # x * (x > t) equals SAELens's for t >= 0


def test_a_topk_set_exports_with_its_k_and_a_warning(toy, tmp_path):
    model, dataset = toy
    sae = sa.TopKTranscoderTrainingSAEConfig(d_in=D, d_out=D, d_sae=32, k=3)
    TranscoderSetRunner(config(sae, tmp_path / "set", tokens=256), layers="all", override_model=model,
                        override_dataset=dataset).run()  # fmt: skip
    with pytest.warns(UserWarning, match="loads only ReLU and JumpReLU"):
        out = export_circuit_tracer(tmp_path / "set", tmp_path / "ct")
    text = (out / "config.yaml").read_text()
    assert "activation_function: topk\n" in text and "k: 3\n" in text
    config_yaml = yaml.safe_load(text)  # the keys circuit-tracer's main branch reads (its PR #94)
    assert config_yaml["activation"] == "topk" and config_yaml["k"] == 3


@pytest.mark.parametrize("scan", ["2024", "true", "on", 'a"b\\c\nmodel_kind: injected', "x: y"])
def test_config_yaml_keeps_every_value_a_string_and_adds_no_key(toy, tmp_path, scan):
    """Issue 35: a crafted --scan injected a key (backslashes unescaped); 2024, true, on changed type."""
    model, dataset = toy
    sae = sa.JumpReLUTranscoderTrainingSAEConfig(d_in=D, d_out=D, d_sae=16)
    TranscoderSetRunner(config(sae, tmp_path / "set", tokens=256), layers="all", override_model=model,
                        override_dataset=dataset).run()  # fmt: skip
    out = export_circuit_tracer(tmp_path / "set", tmp_path / "ct", scan=scan)
    loaded = yaml.safe_load((out / "config.yaml").read_text())
    assert loaded["scan"] == scan and loaded["model_kind"] == "transcoder_set"
    assert set(loaded) == {"model_kind", "feature_input_hook", "feature_output_hook", "model_name", "scan",
                           "activation_function"}  # fmt: skip


def test_bad_layers_hooks_and_sets_are_refused_before_anything_is_written(toy, tmp_path):
    model, dataset = toy
    sae = sa.TopKTranscoderTrainingSAEConfig(d_in=D, d_out=D, d_sae=32, k=3)
    with pytest.raises(ValueError, match=r"layers 0..2, not \[7\]"):
        TranscoderSetRunner(
            config(sae, tmp_path / "a"), layers="0,7", override_model=model, override_dataset=dataset
        )
    wide = sa.TopKTranscoderTrainingSAEConfig(d_in=2 * D, d_out=D, d_sae=32, k=3)
    with pytest.raises(ValueError, match="d_in"):
        TranscoderSetRunner(
            config(wide, tmp_path / "b"), layers="all", override_model=model, override_dataset=dataset
        )
    TranscoderSetRunner(config(sae, tmp_path / "partial", tokens=256), layers="0,2", override_model=model,
                        override_dataset=dataset).run()  # fmt: skip
    with pytest.raises(ValueError, match=r"every layer 0..2.*lacks \[1\]"):
        export_circuit_tracer(tmp_path / "partial", tmp_path / "ct")
    (tmp_path / "partial" / "layer_2" / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no saved transcoder for \[2\]"):
        export_circuit_tracer(tmp_path / "partial", tmp_path / "ct")
    assert not (tmp_path / "ct").exists() and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
