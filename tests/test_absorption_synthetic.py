"""Activation patterns and ground-truth hierarchy absorption on hand-built SAEs with known answers."""

import pytest
import torch
import torch.nn.functional as F
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

import sdl_anchor as sa

N_SAMPLES = 40_000


@pytest.fixture(scope="module")
def bench():
    """8 orthonormal features in 16 dims; feature 0 is the parent of 1, 2 and 3 (mutually exclusive)."""
    generated = sa.LinearRepresentationBench(
        n_features=8,
        d_in=16,
        sparsity=0.5,
        c_min=0.5,
        hierarchy={0: [1, 2, 3]},
        mutually_exclusive_children=True,
        seed=0,
    )
    return sa.LinearRepresentationBench.from_features(generated.config, torch.eye(16)[:8])


def planted_sae(bench):
    """Latent i reads and writes feature i, except: the parent's latent 0 is switched off by child 1 always
    (encoder -100 w_1) and by child 2 whenever a_2 >= a_0 (encoder -w_2); latents 1 and 2 write part of the
    parent direction (the absorbers). Child 3 is not absorbed."""
    w = bench.features_in
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=8, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(w.T)
        sae.W_enc[:, 0] = w[0] - 100 * w[1] - w[2]
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_dec.copy_(w)
        sae.W_dec[1] = F.normalize(w[1] + w[0], dim=0)
        sae.W_dec[2] = F.normalize(w[2] + 0.5 * w[0], dim=0)
    return sae


def test_a_sibling_absorption_is_not_charged_to_a_child_that_fires_with_it():
    """Children 1 and 2 of parent 0 can fire together; only child 1 is absorbed (latent 0 reads
    w_0 - 30 w_1, latent 1 writes the parent direction). Child 2 once scored 0.086 with latent 1 as its
    absorber, from the samples where 1 fired beside it."""
    generated = sa.LinearRepresentationBench(
        n_features=8, d_in=16, sparsity=0.5, c_min=0.5, hierarchy={0: [1, 2]}, seed=0
    )
    bench = sa.LinearRepresentationBench.from_features(generated.config, torch.eye(16)[:8])
    w = bench.features_in
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=8, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(w.T)
        sae.W_enc[:, 0] = w[0] - 30 * w[1]
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_dec.copy_(w)
        sae.W_dec[1] = F.normalize(w[1] + w[0], dim=0)
    pairs = {p["child"]: p for p in sa.hierarchy_absorption(sae, bench, n_samples=N_SAMPLES)["pairs"]}
    assert pairs[1]["absorption"] == 1.0 and pairs[1]["absorbing_latents"] == [1]
    assert pairs[2]["absorption"] == 0.0 and pairs[2]["absorbing_latents"] == []
    assert 0 < pairs[2]["n_child_samples"] < N_SAMPLES / 2  # only the samples where 2 fires without 1


