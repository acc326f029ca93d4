"""Transcoders and crosscoders on a tiny local HookedTransformer: hook checks, training through
CoderTrainingRunner, splicing back into the model, and reloading."""

import warnings

import pytest
import torch
from sae_lens import SAE, LoggingConfig
from sae_lens.registry import get_sae_class, get_sae_training_class

import sdl_anchor as sa
from sdl_anchor.integrations.coder_hooks import check_coder_hooks, forward_position
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig, CoderTrainingRunner
from sdl_anchor.integrations.splice import evaluate_spliced
from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

CORPUS = [
    f"the {a} saw a {b} and the {c} ran"
    for a in ("cat", "dog", "cow")
    for b in ("red", "blue")
    for c in ("one", "two")
] * 20
D_MODEL, CONTEXT = 32, 16
MLP_PAIR = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]
RESIDS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def model():
    # trained on the corpus so that splicing a coder in changes the loss measurably
    return toy_language_model(CORPUS, d_model=D_MODEL, n_layers=2, n_ctx=CONTEXT, train_steps=200)


@pytest.fixture(scope="module")
def dataset(model):
    return tokenized_dataset(model, CORPUS, CONTEXT)


@pytest.fixture(scope="module")
def tokens(dataset):
    return torch.tensor(dataset["tokens"][:32])


def runner_config(coder_config, hook_names, out, **overrides):
    settings = {
        "model_name": "toy",
        "dataset_path": "",
        "context_size": CONTEXT,
        "training_tokens": 16384,
        "train_batch_size_tokens": 256,
        "store_batch_size_prompts": 16,
        "n_batches_in_buffer": 32,
        "lr": 3e-3,
        "logger": LoggingConfig(log_to_wandb=False),
        "checkpoint_path": None,
        "output_path": str(out),
        "verbose": False,
        **overrides,
    }
    return CoderRunnerConfig(sae=coder_config, hook_names=hook_names, **settings)


def coder_config(architecture, **fields):
    extra = {"k": 8} if "topk" in architecture else {}
    return get_sae_training_class(architecture)[1](**{**extra, **fields})


