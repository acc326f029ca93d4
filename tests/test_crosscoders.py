"""Crosscoders: the block decoder-norm penalty, training on LRB crosscoder data, save / reload, bad input."""

import json

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sdl_anchor as sa
from sdl_anchor.integrations.crosscoder import crosscoder_decoder_norm, source_decoder_norms

ACTIVATIONS = ["standard", "topk", "batchtopk", "jumprelu"]
N_SOURCES, D_SOURCE = 3, 16


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(
        kind="crosscoder",
        n_features=40,
        d_in=D_SOURCE,
        n_sources=N_SOURCES,
        sparsity=0.95,
        max_interference=0.4,
    )


def make(activation, **overrides):
    sae_class, config_class = get_sae_training_class(f"{activation}_crosscoder")
    extra = {"k": 4} if "topk" in activation else {}
    config = {"d_in": N_SOURCES * D_SOURCE, "d_sae": 160, "n_sources": N_SOURCES, **extra, **overrides}
    return sae_class(config_class(**config))


def step_input(x, coefficients):
    return TrainStepInput(
        sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=True
    )


def test_block_decoder_norms_on_a_planted_decoder():
    W_dec = torch.zeros(2, 6)
    W_dec[0, :3] = torch.tensor([3.0, 4.0, 0.0])  # source 0 norm 5, source 1 norm 0
    W_dec[1] = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 0.0])  # norms 1 and 2
    assert torch.equal(source_decoder_norms(W_dec, 2), torch.tensor([[5.0, 0.0], [1.0, 2.0]]))
    assert torch.equal(crosscoder_decoder_norm(W_dec, 2), torch.tensor([5.0, 3.0]))


