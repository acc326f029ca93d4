"""Anchored cross-layer transcoders: the per-layer anchor loss is zero exactly when the anchored slices equal
the anchors (planted), its gradient reaches only the anchored slices, the anchors round trip through their
file and the config's ``anchor_path``, bad shapes are refused with clear errors, and resampling leaves anchored
latents alone."""

import pytest
import torch
from sae_lens import LoggingConfig
from sae_lens.saes.sae import TrainStepInput

import sdl_anchor  # noqa: F401  (registers the CLT architectures)
from sdl_anchor import AnchorSet, ResamplingConfig
from sdl_anchor.anchoring import CLTAnchors
from sdl_anchor.integrations.clt_resampling import CLTResamplingTrainer
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig
from sdl_anchor.integrations.cross_layer_transcoder import CLT_ARCHITECTURES

L, D_IN, D_OUT, D_SAE, K = 3, 5, 4, 6, 2


def make_clt(name="topk_clt", **extra):
    sae_class, config_class = CLT_ARCHITECTURES[name]
    if "topk" in name:
        extra.setdefault("k", 2)
    return sae_class(config_class(d_in=D_IN, d_out=D_OUT, d_sae=D_SAE, n_layers=L, **extra))


def make_anchors(generator, later_layers=True, ks=(K, K, K)):
    """One AnchorSet per layer; output anchors over every written layer (``later_layers``) or own only."""
    sets = []
    for layer, k in enumerate(ks):
        width = (L - layer) * D_OUT if later_layers else D_OUT
        sets.append(
            AnchorSet(torch.randn(k, D_IN, generator=generator), torch.randn(k, width, generator=generator))
        )
    return CLTAnchors(sets)


def step_input(x):
    return TrainStepInput(sae_in=x, coefficients={"anchor": 1.0, "l1": 0.0, "l0": 0.0}, dead_neuron_mask=None,
                          n_training_steps=0, is_logging_step=False)  # fmt: skip


@torch.no_grad()
def plant(clt, anchors):
    """Set every anchored slice to its anchor exactly."""
    for layer, a in enumerate(anchors.layers):
        clt.W_enc[layer][:, : a.k] = a.directions_in.T
        if anchors.writes_later_layers(layer, D_OUT):
            clt.W_dec[layer][: a.k] = a.directions_out.view(a.k, L - layer, D_OUT)
        else:
            clt.W_dec[layer][: a.k, 0] = a.directions_out


@pytest.mark.parametrize("later_layers", [True, False])
@pytest.mark.parametrize("name", sorted(CLT_ARCHITECTURES))
def test_the_anchor_loss_is_zero_exactly_at_the_planted_anchors(name, later_layers):
    g = torch.Generator().manual_seed(0)
    clt = make_clt(name, anchor_init=False)
    anchors = make_anchors(g, later_layers)
    clt.set_anchors(anchors)
    assert clt.anchor_loss() > 0.1
    plant(clt, anchors)
    assert float(clt.anchor_loss().detach()) == 0.0
    assert float(clt.anchor_cosine()) == pytest.approx(1.0, abs=1e-6)
    for layer in range(L):  # moving any one anchored entry, in any layer, makes it positive
        with torch.no_grad():
            clt.W_enc[layer][0, 0] += 1e-2
        assert float(clt.anchor_loss().detach()) > 0.0
        plant(clt, anchors)
        with torch.no_grad():
            clt.W_dec[layer][K - 1, 0, 0] += 1e-2
        assert float(clt.anchor_loss().detach()) > 0.0
        plant(clt, anchors)
    # unanchored latents, and (own-output anchors) the later layers' slices, are free
    with torch.no_grad():
        clt.W_enc[:, :, K:] += 1.0
        for layer in range(L):
            clt.W_dec[layer][K:] += 1.0
            if not later_layers:
                clt.W_dec[layer][:K, 1:] += 1.0
    assert float(clt.anchor_loss().detach()) == 0.0