def count_forward_passes(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(
    "architecture, fields, hook_names, inference",
    [
        ("topk_transcoder", {"d_in": 32, "d_out": 32, "d_sae": 128}, MLP_PAIR, "topk_transcoder"),
        (
            "standard_transcoder",
            {"d_in": 32, "d_out": 32, "d_sae": 128, "skip_connection": True, "l1_coefficient": 1.0},
            MLP_PAIR,
            "skip_transcoder",
        ),
        ("jumprelu_transcoder", {"d_in": 32, "d_out": 32, "d_sae": 128}, MLP_PAIR, "jumprelu_transcoder"),
        ("topk_crosscoder", {"d_in": 64, "d_sae": 128, "n_sources": 2}, RESIDS, "topk_crosscoder"),
        ("batchtopk_crosscoder", {"d_in": 64, "d_sae": 128, "n_sources": 2}, RESIDS, "jumprelu_crosscoder"),
    ],
)
def test_coders_train_on_the_model_splice_back_and_reload(
    architecture, fields, hook_names, inference, model, dataset, tokens, tmp_path
):
    torch.manual_seed(0)
    untrained = get_sae_training_class(architecture)[0](coder_config(architecture, **fields))
    before = evaluate_spliced(untrained, model, tokens, hook_names)
    runner = CoderTrainingRunner(
        runner_config(coder_config(architecture, **fields), hook_names, tmp_path / "coder"),
        override_model=model,
        override_dataset=dataset,
    )
    coder = runner.run()
    after = evaluate_spliced(coder, model, tokens)  # the hooks come from the coder's metadata
    score = after["model_performance_preservation"]["ce_loss_score"]
    explained = after["reconstruction_quality"]["explained_variance"]
    assert score > 0.5 and explained > 0.5
    assert explained > before["reconstruction_quality"]["explained_variance"] + 0.3
    assert 0 < after["sparsity"]["l0"] < fields["d_sae"]
    if "crosscoder" in architecture:
        assert {"explained_variance_source_0", "explained_variance_source_1"} <= set(
            after["reconstruction_quality"]
        )
    logged = runner.evaluator(coder, None, None)  # what the trainer logs to W&B at its eval steps
    assert logged["model_performance_preservation"]["ce_loss_score"] > 0.5
    loaded = SAE.load_from_disk(str(tmp_path / "coder"))
    assert loaded.cfg.architecture() == inference and loaded.cfg.metadata.hook_names == hook_names
    reloaded = evaluate_spliced(loaded, model, tokens)
    if architecture != "batchtopk_crosscoder":  # BatchTopK trains batch-wise and infers with a threshold
        assert reloaded["model_performance_preservation"]["ce_loss_score"] == pytest.approx(score, abs=1e-4)


def exact_sae(d):
    """A ReLU SAE that reconstructs its input exactly: x = relu(x) - relu(-x)."""
    sae_class, config_class = get_sae_class("standard")
    sae = sae_class(config_class(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_planted_exact_reconstructions_recover_all_of_the_loss(model, tokens):
    metrics = evaluate_spliced(exact_sae(D_MODEL), model, tokens, ["blocks.0.hook_resid_post"])
    assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    crosscoder_class, crosscoder_config = get_sae_class("standard_crosscoder")
    exact = exact_sae(2 * D_MODEL)
    crosscoder = crosscoder_class(crosscoder_config(d_in=2 * D_MODEL, d_sae=4 * D_MODEL, n_sources=2))
    crosscoder.load_state_dict(exact.state_dict())
    metrics = evaluate_spliced(crosscoder, model, tokens, RESIDS)
    assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["reconstruction_quality"]["explained_variance_source_1"] == pytest.approx(1.0, abs=1e-5)


def test_a_zero_transcoder_is_an_ablation(model, tokens):
    config = coder_config("standard_transcoder", d_in=32, d_sae=64)
    transcoder = get_sae_training_class("standard_transcoder")[0](config)
    with torch.no_grad():  # no latent ever fires and b_dec = 0: the transcoder outputs zeros
        transcoder.W_enc.zero_()
        transcoder.b_enc.fill_(-1.0)
    metrics = evaluate_spliced(transcoder, model, tokens, MLP_PAIR)["model_performance_preservation"]
    assert metrics["ce_loss_with_sae"] == pytest.approx(metrics["ce_loss_with_ablation"], rel=1e-5)
    assert metrics["ce_loss_score"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["ce_loss_with_ablation"] > metrics["ce_loss_without_sae"] + 0.5  # the MLP matters


def test_forward_order_follows_the_block_not_the_registration():
    assert forward_position("blocks.0.hook_resid_post") < forward_position("blocks.1.ln1.hook_normalized")
    assert forward_position("blocks.0.attn.hook_z") < forward_position("blocks.0.ln2.hook_normalized")
    assert forward_position("blocks.0.ln2.hook_normalized") < forward_position("blocks.0.hook_mlp_out")
    assert forward_position("blocks.3.custom_hook") is None


BAD_HOOKS = [
    (
        "topk_transcoder",
        {"d_in": 32, "d_sae": 64},
        ["blocks.0.ln2.hook_normalised", MLP_PAIR[1]],
        "no hook .*did you mean",
    ),
    ("topk_transcoder", {"d_in": 32, "d_sae": 64}, MLP_PAIR[::-1], "runs after .* in forward order"),
    (
        "topk_transcoder",
        {"d_in": 32, "d_sae": 64, "d_out": 128},
        MLP_PAIR,
        "width 32 but the coder expects 128 .*d_out",
    ),
    ("topk_transcoder", {"d_in": 32, "d_sae": 64}, MLP_PAIR[:1], "pair of hooks"),
    (
        "topk_crosscoder",
        {"d_in": 64, "d_sae": 64},
        ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"],
        "one width",
    ),
    ("topk_crosscoder", {"d_in": 96, "d_sae": 64, "n_sources": 3}, RESIDS, "n_sources=3 but 2 hooks"),
    ("topk_crosscoder", {"d_in": 64, "d_sae": 64}, RESIDS[:1] * 2, "repeats a hook"),
    ("topk_crosscoder", {"d_in": 96, "d_sae": 64}, RESIDS, "width 32 but the coder expects 48"),
]


@pytest.mark.parametrize("architecture, fields, hook_names, message", BAD_HOOKS)
def test_bad_hooks_fail_before_any_forward_pass(
    architecture, fields, hook_names, message, model, dataset, tmp_path
):
    calls, handle = count_forward_passes(model)
    try:
        with pytest.raises(ValueError, match=message):
            CoderTrainingRunner(
                runner_config(coder_config(architecture, **fields), hook_names, tmp_path),
                override_model=model,
                override_dataset=dataset,
            )
    finally:
        handle.remove()
    assert calls == []


def test_a_crosscoder_needs_two_sources(model):
    with pytest.raises(ValueError, match="n_sources >= 2"):
        coder_config("topk_crosscoder", d_in=32, d_sae=64, n_sources=1)
    config = coder_config("topk_crosscoder", d_in=64, d_sae=64)
    with pytest.raises(ValueError, match="n_sources >= 2 hooks"):
        check_coder_hooks(model, RESIDS[:1], config, "crosscoder")


def test_runner_needs_a_dataset_and_a_coder_runner_config(model, tmp_path):
    config = runner_config(coder_config("topk_transcoder", d_in=32, d_sae=64), MLP_PAIR, tmp_path)
    with pytest.raises(ValueError, match="give a dataset"):
        CoderTrainingRunner(config, override_model=model)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="needs a CoderRunnerConfig"):
        warnings.simplefilter("ignore")
        from sae_lens import LanguageModelSAERunnerConfig

        CoderTrainingRunner(LanguageModelSAERunnerConfig(sae=config.sae, verbose=False, checkpoint_path=None))
    assert sa.TopKTranscoderTrainingSAEConfig is get_sae_training_class("topk_transcoder")[1]


def test_example_trains_splices_and_reloads_both_kinds(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "transcoder_crosscoder_transformerlens.py"
    spec = importlib.util.spec_from_file_location("coders_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--out", str(tmp_path), "--training-tokens", "16384"])
    assert results["transcoder"]["architecture"] == "topk_transcoder"
    assert results["crosscoder"]["architecture"] == "topk_crosscoder"
    for kind in ("transcoder", "crosscoder"):
        assert results[kind]["model_performance_preservation"]["ce_loss_score"] > 0.5
    assert "reloaded CE loss recovered" in capsys.readouterr().out


def test_runner_resamples_dead_latents_of_a_transcoder(model, dataset, tmp_path):
    config = coder_config("topk_transcoder", d_in=32, d_out=32, d_sae=128)
    runner = CoderTrainingRunner(
        runner_config(config, MLP_PAIR, tmp_path / "tc", training_tokens=8192),
        override_model=model,
        override_dataset=dataset,
        resampling=sa.ResamplingConfig(strategy="theory", pool_size=2048),
    )
    with torch.no_grad():
        runner.sae.b_enc[64:] = -100.0  # half the latents start dead
    coder = runner.run()
    assert (coder.b_enc[64:] > -100).all()  # rewritten by the first event
    events = coder.cfg.metadata.resampling["events"]
    assert events[0]["resample/dead_before"] >= 64 and events[0]["resample/latents"] >= 1
    reloaded = SAE.load_from_disk(str(tmp_path / "tc"))
    assert reloaded.cfg.architecture() == "topk_transcoder"
    assert reloaded.cfg.metadata.resampling["strategy"] == "theory"
