import importlib
import json
import subprocess
import sys

import pytest
import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sdl_anchor as sa

ACTIVATIONS = ["standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]
INFERENCE = {
    "standard": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
}
EXTRA = {"matryoshka_batchtopk": {"matryoshka_widths": [32, 128]}, "topk": {"k": 4}, "batchtopk": {"k": 4}}


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(n_features=40, d_in=24, sparsity=0.9, max_interference=0.45, seed=0)


@pytest.fixture(scope="module")
def anchor_file(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("anchors") / "anchors.safetensors"
    bench.anchors(k=5, seed=0).save(path)
    return path


def make(activation, anchor_file=None, **overrides):
    sae_class, config_class = get_sae_training_class(f"anchored_{activation}")
    config = config_class(
        d_in=24,
        d_sae=128,
        anchor_path=None if anchor_file is None else str(anchor_file),
        **{**EXTRA.get(activation, {}), **overrides},
    )
    return sae_class(config)


def step_input(sae, x, step=0):
    coefficients = {
        name: (c.value if hasattr(c, "value") else c) for name, c in sae.get_coefficients().items()
    }
    return TrainStepInput(
        sae_in=x,
        coefficients=coefficients,
        dead_neuron_mask=None,
        n_training_steps=step,
        is_logging_step=True,
    )


def test_all_architectures_registered_and_registration_is_idempotent():
    for activation in ACTIVATIONS:
        assert f"anchored_{activation}" in SAE_TRAINING_CLASS_REGISTRY
    registry = importlib.import_module("sdl_anchor.integrations.registry")
    before = dict(SAE_TRAINING_CLASS_REGISTRY)
    importlib.reload(registry)
    importlib.reload(sa)
    assert dict(SAE_TRAINING_CLASS_REGISTRY) == before
    assert sa.AnchoredTopKTrainingSAEConfig is get_sae_training_class("anchored_topk")[1]


def test_config_fields_and_round_trip():
    config = sa.AnchoredTopKTrainingSAEConfig(
        d_in=8,
        d_sae=16,
        k=2,
        anchor_path="a.safetensors",
        anchor_coefficient=0.3,
        anchor_warm_up_steps=7,
        anchor_loss="mse",
    )
    data = config.to_dict()
    assert data["architecture"] == "anchored_topk"
    assert {
        data[f] for f in ("anchor_path", "anchor_coefficient", "anchor_warm_up_steps", "anchor_loss")
    } == {"a.safetensors", 0.3, 7, "mse"}
    assert sa.AnchoredTopKTrainingSAEConfig.from_dict(data) == config
    inference = config.get_inference_sae_cfg_dict()
    assert inference["architecture"] == "topk" and "anchor_path" not in inference


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_anchor_loss_and_metric_in_the_training_step(activation, bench, anchor_file):
    torch.manual_seed(0)
    sae = make(activation, anchor_file, anchor_coefficient=0.5, anchor_loss="cosine")
    anchors = sa.AnchorSet.load(anchor_file)
    # anchor_init points the first k latents at the anchors
    cos = torch.nn.functional.cosine_similarity(sae.W_enc[:, :5].T, anchors.directions_in, dim=1)
    assert torch.allclose(cos, torch.ones(5), atol=1e-5)
    with torch.no_grad():
        sae.W_enc[:, :5] += 0.3 * torch.randn(24, 5)
    output = sae.training_forward_pass(step_input(sae, bench.sample(64).x_in))
    expected = 0.5 * sa.anchoring.anchor_loss_cosine(
        sae.W_enc, sae.W_dec, anchors.directions_in, anchors.directions_out
    )
    assert output.losses["anchor_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    total = sum(v for v in output.losses.values())
    assert output.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert 0.5 < float(output.metrics["anchor_cosine"]()) < 1.0
    output.loss.backward()
    assert sae.W_enc.grad[:, :5].abs().sum() > 0


def test_anchor_coefficient_warms_up_through_sae_lens(bench, anchor_file):
    sae = make("topk", anchor_file, anchor_coefficient=0.2, anchor_warm_up_steps=10)
    coefficient = sae.get_coefficients()["anchor"]
    assert (coefficient.value, coefficient.warm_up_steps) == (0.2, 10)


def test_without_anchors_the_architecture_trains_like_its_base(bench):
    torch.manual_seed(0)
    anchored = make("topk")
    torch.manual_seed(0)
    base_class, base_config = get_sae_training_class("topk")
    base = base_class(base_config(d_in=24, d_sae=128, k=4))
    x = bench.sample(32).x_in
    out_a = anchored.training_forward_pass(step_input(anchored, x))
    out_b = base.training_forward_pass(step_input(base, x))
    assert "anchor_loss" not in out_a.losses
    assert torch.allclose(out_a.loss, out_b.loss)


def test_anchoring_holds_anchored_latents_during_training(bench, anchor_file):
    torch.manual_seed(0)
    sae = make("topk", anchor_file, anchor_coefficient=1.0, anchor_loss="cosine")
    sa.train_on_bench(sae, bench, n_steps=150, batch_size=128, lr=3e-3, show_progress=False)
    anchors = sa.AnchorSet.load(anchor_file)
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[:5].detach(), anchors.directions_out, dim=1)
    assert cos.min() > 0.95


# loads every saved SAE (one folder per argument) in a process that never imports sdl_anchor
SUBPROCESS = """
import json, sys, torch
from sae_lens import SAE
results = {}
for folder in sys.argv[1:]:
    sae = SAE.load_from_disk(folder)
    x = torch.load(f"{folder}/x.pt", weights_only=True)
    results[folder] = {"architecture": sae.cfg.architecture(), "out": sae(x).tolist()}
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("sdl_anchor")), "saes": results}))
"""


@pytest.fixture(scope="module")
def saved_anchored_saes(bench, anchor_file, tmp_path_factory):
    """Each activation's anchored SAE, trained briefly and saved, then loaded back in one fresh process that
    never imports sdl_anchor: ``({activation: (trained sae, folder, x)}, that process's report)``."""
    root = tmp_path_factory.mktemp("saved")
    saved = {}
    for activation in ACTIVATIONS:
        torch.manual_seed(0)
        sae = make(activation, anchor_file)
        sa.train_on_bench(sae, bench, n_steps=20, batch_size=64, show_progress=False)
        folder = root / activation
        sae.save_inference_model(folder)
        x = bench.sample(16).x_in
        torch.save(x, folder / "x.pt")
        saved[activation] = (sae, folder, x)
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, *(str(folder) for _, folder, _ in saved.values())],
        capture_output=True,
        text=True,
        check=True,
    )
    return saved, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_saved_model_is_stock_sae_lens_without_anchors(activation, saved_anchored_saes):
    saved, report = saved_anchored_saes
    sae, folder, x = saved[activation]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == INFERENCE[activation]
    from safetensors.torch import load_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    assert not any("anchor" in name for name in weights)
    loaded = report["saes"][str(folder)]
    assert report["modules"] == [] and loaded["architecture"] == INFERENCE[activation]
    from sae_lens import SAE

    expected = SAE.load_from_disk(str(folder))(x)
    sae.eval()
    assert torch.allclose(torch.tensor(loaded["out"]), expected, atol=1e-5)