def test_standard_crosscoder_l1_weights_latents_by_the_sum_of_source_norms(bench):
    torch.manual_seed(0)
    coder = make("standard")
    with torch.no_grad():
        coder.W_dec.mul_(torch.rand(coder.cfg.d_sae, 1) + 0.5)
    x = bench.sample(64).x_in
    output = coder.training_forward_pass(step_input(x, {"l1": 0.7}))
    acts = coder.encode(x)
    expected = 0.7 * (acts * crosscoder_decoder_norm(coder.W_dec, N_SOURCES)).sum(-1).mean()
    assert output.losses["l1_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    whole_row = 0.7 * (acts * coder.W_dec.norm(dim=1)).sum(-1).mean()
    assert (
        output.losses["l1_loss"].item() > whole_row.item() * 1.2
    )  # an L1 over sources, not the L2 of the row


def test_jumprelu_crosscoder_tanh_and_pre_act_losses_use_the_source_norm_sum(bench):
    torch.manual_seed(0)
    coder = make("jumprelu", jumprelu_sparsity_loss_mode="tanh", pre_act_loss_coefficient=0.5)
    x = bench.sample(64).x_in
    dead = torch.zeros(coder.cfg.d_sae, dtype=torch.bool)
    dead[:40] = True
    step = TrainStepInput(
        sae_in=x, coefficients={"l0": 0.3}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
    )
    output = coder.training_forward_pass(step)
    norm = crosscoder_decoder_norm(coder.W_dec, N_SOURCES)
    acts, hidden_pre = coder.encode_with_hidden_pre(x)
    tanh = 0.3 * torch.tanh(coder.cfg.jumprelu_tanh_scale * acts * norm).sum(-1).mean()
    pre_act = 0.5 * ((coder.threshold - hidden_pre).relu() * dead * norm).sum(-1).mean()
    assert output.losses["l0_loss"].item() == pytest.approx(tanh.item(), rel=1e-5)
    assert output.losses["pre_act_loss"].item() == pytest.approx(pre_act.item(), rel=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_crosscoders_learn_the_shared_features(activation, bench):
    assert f"{activation}_crosscoder" in SAE_TRAINING_CLASS_REGISTRY
    torch.manual_seed(0)
    coder = make(activation)
    before = sa.recovery(coder, bench, mcc=False)
    sa.train_on_bench(coder, bench, n_steps=400, batch_size=256, lr=3e-3, show_progress=False)
    after = sa.recovery(coder, bench, mcc=False)
    assert after["M_IP_dec"] > before["M_IP_dec"] + 0.3 and after["M_GT_dec"] > 0.5


def test_per_source_losses_add_up_to_the_reconstruction_loss(bench):
    torch.manual_seed(0)
    coder = make("topk")
    output = coder.training_forward_pass(step_input(bench.sample(64).x_in, {}))
    per_source = [output.metrics[f"mse_source_{source}"]() for source in range(N_SOURCES)]
    assert sum(per_source).item() == pytest.approx(output.losses["mse_loss"].item(), rel=1e-5)


@pytest.mark.parametrize(
    "activation, inference",
    [("standard", "standard_crosscoder"), ("topk", "topk_crosscoder"), ("jumprelu", "jumprelu_crosscoder")],
)
def test_saved_crosscoders_reload_with_identical_outputs(activation, inference, bench, tmp_path):
    torch.manual_seed(0)
    coder = make(activation)
    sa.train_on_bench(coder, bench, n_steps=100, batch_size=128, lr=3e-3, show_progress=False)
    coder.save_inference_model(tmp_path / "cc")
    assert json.loads((tmp_path / "cc" / "cfg.json").read_text())["architecture"] == inference
    assert inference in SAE_CLASS_REGISTRY
    loaded = SAE.load_from_disk(str(tmp_path / "cc"))
    assert loaded.n_sources == N_SOURCES and loaded.d_source == D_SOURCE
    x = bench.sample(32).x_in
    coder.eval()
    assert torch.allclose(loaded(x), coder(x), atol=1e-5)
    assert loaded.split_sources(x).shape == (32, N_SOURCES, D_SOURCE)


def test_batchtopk_crosscoders_save_as_jumprelu_crosscoders(bench, tmp_path):
    coder = make("batchtopk")
    sa.train_on_bench(coder, bench, n_steps=50, batch_size=128, lr=3e-3, show_progress=False)
    coder.save_inference_model(tmp_path / "cc")
    loaded = SAE.load_from_disk(str(tmp_path / "cc"))
    assert loaded.cfg.architecture() == "jumprelu_crosscoder"
    assert torch.allclose(loaded.threshold, torch.full_like(loaded.threshold, coder.topk_threshold.item()))


def test_anchored_crosscoder_holds_its_anchors(bench, tmp_path):
    anchors = bench.anchors(k=4)
    path = anchors.save(tmp_path / "anchors.safetensors")
    coder = make("topk", anchor_path=str(path), anchor_loss="cosine", anchor_coefficient=1.0)
    sa.train_on_bench(coder, bench, n_steps=100, batch_size=128, lr=3e-3, show_progress=False)
    cos = torch.nn.functional.cosine_similarity(coder.W_dec[:4].detach(), anchors.directions_out, dim=1)
    assert cos.min() > 0.95


def test_bad_crosscoder_configs_and_pairings(bench):
    with pytest.raises(ValueError, match="n_sources >= 2"):
        make("topk", n_sources=1)
    with pytest.raises(ValueError, match="must be a multiple of n_sources"):
        make("topk", d_in=47)
    with pytest.raises(ValueError, match="n_sources=2 but the bench has 3 sources"):
        sa.train_on_bench(make("topk", d_in=48, n_sources=2), bench, n_steps=1)
    with pytest.raises(ValueError, match="'crosscoder' bench needs a crosscoder"):
        stock_class, stock_config = get_sae_training_class("topk")
        sa.train_on_bench(stock_class(stock_config(d_in=48, d_sae=64, k=4)), bench, n_steps=1)
    sae_bench = sa.LinearRepresentationBench(n_features=40, d_in=48, max_interference=0.4)
    with pytest.raises(ValueError, match="'sae' bench needs an SAE"):
        sa.train_on_bench(make("topk"), sae_bench, n_steps=1)


@pytest.mark.parametrize("kind, flop_ratio", [("transcoder", 1.0), ("crosscoder", 3.0)])
def test_coder_step_time_benchmark_times_coder_and_stock_sae(kind, flop_ratio):
    from sdl_anchor.eval.coder_step_time import measure_coder

    preset = {"d": 16, "d_sae": 64, "batch_size": 32, "steps": 3, "n_sources": 3}
    row = measure_coder("topk", kind, preset)
    assert row["stock_seconds"] > 0 and row["coder_seconds"] > 0 and row["flop_ratio"] == flop_ratio
    assert row["ratio"] > 0
    with pytest.raises(ValueError, match="kind must be"):
        measure_coder("topk", "sae", preset)