def test_planted_absorption_is_exact(bench):
    sae = planted_sae(bench)
    result = sa.hierarchy_absorption(sae, bench, n_samples=N_SAMPLES, batch_size=N_SAMPLES)
    pairs = {(p["parent"], p["child"]): p for p in result["pairs"]}
    assert set(pairs) == {(0, 1), (0, 2), (0, 3)}
    assert all(p["parent_latent"] == 0 and p["silent_alone"] == 0.0 for p in pairs.values())

    # the truth, from the same samples' ground-truth codes
    codes = bench.sample(N_SAMPLES, torch.Generator().manual_seed(0)).codes
    child2 = codes[:, 2] > 0
    a0, a2 = codes[child2, 0], codes[child2, 2]
    silenced = (a0 <= a2).float().mean()
    firing = a0 > a2
    # partial absorption: one minus the least-squares slope of a_0 on c_0 (through 0) where latent 0 fires
    weaker = 1 - ((a0[firing] - a2[firing]) * a0[firing]).sum() / a0[firing].pow(2).sum()

    assert pairs[0, 1]["absorption"] == 1.0 and pairs[0, 1]["absorbing_latents"] == [1]
    assert pairs[0, 2]["absorption"] == pytest.approx(float(silenced), abs=1e-6)
    assert 0.3 < pairs[0, 2]["absorption"] < 0.7  # a_0, a_2 iid: about half
    assert pairs[0, 2]["partial_absorption"] == pytest.approx(float(weaker), abs=1e-5)
    assert pairs[0, 2]["absorbing_latents"] == [2]
    assert pairs[0, 3]["absorption"] == 0.0 and pairs[0, 3]["partial_absorption"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert pairs[0, 3]["absorbing_latents"] == []
    expected_mean = (1.0 + float(silenced) + 0.0) / 3
    assert result["mean_absorption"] == pytest.approx(expected_mean, abs=1e-6)


def test_streaming_in_batches_matches_one_batch(bench):
    sae = planted_sae(bench)
    whole = sa.hierarchy_absorption(sae, bench, n_samples=10_000, batch_size=10_000)
    streamed = sa.hierarchy_absorption(sae, bench, n_samples=10_000, batch_size=1024)
    # different batch boundaries draw different samples, so agree statistically, not bit for bit
    assert streamed["pairs"][0]["absorption"] == 1.0
    assert streamed["mean_absorption"] == pytest.approx(whole["mean_absorption"], abs=0.03)


def test_an_unabsorbed_sae_scores_zero(bench):
    sae = planted_sae(bench)
    with torch.no_grad():
        sae.W_enc[:, 0] = bench.features_in[0]
    result = sa.hierarchy_absorption(sae, bench, n_samples=10_000)
    assert result["mean_absorption"] == 0.0
    assert all(p["absorbing_latents"] == [] for p in result["pairs"])


def test_rescaling_latents_changes_nothing(bench):
    sae = planted_sae(bench)
    before = sa.hierarchy_absorption(sae, bench, n_samples=10_000)
    with torch.no_grad():
        scale = torch.linspace(0.1, 10.0, 8)
        sae.W_enc *= scale
        sae.W_dec /= scale[:, None]
    after = sa.hierarchy_absorption(sae, bench, n_samples=10_000)
    for a, b in zip(before["pairs"], after["pairs"], strict=True):
        assert a["absorption"] == pytest.approx(b["absorption"], abs=1e-6)
        assert a["partial_absorption"] == pytest.approx(b["partial_absorption"], abs=1e-4)
        assert a["absorbing_latents"] == b["absorbing_latents"]


def test_activation_patterns_count_mono_poly_and_dead_latents(bench):
    sae = planted_sae(bench)
    with torch.no_grad():
        sae.W_enc[:, 0] = bench.features_in[0]
        sae.W_enc[:, 5] = bench.features_in[5] + bench.features_in[6]  # fires for 5 and for 6
        sae.b_enc[6] = -100.0  # dead
    patterns = sa.activation_patterns(sae, bench)
    assert patterns.magnitude == 1.5  # c_min + beta
    assert patterns.polysemantic.tolist() == [5] and patterns.pattern(5) == [5, 6]
    assert patterns.dead.tolist() == [6]
    assert patterns.monosemantic.tolist() == [0, 1, 2, 3, 4, 7]
    assert patterns.unrecovered.tolist() == [5, 6]
    summary = patterns.to_dict()
    assert summary["n_polysemantic"] == 1 and summary["polysemantic_patterns"] == {5: [5, 6]}
    as_tensor = sa.activation_patterns(sae, bench.features_in, magnitude=1.5)
    assert torch.equal(as_tensor.fires, patterns.fires)


def test_bad_input_is_explained(bench):
    sae = planted_sae(bench)
    plain = sa.LinearRepresentationBench(n_features=8, d_in=16, seed=0)
    with pytest.raises(ValueError, match="has no hierarchy"):
        sa.hierarchy_absorption(sae, plain, n_samples=100)
    with pytest.raises(ValueError, match="names unknown child feature 9; features are 0..7"):
        sa.hierarchy_absorption(sae, bench, n_samples=100, hierarchy={0: [9]})
    with pytest.raises(ValueError, match="has d_in=16"):
        wide = sa.LinearRepresentationBench(n_features=8, d_in=20, hierarchy={0: [1]}, seed=0)
        sa.hierarchy_absorption(sae, wide, n_samples=100)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        sa.hierarchy_absorption(sae, bench, n_samples=0)
    with pytest.raises(ValueError, match="LinearRepresentationBench or a SAELens SyntheticModel"):
        sa.hierarchy_absorption(sae, torch.zeros(3), n_samples=100)
    with pytest.raises(ValueError, match="the features have width 20"):
        sa.activation_patterns(sae, torch.zeros(8, 20))


def test_sae_lens_synthetic_model_with_hierarchy_nodes():
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig
    from sae_lens.synthetic.firing_probabilities import ConstantFiringProbabilityConfig
    from sae_lens.synthetic.hierarchy import Hierarchy, HierarchyNode, hierarchy_modifier

    roots = [
        HierarchyNode(0, [HierarchyNode(1), HierarchyNode(2)], mutually_exclusive_children=True),
        HierarchyNode(None, [HierarchyNode(4, [HierarchyNode(5)])]),  # a grouping node without a feature
    ]
    assert sa.absorption.hierarchy_from_sae_lens(roots) == {0: (1, 2), 4: (5,)}
    config = SyntheticModelConfig(
        num_features=8,
        hidden_dim=16,
        firing_probability=ConstantFiringProbabilityConfig(probability=0.4),
        bias=1.0,
        seed=0,
    )
    model = SyntheticModel(config, hierarchy=Hierarchy(roots=roots, modifier=hierarchy_modifier(roots)))
    features = model.feature_dict.feature_vectors.detach()
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=8, apply_b_dec_to_input=True))
    with torch.no_grad():
        sae.b_dec.copy_(model.feature_dict.bias)
        sae.W_enc.copy_(torch.linalg.pinv(features))  # reads each code exactly
        sae.W_enc[:, 0] -= 100 * sae.W_enc[:, 1]  # the parent's latent is silenced by child 1
        sae.b_enc.fill_(-1e-3)  # below this is float error of the pseudo-inverse, not a firing
        sae.W_dec.copy_(features)
        sae.W_dec[1] += features[0]
    rng_before = torch.get_rng_state()
    result = sa.hierarchy_absorption(sae, model, n_samples=20_000)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    pairs = {(p["parent"], p["child"]): p for p in result["pairs"]}
    assert pairs[0, 1]["absorption"] == 1.0 and pairs[0, 1]["absorbing_latents"] == [1]
    assert pairs[0, 2]["absorption"] == 0.0 and pairs[4, 5]["absorption"] == 0.0
    assert sa.hierarchy_absorption(sae, model, n_samples=20_000) == result  # repeatable


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_true_sae_scores_no_absorption_even_with_magnitudes_near_zero(seed):
    """c_min = 0: parent magnitudes come arbitrarily close to 0, where the other features' interference keeps
    a_0 away from 0 and a mean of a_0 / c_0 blows up (it gave this SAE 0.07 to 0.12). The parent and its
    children are orthogonal, so the true SAE (encoder = features) absorbs nothing; features 4..7 interfere
    with the parent only."""
    generated = sa.LinearRepresentationBench(
        n_features=8, d_in=16, sparsity=0.8, c_min=0.0, hierarchy={0: [1, 2, 3]}, seed=seed
    )
    features = torch.eye(16)[:8]
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]
    features[4:] = F.normalize(features[4:] + 0.3 * sign * features[0], dim=1)
    bench = sa.LinearRepresentationBench.from_features(generated.config, features)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=8, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(bench.features_in.T)
        sae.W_dec.copy_(bench.features_in)
        sae.b_enc.fill_(-0.05)
        sae.b_dec.zero_()
    result = sa.hierarchy_absorption(sae, bench, n_samples=20_000, seed=seed)
    for pair in result["pairs"]:
        assert pair["absorption"] == pytest.approx(0.0, abs=0.02)
        assert pair["partial_absorption"] == pytest.approx(0.0, abs=0.02)
    assert result["mean_absorption"] == pytest.approx(0.0, abs=0.02)


