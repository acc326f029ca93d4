import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

import sdl_anchor as sa


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(n_features=40, d_in=32, max_interference=0.4, seed=1)


def planted_sae(bench, recovered, noise=0.0, seed=0):
    """A SAELens TopK SAE whose first latents are exactly the given ground-truth features."""
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=bench.d_in, d_sae=64, k=4))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn_like(sae.W_enc))
        sae.W_dec.copy_(torch.randn_like(sae.W_dec))
        for latent, feature in enumerate(recovered):
            sae.W_enc[:, latent] = 3.0 * bench.features_in[feature] + noise * torch.randn(bench.d_in)
            sae.W_dec[latent] = 0.5 * bench.features_out[feature]
    return sae


def test_planted_recovery_is_exact(bench):
    sae = planted_sae(bench, recovered=range(10))
    r = sa.recovery(sae, bench)
    # random 32-d directions never reach cosine 0.95 with the other 30 features
    assert r["M_GT"] == pytest.approx(10 / 40)
    assert r["M_GT_dec"] == pytest.approx(10 / 40)
    assert r["M_IP"] < 0.5 + 0.5 * 10 / 40
    assert r["n_scored"] == 40


def test_full_recovery_and_sign_invariance(bench):
    sae = planted_sae(bench, recovered=range(40))
    with torch.no_grad():
        sae.W_enc[:, :20] *= -1  # |cos| counts a flipped direction as recovered
    r = sa.recovery(sae, bench)
    assert r["M_GT"] == 1.0 and r["M_IP"] == pytest.approx(1.0, abs=1e-5)
    assert r["MCC"] == pytest.approx(1.0, abs=1e-5)


def test_exclude_removes_anchor_features(bench):
    sae = planted_sae(bench, recovered=range(10))
    r = sa.recovery(sae, bench, exclude=list(range(10)))
    assert r["n_scored"] == 30
    assert r["M_GT"] == 0.0
    anchors = bench.anchors(k=5, seed=0)
    assert sa.recovery(sae, bench, exclude=anchors.indices)["n_scored"] == 35


def test_exclude_takes_indices_only(bench):
    """A boolean mask, fractions or features the bench lacks are refused, not read as other features (a
    mask over features 3, 5 and 7 once excluded features 0 and 1)."""
    sae = planted_sae(bench, recovered=range(10))
    mask = torch.zeros(bench.n_features, dtype=torch.bool)
    mask[[3, 5, 7]] = True
    for exclude, message in (
        (mask, "boolean mask; pass the indices it marks"),
        ([2.9], "whole-number feature indices"),
        ([40], "names feature 40, outside 0..39"),
        ([-1], "negative feature index"),
    ):
        with pytest.raises(ValueError, match=message):
            sa.recovery(sae, bench, exclude=exclude)
    by_indices = sa.recovery(sae, bench, exclude=mask.nonzero().flatten(), mcc=False)
    assert by_indices["n_scored"] == 37 and by_indices["M_GT"] == pytest.approx(7 / 37)


def test_tau_threshold(bench):
    sae = planted_sae(bench, recovered=range(40), noise=0.6, seed=3)
    r_low = sa.recovery(sae, bench, tau=0.5, mcc=False)
    r_high = sa.recovery(sae, bench, tau=0.99, mcc=False)
    assert r_low["M_GT"] > r_high["M_GT"]
    assert "MCC" not in r_low


def test_bad_inputs(bench):
    other = sa.LinearRepresentationBench(n_features=40, d_in=20, max_interference=0.5)
    sae = planted_sae(bench, recovered=range(3))
    with pytest.raises(ValueError, match="d_in=32 but the bench's inputs have width 20"):
        sa.recovery(sae, other)
    with pytest.raises(ValueError, match="outside 0..39"):
        sa.recovery(sae, bench, exclude=[40])
    with pytest.raises(ValueError, match="removes every feature"):
        sa.recovery(sae, bench, exclude=range(40))
    with pytest.raises(ValueError, match="tau must be in"):
        sa.recovery(sae, bench, tau=1.5)
    with pytest.raises(ValueError, match="W_enc"):
        sa.recovery(object(), bench)


def test_live_recovery_ignores_dead_latents_sitting_on_features(bench):
    sae = planted_sae(bench, recovered=range(20))
    with torch.no_grad():
        sae.b_enc[10:] = -100.0  # latents 10..19 sit on features 10..19 but never fire
    assert sa.recovery(sae, bench)["M_GT"] == pytest.approx(20 / 40)
    live = sa.live_recovery(sae, bench)
    assert live["n_live"] == 10
    assert live["M_GT_live"] == pytest.approx(10 / 40)
    assert live["M_GT_dec_live"] == pytest.approx(10 / 40)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:5] = True
    assert sa.recovery(sae, bench, latents=mask)["M_GT"] == pytest.approx(5 / 40)
    with pytest.raises(ValueError, match="boolean mask of shape"):
        sa.recovery(sae, bench, latents=torch.arange(5))
    with pytest.raises(ValueError, match="selects no latent"):
        sa.recovery(sae, bench, latents=torch.zeros(64, dtype=torch.bool))
    with torch.no_grad():
        sae.b_enc[:] = -100.0
    assert sa.live_recovery(sae, bench) == {
        "M_GT_live": 0.0,
        "M_IP_live": 0.0,
        "M_GT_dec_live": 0.0,
        "M_IP_dec_live": 0.0,
        "n_live": 0,
    }


def test_recovery_curve_over_training():
    import copy

    bench = sa.LinearRepresentationBench(n_features=32, d_in=32, sparsity=0.9, max_interference=0.5, seed=0)
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4))
    at_start = sa.recovery(copy.deepcopy(sae), bench, mcc=False)
    sa.train_on_bench(sae, bench, n_steps=30, batch_size=256, lr=3e-3, recovery_every=10, show_progress=False)
    curve = sae.cfg.metadata.recovery_curve
    assert [point["step"] for point in curve] == [0.0, 10.0, 20.0, 30.0]
    assert curve[0]["M_IP"] == pytest.approx(at_start["M_IP"])  # measured before the first step
    assert curve[-1] == {"step": 30.0, **sa.recovery(sae, bench, mcc=False), **sa.live_recovery(sae, bench)}
    assert curve[-1]["M_IP"] > curve[0]["M_IP"]
    with pytest.raises(ValueError, match="recovery_every must be a positive integer"):
        sa.train_on_bench(sae, bench, n_steps=5, recovery_every=0, show_progress=False)


@pytest.mark.parametrize("n_samples", [0, -5, 2.5])
def test_live_recovery_refuses_a_sample_count_that_is_not_positive(n_samples):
    bench = sa.LinearRepresentationBench(n_features=12, d_in=8, sparsity=0.8, max_interference=0.5, seed=0)
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        sa.live_recovery(sae, bench, n_samples=n_samples)
