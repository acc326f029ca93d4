import json

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sdl_anchor as sa
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer

ACTIVATIONS = ["standard", "topk", "batchtopk", "jumprelu"]


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(
        kind="transcoder", n_features=48, d_in=40, d_out=32, sparsity=0.95, max_interference=0.35, seed=0
    )


def make(activation, **overrides):
    sae_class, config_class = get_sae_training_class(f"{activation}_transcoder")
    extra = {"k": 4} if "topk" in activation else {}
    return sae_class(config_class(d_in=40, d_sae=192, **{"d_out": 32, **extra, **overrides}))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_transcoders_learn_the_output_features_from_the_input(activation, bench):
    assert f"{activation}_transcoder" in SAE_TRAINING_CLASS_REGISTRY
    torch.manual_seed(0)
    sae = make(activation)
    assert sae.W_enc.shape == (40, 192) and sae.W_dec.shape == (192, 32) and sae.b_dec.shape == (32,)
    before = sa.recovery(sae, bench, mcc=False)
    sa.train_on_bench(sae, bench, n_steps=500, batch_size=256, lr=3e-3, show_progress=False)
    after = sa.recovery(sae, bench, mcc=False)
    assert before["M_GT_dec"] == 0.0  # a random decoder matches no output feature
    assert after["M_GT_dec"] > 0.6 and after["M_IP_dec"] > before["M_IP_dec"] + 0.3


def test_the_loss_is_the_target_reconstruction(bench):
    torch.manual_seed(0)
    sae = make("standard", l1_coefficient=0.0)
    batch = bench.sample(16)
    sae.set_training_target(batch.x_out)
    step = TrainStepInput(
        sae_in=batch.x_in,
        coefficients={"l1": 0.0},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    output = sae.training_forward_pass(step)
    expected = ((sae.decode(sae.encode(batch.x_in)) - batch.x_out) ** 2).sum(-1).mean()
    assert output.losses["mse_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.sae_in is not batch.x_in and torch.equal(output.sae_in, batch.x_out)
    with pytest.raises(ValueError, match="trains on \\(input, target\\) pairs"):
        sae.training_forward_pass(step)  # the target is consumed by one step


@pytest.mark.parametrize(
    "activation, skip, inference",
    [
        ("standard", False, "transcoder"),
        ("standard", True, "skip_transcoder"),
        ("jumprelu", False, "jumprelu_transcoder"),
        ("jumprelu", True, "jumprelu_skip_transcoder"),
        ("topk", False, "topk_transcoder"),
        ("topk", True, "topk_skip_transcoder"),
    ],
)
def test_saved_transcoders_reload_with_identical_outputs(activation, skip, inference, bench, tmp_path):
    torch.manual_seed(0)
    sae = make(activation, skip_connection=skip)
    assert hasattr(sae, "W_skip") == skip
    sa.train_on_bench(sae, bench, n_steps=100, batch_size=128, lr=3e-3, show_progress=False)
    if skip:  # the skip connection trains (it starts at zero)
        assert sae.W_skip.abs().max() > 0
    sae.save_inference_model(tmp_path / "tc")
    assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["architecture"] == inference
    loaded = SAE.load_from_disk(str(tmp_path / "tc"))
    x = bench.sample(32).x_in
    sae.eval()
    assert torch.allclose(loaded(x), sae(x), atol=1e-5)
    if skip:
        assert not torch.allclose(sae(x), sae.decode(sae.encode(x)), atol=1e-3)


def test_anchored_transcoder(bench, tmp_path):
    anchors = bench.anchors(k=4)
    path = anchors.save(tmp_path / "anchors.safetensors")
    sae = make("topk", anchor_path=str(path), anchor_loss="cosine", anchor_coefficient=1.0)
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[:4].detach(), anchors.directions_out, dim=1)
    assert torch.allclose(cos, torch.ones(4), atol=1e-5)
    sa.train_on_bench(sae, bench, n_steps=100, batch_size=128, lr=3e-3, show_progress=False)
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[:4].detach(), anchors.directions_out, dim=1)
    assert cos.min() > 0.95
    wrong = tmp_path / "wrong.safetensors"
    sa.AnchorSet(torch.randn(2, 40)).save(wrong)  # output side defaults to d_in = 40, not d_out = 32
    with pytest.raises(ValueError, match="d_out=40 but the SAE reconstructs d_out=32"):
        make("topk", anchor_path=str(wrong))


def test_bad_transcoder_configs_and_pairings(bench):
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be False"):
        make("topk", apply_b_dec_to_input=True)
    with pytest.raises(ValueError, match="normalize_activations must be 'none'"):
        make("topk", normalize_activations="expected_average_only_in")
    with pytest.raises(ValueError, match="d_out=24 but the bench's targets have width 32"):
        sa.train_on_bench(make("topk", d_out=24), bench, n_steps=1)
    sae_bench = sa.LinearRepresentationBench(n_features=48, d_in=40, max_interference=0.35)
    with pytest.raises(ValueError, match="'sae' bench needs an SAE"):
        sa.train_on_bench(make("topk"), sae_bench, n_steps=1)
    stock_class, stock_config = get_sae_training_class("topk")
    trainer_sae = stock_class(stock_config(d_in=40, d_sae=64, k=4))
    from sae_lens.config import SAETrainerConfig

    trainer = PairedSAETrainer(
        SAETrainerConfig(total_training_samples=10, train_batch_size_samples=2, lr_end=1e-4),
        trainer_sae,
        iter(()),
    )
    with pytest.raises(ValueError, match="need a transcoder"):
        trainer.step((torch.randn(2, 40), torch.randn(2, 32)))