def test_a_parent_no_latent_represents_is_not_measurable(bench):
    sae = planted_sae(bench)
    with torch.no_grad():
        sae.W_enc[:, 0] = -bench.features_in[0]  # the parent's latent never fires; nothing else reads w_0
    result = sa.hierarchy_absorption(sae, bench, n_samples=10_000)
    for pair in result["pairs"]:
        assert pair["absorption"] is None and pair["partial_absorption"] is None
        assert "no latent represents parent 0" in pair["reason"] and "correlates" in pair["reason"]
    assert result["mean_absorption"] is None and "no latent represents parent 0" in result["reason"]
    assert result["n_pairs"] == 3 and result["n_measured"] == 0
    assert [(r["parent"], r["child"]) for r in result["skipped"]] == [(0, 1), (0, 2), (0, 3)]


def five_pair_bench_and_true_relu_sae():
    """Five (parent, child) pairs among 200 features in 100 dims (interference up to 0.1, firing rate 5%),
    and the ground-truth ReLU SAE: latent i reads and writes feature i, no bias."""
    bench = sa.LinearRepresentationBench(
        n_features=200, d_in=100, sparsity=0.95, hierarchy={2 * i: [2 * i + 1] for i in range(5)}, seed=0
    )
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=100, d_sae=200, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(bench.features_in.T)
        sae.W_dec.copy_(bench.features_out)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return bench, sae


