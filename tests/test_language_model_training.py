"""Anchored SAEs through SAELens's own LanguageModelSAETrainingRunner, on a tiny local HookedTransformer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

import sdl_anchor as sa
from sdl_anchor.cli import main
from sdl_anchor.integrations.prompt_anchors import class_mean_anchors_from_prompts, prompt_activations
from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model

CORPUS = [
    f"the {a} saw a {b} and the {c} ran"
    for a in ("cat", "dog", "cow")
    for b in ("red", "blue")
    for c in ("one", "two")
] * 20
PROMPTS = {
    "animal": ["the cat", "a dog", "the cow"],
    "colour": ["a red", "the blue"],
    "number": ["one", "two"],
}
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return toy_language_model(CORPUS, d_model=32, n_layers=1, n_ctx=16)


def runner_config(anchor_path, out, **overrides):
    return LanguageModelSAERunnerConfig(
        sae=sa.AnchoredTopKTrainingSAEConfig(d_in=32, d_sae=96, k=4, anchor_path=str(anchor_path)),
        model_name="toy",
        hook_name=HOOK,
        dataset_path="",
        context_size=16,
        training_tokens=4096,
        train_batch_size_tokens=256,
        store_batch_size_prompts=16,
        n_batches_in_buffer=32,
        n_batches_for_norm_estimate=4,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(out),
        verbose=False,
        **overrides,
    )


def test_class_mean_anchors_from_prompts(model):
    anchors = class_mean_anchors_from_prompts(model, PROMPTS, HOOK)
    assert anchors.names == ["animal", "colour", "number"] and anchors.d_in == 32
    acts = prompt_activations(model, PROMPTS["animal"], HOOK)
    assert acts.shape == (3, 32)
    with pytest.raises(ValueError, match="no hook 'blocks.9.hook_resid_post'"):
        prompt_activations(model, ["the cat"], "blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="at least one prompt"):
        class_mean_anchors_from_prompts(model, {"animal": []}, HOOK)


def test_stock_runner_trains_an_anchored_sae_that_loads_without_the_plugin(model, tmp_path):
    anchors = class_mean_anchors_from_prompts(model, PROMPTS, HOOK)
    anchor_path = anchors.save(tmp_path / "anchors.safetensors")
    runner = LanguageModelSAETrainingRunner(
        runner_config(anchor_path, tmp_path / "sae"),
        override_model=model,
        override_dataset=tokenized_dataset(model, CORPUS, 16),
    )
    trained = runner.run()
    assert type(trained).__name__ == "AnchoredTopKTrainingSAE"
    cos = torch.nn.functional.cosine_similarity(trained.W_dec[:3].detach(), anchors.directions_out, dim=1)
    assert cos.min() > 0.9  # the anchored latents stayed on their anchors
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["architecture"] == "topk"
    tokens = model.to_tokens("the cat saw a red")
    acts = model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK][0]
    torch.save(acts, tmp_path / "acts.pt")
    script = (
        "import json, sys, torch\n"
        "from sae_lens import SAE\n"
        f"sae = SAE.load_from_disk({str(tmp_path / 'sae')!r})\n"
        f"x = torch.load({str(tmp_path / 'acts.pt')!r}, weights_only=True)\n"
        "print(json.dumps({'plugin': any(m.startswith('sdl_anchor') for m in sys.modules), 'out': sae(x).tolist()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["plugin"] is False
    here = SAE.load_from_disk(str(tmp_path / "sae"))
    assert torch.allclose(torch.tensor(fresh["out"]), here(acts), atol=1e-5)


def test_train_cli_sees_our_architectures(tmp_path, capsys):
    import sdl_anchor  # noqa: F401
    from sdl_anchor.integrations.compat import parse_runner_args

    config = parse_runner_args(
        [
            "--architecture",
            "anchored_topk",
            "--anchor_path",
            "a.safetensors",
            "--k",
            "7",
            "--d_in",
            "32",
            "--d_sae",
            "64",
            "--model_name",
            "toy",
        ]
    )
    assert config.sae.architecture() == "anchored_topk"
    assert (config.sae.anchor_path, config.sae.k, config.sae.anchor_loss) == ("a.safetensors", 7, "mse")
    assert main(["train", "--architecture", "anchored_relu"]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'anchored_relu'" in err and "anchored_topk" in err


def test_example_runs_offline(tmp_path):
    example = Path(__file__).parents[1] / "examples" / "anchored_sae_transformerlens.py"
    result = subprocess.run(
        [sys.executable, str(example), "--out", str(tmp_path), "--training-tokens", "8192"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "saved as topk" in result.stdout
    assert (tmp_path / "anchors.safetensors").is_file() and (tmp_path / "sae" / "cfg.json").is_file()