def test_self_anchoring_starts_at_its_start_step(bench):
    sae = make("standard", self_anchor_coefficient=0.1, self_anchor_start_step=3)
    x = bench.sample(64).x_in
    before = sae.training_forward_pass(step_input(sae, x, step=2))
    at_start = sae.training_forward_pass(step_input(sae, x, step=3))
    assert "self_anchor_loss" not in before.losses
    tie = at_start.losses["self_anchor_loss"]
    assert tie > 0
    torch.testing.assert_close(at_start.loss, before.loss + tie)
    with pytest.raises(ValueError, match="self_anchor_start_step must be a non-negative integer"):
        make("standard", self_anchor_start_step=-1)


def test_bad_anchor_inputs(bench, anchor_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="names anchor_path=.*does not exist"):
        make("topk", tmp_path / "gone.safetensors")
    wrong_dim = tmp_path / "wrong.safetensors"
    sa.AnchorSet(torch.randn(3, 10)).save(wrong_dim)
    with pytest.raises(ValueError, match="d_in=10 but the SAE's d_in is 24"):
        make("topk", wrong_dim)
    wrong_out = tmp_path / "wrong_out.safetensors"
    sa.AnchorSet(torch.randn(3, 24), torch.randn(3, 7)).save(wrong_out)
    with pytest.raises(ValueError, match="d_out=7"):
        make("topk", wrong_out)
    too_many = tmp_path / "many.safetensors"
    sa.AnchorSet(torch.randn(200, 24)).save(too_many)
    with pytest.raises(ValueError, match="200 anchors cannot fit in d_sae=128"):
        make("topk", too_many)
    with pytest.raises(ValueError, match="anchor_loss must be one of"):
        make("topk", anchor_loss="l2")
    with pytest.raises(ValueError, match="anchor_coefficient must be non-negative"):
        make("topk", anchor_coefficient=-1.0)