@pytest.mark.parametrize("later_layers", [True, False])
def test_gradients_of_the_anchor_loss_reach_only_the_anchored_slices(later_layers):
    g = torch.Generator().manual_seed(1)
    clt = make_clt("standard_clt", anchor_init=False)
    clt.set_anchors(make_anchors(g, later_layers, ks=(2, 1, 3)))
    clt.anchor_loss().backward()
    for layer, k in enumerate((2, 1, 3)):
        grad_enc = clt.W_enc.grad[layer]
        assert (grad_enc[:, :k] != 0).any() and (grad_enc[:, k:] == 0).all()
        grad_dec = clt.W_dec[layer].grad
        assert (grad_dec[:k, 0] != 0).any() and (grad_dec[k:] == 0).all()
        if L - layer > 1:
            assert (grad_dec[:k, 1:] != 0).any() if later_layers else (grad_dec[:k, 1:] == 0).all()
    assert clt.b_enc.grad is None or (clt.b_enc.grad == 0).all()


def test_the_training_step_adds_the_anchor_loss_and_anchor_init_points_the_latents_at_the_anchors():
    g = torch.Generator().manual_seed(2)
    clt = make_clt("batchtopk_clt", anchor_coefficient=0.5)
    anchors = make_anchors(g)
    norms = clt.W_enc[:, :, :K].norm(dim=1).clone()
    clt.set_anchors(anchors)
    for layer, a in enumerate(anchors.layers):  # directions set, norms kept
        cos = torch.nn.functional.cosine_similarity(clt.W_enc[layer][:, :K].T, a.directions_in, dim=1)
        assert torch.allclose(cos, torch.ones(K), atol=1e-6)
        dec = clt.W_dec[layer][:K].flatten(1)
        assert torch.allclose(torch.nn.functional.cosine_similarity(dec, a.directions_out), torch.ones(K))
    assert torch.allclose(clt.W_enc[:, :, :K].norm(dim=1), norms)
    x = torch.randn(8, L * D_IN, generator=g)
    clt.set_training_target(torch.randn(8, L * D_OUT, generator=g))
    out = clt.training_forward_pass(step_input(x))
    expected = out.losses["mse_loss"] + out.losses.get("auxiliary_reconstruction_loss", 0.0)
    # the step's coefficient (SAELens's schedule of the config's anchor_coefficient) weighs the loss
    assert clt.get_coefficients()["anchor"].value == 0.5
    assert torch.allclose(out.losses["anchor_loss"], 1.0 * clt.anchor_loss())
    assert torch.allclose(out.loss, expected + out.losses["anchor_loss"])
    assert 0.0 < float(out.metrics["anchor_cosine"]()) <= 1.0


def test_anchors_round_trip_through_their_file_and_the_config(tmp_path):
    g = torch.Generator().manual_seed(3)
    sets = make_anchors(g).layers
    anchors = CLTAnchors(
        [AnchorSet(s.directions_in, s.directions_out, [i, 10 + i], None) for i, s in enumerate(sets)]
    )
    path = anchors.save(tmp_path / "clt_anchors.safetensors")
    loaded = CLTAnchors.load(path)
    assert loaded.ks == anchors.ks and torch.equal(loaded.indices, anchors.indices)
    for a, b in zip(anchors.layers, loaded.layers, strict=True):
        assert torch.equal(a.directions_in, b.directions_in) and torch.equal(
            a.directions_out, b.directions_out
        )
    clt = make_clt("jumprelu_clt", anchor_path=str(path), anchor_init=False)
    assert clt.anchor_ks == [K] * L and torch.equal(clt.anchor_indices, anchors.indices)
    plant(clt, anchors)
    assert float(clt.anchor_loss().detach()) == 0.0
    # anchors stay out of the saved inference model
    clt.save_inference_model(str(tmp_path / "saved"))
    from safetensors.torch import load_file

    assert not any("anchor" in key for key in load_file(tmp_path / "saved" / "sae_weights.safetensors"))