def test_the_true_relu_sae_passes_the_parent_gate_on_every_pair_and_the_summary_counts_them():
    """Issue 35: the gate was the F1 of a latent's firing at detecting its parent; the true ReLU latent also
    fires on about half the samples without the parent (the other features' interference), so at a 5%
    base rate its F1 was about 0.15 < 0.25 and every pair was skipped, unseen in the summary."""
    bench, sae = five_pair_bench_and_true_relu_sae()
    result = sa.hierarchy_absorption(sae, bench, n_samples=20_000)
    assert [p["parent_latent"] for p in result["pairs"]] == [0, 2, 4, 6, 8]
    assert all(p["absorption"] is not None and p["parent_latent_correlation"] > 0.7 for p in result["pairs"])
    assert result["n_pairs"] == 5 and result["n_measured"] == 5 and result["skipped"] == []
    assert result["mean_absorption"] < 0.05 and result["mean_partial_absorption"] < 0.05
    # a parent no latent represents is counted out and named, the others still measured
    with torch.no_grad():
        sae.W_enc[:, 4] = -bench.features_in[4]
    result = sa.hierarchy_absorption(sae, bench, n_samples=20_000)
    assert result["n_pairs"] == 5 and result["n_measured"] == 4
    (skipped,) = result["skipped"]
    assert (skipped["parent"], skipped["child"]) == (4, 5)
    assert skipped["reason"].startswith("no latent represents parent 4")
    measured = [p["absorption"] for p in result["pairs"] if p["absorption"] is not None]
    assert result["mean_absorption"] == pytest.approx(sum(measured) / 4)


@pytest.mark.parametrize("weight", ["W_enc", "W_dec", "b_enc"])
def test_an_sae_with_nan_weights_is_refused_not_scored(bench, weight):
    """Issue 35: NaN weights audited as 0.0 absorption ("no latent represents the parent"); now an error."""
    sae = planted_sae(bench)
    with torch.no_grad():
        getattr(sae, weight).view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=f"{weight} holds 1 NaN or infinite values, so its absorption"):
        sa.hierarchy_absorption(sae, bench, n_samples=1000)