def test_config_naming_a_vanished_anchor_file(bench, tmp_path):
    path = tmp_path / "a.safetensors"
    bench.anchors(3).save(path)
    config = make("topk", path).cfg.to_dict()
    path.unlink()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig.from_dict(config))


def test_step_time_benchmark_times_both_on_the_same_batches(monkeypatch):
    from sdl_anchor.eval import anchor_step_time

    preset = {"d_in": 16, "d_sae": 64, "batch_size": 32, "k": 4, "steps": 3}
    row = anchor_step_time.measure_activation("topk", preset)
    assert row["stock_seconds"] > 0 and row["anchored_seconds"] > 0 and row["ratio"] > 0
    assert row["target"] == 1.03 and row["ok"] is (row["ratio"] <= 1.03)
    seen = {}

    def fake_step_seconds(trainers, steps, device):
        seen.update({name: (trainer.sae, batches) for name, (trainer, batches) in trainers.items()})
        return {"stock": [1.0, 2.0, 4.0], "anchored": [1.5, 2.0, 4.4]}

    monkeypatch.setattr(anchor_step_time, "step_seconds", fake_step_seconds)
    row = anchor_step_time.measure_activation("topk", preset)
    assert row["ratio"] == pytest.approx(1.1)  # the median of the rounds' ratios 1.5, 1.0 and 1.1
    assert row["stock_seconds"] == 2.0 and row["anchored_seconds"] == 2.0 and row["ok"] is False
    assert seen["stock"][1] is seen["anchored"][1]  # the same batches
    for name, parameter in seen["stock"][0].named_parameters():  # from the same weights
        assert torch.equal(parameter, dict(seen["anchored"][0].named_parameters())[name])


def test_step_time_benchmark_can_time_self_anchoring_too(monkeypatch, capsys):
    from sdl_anchor.eval import anchor_step_time

    seen = {}

    def fake_step_seconds(trainers, steps, device):
        seen.update({name: trainer.sae for name, (trainer, _) in trainers.items()})
        return {"stock": [1.0], "anchored": [1.2]}

    monkeypatch.setattr(anchor_step_time, "step_seconds", fake_step_seconds)
    monkeypatch.setitem(
        anchor_step_time.PRESETS, "cpu", {"d_in": 16, "d_sae": 64, "batch_size": 32, "k": 4, "steps": 1}
    )
    anchor_step_time.main(["--self-anchor", "0.1", "--activations", "topk"])
    assert seen["anchored"].cfg.self_anchor_coefficient == 0.1
    assert "anchored_topk / topk step (self-anchoring 0.1)" in capsys.readouterr().out
    anchor_step_time.main(["--self-anchor", "0.1", "--sparse-step", "--activations", "topk"])
    assert (
        type(seen["stock"]) is type(seen["anchored"]) and seen["stock"].anchor_k == 0
    )  # our sparse step, unanchored
    assert (
        seen["stock"].cfg.self_anchor_coefficient == 0 and seen["anchored"].cfg.sparse_backward is not False
    )
    assert "(sparse step)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        anchor_step_time.main(["--activations", "topk,gelu"])
    assert "--activations: unknown ['gelu']; choose among" in capsys.readouterr().err