def test_bad_anchors_are_refused_with_clear_errors(tmp_path):
    g = torch.Generator().manual_seed(4)
    clt = make_clt()
    with pytest.raises(ValueError, match="have 2 layers but the CLT has n_layers=3"):
        clt.set_anchors(CLTAnchors(make_anchors(g).layers[:2]))
    sets = make_anchors(g).layers
    with pytest.raises(ValueError, match="layer 1's output anchors have width 5"):
        bad = AnchorSet(sets[1].directions_in, torch.randn(K, 5))
        clt.set_anchors(CLTAnchors([sets[0], bad, sets[2]]))
    with pytest.raises(ValueError, match=r"same width \(the CLT's d_in\), got \[7, 5, 5\]"):
        CLTAnchors([AnchorSet(torch.randn(K, 7)), *sets[1:]])
    with pytest.raises(ValueError, match="layer 0's input anchors have width 7 but the CLT's d_in is 5"):
        clt.set_anchors(CLTAnchors([AnchorSet(torch.randn(K, 7), torch.randn(K, D_OUT))] * L))
    with pytest.raises(ValueError, match="more than its d_sae=6"):
        clt.set_anchors(make_anchors(g, ks=(7, 1, 1)))
    with pytest.raises(ValueError, match="CLTAnchors"):
        clt.set_anchors(sets[0])
    AnchorSet(torch.randn(K, D_IN)).save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="one set per layer"):
        CLTAnchors.load(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError, match="anchor_path"):
        make_clt(anchor_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="anchor_loss"):
        make_clt(anchor_loss="l2")


@pytest.mark.parametrize("strategy", ["anthropic", "theory"])
def test_resampling_leaves_each_layers_anchored_latents_alone(strategy):
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    clt = make_clt("standard_clt")
    clt.set_anchors(make_anchors(g))
    config = CoderRunnerConfig(
        sae=clt.cfg, model_name="toy", dataset_path="unused", context_size=16, training_tokens=64 * 40,
        hook_names=[], train_batch_size_tokens=64, store_batch_size_prompts=16, n_batches_in_buffer=8,
        device="cpu", logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trainer = CLTResamplingTrainer(cfg=config.to_sae_trainer_config(), sae=clt, data_provider=iter(()),
                                   resampling=ResamplingConfig(strategy=strategy, every_n_steps=10))  # fmt: skip
    mix = torch.randn(L * D_IN, L * D_OUT) / 3
    for _ in range(6):
        x = torch.randn(64, L * D_IN)
        trainer.step((x, torch.relu(x @ mix)))
    trainer.n_forward_passes_since_fired.fill_(10**6)  # every latent counts as dead, anchored ones too
    dead = trainer.dead_latents()
    assert ((dead % D_SAE) >= K).all() and dead.numel() == L * (D_SAE - K)
    before = [clt.W_enc[layer][:, :K].detach().clone() for layer in range(L)]
    before_dec = [clt.W_dec[layer][:K].detach().clone() for layer in range(L)]
    trainer.resample(1)
    for layer in range(L):
        assert torch.equal(clt.W_enc[layer][:, :K], before[layer])
        assert torch.equal(clt.W_dec[layer][:K], before_dec[layer])


def test_a_saved_clt_bundle_keeps_its_anchors_beside_it(tmp_path):
    from sdl_anchor.integrations.clt_training import ANCHORS_FILE, CLTBundle

    g = torch.Generator().manual_seed(6)
    clt = make_clt("jumprelu_clt")
    clt.set_anchors(make_anchors(g, later_layers=False))
    folder = CLTBundle(clt, [0, 1, 2]).save(tmp_path / "clt")
    loaded = CLTBundle.load(folder)
    assert (folder / ANCHORS_FILE).is_file() and loaded.anchors is not None
    for a, b in zip(clt.anchors.layers, loaded.anchors.layers, strict=True):
        assert torch.equal(a.directions_in, b.directions_in) and torch.equal(
            a.directions_out, b.directions_out
        )
    torch.testing.assert_close(loaded.coder.W_enc, clt.W_enc.detach())
    (folder / ANCHORS_FILE).unlink()
    with pytest.raises(ValueError, match="is not there"):
        CLTBundle.load(folder)
    plain = CLTBundle(make_clt("jumprelu_clt"), [0, 1, 2]).save(tmp_path / "plain")
    assert CLTBundle.load(plain).anchors is None
