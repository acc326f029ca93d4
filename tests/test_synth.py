"""SynthSAEBench: the model built from its configuration, the fast sampler's distribution against SAELens's
generator, the L0 controller, and ``bench synth`` end to end (smoke preset)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from sae_lens import SAE
from sae_lens.synthetic import (
    HierarchyNode,
    LowRankCorrelationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
)
from sae_lens.synthetic.feature_dictionary import orthogonalize_embeddings
from sae_lens.synthetic.hierarchy import Hierarchy
from sae_lens.training.optim import CoefficientScheduler

from sdl_anchor.cli import main
from sdl_anchor.integrations.l0_control import L0Controller
from sdl_anchor.integrations.synth_sampler import FastActivationGenerator, FastSyntheticSampler
from sdl_anchor.integrations.synthsaebench import (
    build_model,
    config_key,
    load_or_build_model,
    orthogonalize_embeddings_gram,
    synthsaebench_16k_config,
)

SMALL = synthsaebench_16k_config(seed=7, num_features=1024, hidden_dim=64)


@pytest.fixture(scope="module")
def small_model() -> SyntheticModel:
    return build_model(SMALL, show_progress=False)


def test_gram_orthogonalisation_takes_saelens_steps():
    embeddings = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    ours = orthogonalize_embeddings_gram(embeddings, num_steps=30, lr=0.01)
    reference = orthogonalize_embeddings(embeddings, num_steps=30, lr=0.01, chunk_size=128)
    assert (ours - reference).abs().max() < 1e-5
    assert not torch.allclose(ours, embeddings / embeddings.norm(dim=1, keepdim=True), atol=1e-3)


def test_built_model_is_saelens_model_of_the_configuration(small_model):
    reference = SyntheticModel(SMALL)
    assert (
        small_model.feature_dict.feature_vectors - reference.feature_dict.feature_vectors
    ).abs().max() < 1e-5
    assert torch.equal(small_model.feature_dict.bias, reference.feature_dict.bias)
    assert torch.equal(
        small_model.activation_generator.firing_probabilities,
        reference.activation_generator.firing_probabilities,
    )
    assert small_model.hierarchy == reference.hierarchy
    published = synthsaebench_16k_config()
    assert (published.num_features, published.hidden_dim, published.seed, published.bias) == (
        16_384,
        768,
        42,
        0.5,
    )
    assert published.hierarchy.total_root_nodes == 128 and published.correlation.rank == 25
    assert (published.orthogonalization.num_steps, published.orthogonalization.lr) == (100, 3e-4)


def test_models_are_cached_by_configuration(tmp_path):
    config = synthsaebench_16k_config(seed=3, num_features=256, hidden_dim=16)
    first, record = load_or_build_model(config, cache_dir=tmp_path, show_progress=False)
    assert record["built"] and record["key"] == config_key(config)
    second, again = load_or_build_model(config, cache_dir=tmp_path, show_progress=False)
    assert not again["built"] and again["path"] == record["path"]
    assert torch.equal(first.feature_dict.feature_vectors, second.feature_dict.feature_vectors)
    assert [p.name for p in tmp_path.iterdir()] == [record["key"]]  # no staging folder left behind
    other = synthsaebench_16k_config(seed=4, num_features=256, hidden_dim=16)
    assert config_key(other) != config_key(config)
    saved = tmp_path / record["key"] / "synthetic_model_config.json"
    saved.write_text(json.dumps(other.to_dict()))
    with pytest.raises(ValueError, match="another configuration"):
        load_or_build_model(config, cache_dir=tmp_path, show_progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_or_build_model(config, cache_dir=a_file, show_progress=False)


def _dense_codes(sample_fn, n_batches: int, batch: int) -> torch.Tensor:
    return torch.cat([sample_fn(batch) for _ in range(n_batches)])


def test_fast_sampler_draws_saelens_distribution(small_model):
    """Firing rates, L0, co-firing (correlations), magnitudes, parent gating and mutual exclusion on 60k
    samples from each generator, within a few binomial standard deviations."""
    torch.manual_seed(0)
    reference = _dense_codes(small_model.activation_generator.sample, 30, 2048)
    sampler = FastSyntheticSampler(small_model, seed=1)
    ours = _dense_codes(lambda b: sampler.sample_codes(b).dense(), 30, 2048)
    n = reference.shape[0]
    rate_ref, rate_ours = (reference > 0).float().mean(0), (ours > 0).float().mean(0)
    sigma = (rate_ref * (1 - rate_ref) * 2 / n).sqrt() + 1e-4
    assert ((rate_ours - rate_ref).abs() / sigma).max() < 5.5
    assert (rate_ours.sum() - rate_ref.sum()).abs() / rate_ref.sum() < 0.01  # L0
    frequent = rate_ref.argsort(descending=True)[:12]
    co_ref = (reference[:, frequent] > 0).float().T @ (reference[:, frequent] > 0).float() / n
    co_ours = (ours[:, frequent] > 0).float().T @ (ours[:, frequent] > 0).float() / n
    assert (co_ours - co_ref).abs().max() < 0.01
    active = rate_ref > 0.02

    def magnitude_stats(codes):  # mean and variance of each feature's magnitude where it fires, and count
        fired = (codes > 0).sum(0)[active].float()
        mean = codes.sum(0)[active] / fired
        return mean, (codes**2).sum(0)[active] / fired - mean**2, fired

    mean_ref, var_ref, n_ref = magnitude_stats(reference)
    mean_ours, var_ours, n_ours = magnitude_stats(ours)
    # in standard errors (an absolute 0.1 was 2.7 of them for a feature with magnitude sd 1.6, and failed on
    # some CPUs); no bias: the mean z is near 0
    z = (mean_ours - mean_ref) / (var_ref / n_ref + var_ours / n_ours).sqrt()
    assert z.abs().max() < 5.0 and z.mean().abs() < 5.0 / z.numel() ** 0.5
    for root in small_model.hierarchy.roots:
        stack = [root]
        while stack:
            node = stack.pop()
            children = [child.feature_index for child in node.children]
            if children:
                fired = ours[:, children] > 0
                assert not (
                    fired.any(dim=1) & ~(ours[:, node.feature_index] > 0)
                ).any()  # gated by the parent
                if node.mutually_exclusive_children:
                    assert fired.sum(dim=1).max() <= 1
            stack.extend(node.children)


def test_fast_sampler_hidden_is_the_feature_dictionary(small_model):
    sampler = FastSyntheticSampler(small_model, seed=2)
    codes = sampler.sample_codes(300)
    expected = small_model.feature_dict(codes.dense())
    assert torch.allclose(sampler.hidden(codes), expected, atol=1e-4)
    assert (codes.rows[1:] >= codes.rows[:-1]).all() and (codes.values > 0).all()
    generator = FastActivationGenerator(small_model, seed=2)
    assert torch.equal(generator.sample(300), codes.dense())  # same seed, same draws
    with pytest.raises(ValueError, match="batch_size"):
        sampler.sample_codes(0)


def test_fast_sampler_independent_features_without_hierarchy():
    config = SyntheticModelConfig(
        num_features=64,
        hidden_dim=8,
        firing_probability=ZipfianFiringProbabilityConfig(max_prob=0.5, min_prob=0.01, exponent=1.0),
        seed=1,
    )
    model = SyntheticModel(config)
    sampler = FastSyntheticSampler(model, seed=0)
    codes = torch.cat([sampler.sample_codes(4096).dense() for _ in range(10)])
    rates = (codes > 0).float().mean(0)
    expected = model.activation_generator.firing_probabilities
    assert ((rates - expected).abs() / (expected * (1 - expected) / codes.shape[0]).sqrt()).max() < 5


def test_fast_sampler_refuses_what_it_cannot_reproduce():
    config = SyntheticModelConfig(num_features=8, hidden_dim=4, seed=0)
    model = SyntheticModel(config)
    model.activation_generator.correlation_matrix = torch.eye(8)
    with pytest.raises(ValueError, match="full correlation matrix"):
        FastSyntheticSampler(model)
    model = SyntheticModel(
        SyntheticModelConfig(
            num_features=8, hidden_dim=4, seed=0, correlation=LowRankCorrelationConfig(rank=2, seed=0)
        )
    )
    roots = [HierarchyNode(feature_index=None, children=[HierarchyNode(feature_index=1)])]
    model.hierarchy = Hierarchy(roots=roots, modifier=None)
    with pytest.raises(ValueError, match="organisational"):
        FastSyntheticSampler(model)


def _fake_step(controller: L0Controller, trainer: SimpleNamespace, l0: float) -> None:
    acts = torch.zeros(4, 1000)
    acts[:, : round(l0)] = 1.0
    trainer.n_training_steps += 1
    controller(trainer, SimpleNamespace(feature_acts=acts))


def test_l0_controller_settles_on_its_target():
    """A planted system whose L0 is 400 / coefficient (a ReLU SAE's L0 falls as its L1 coefficient rises)."""
    scheduler = CoefficientScheduler(warm_up_steps=0, final_value=1.0)
    trainer = SimpleNamespace(coefficient_schedulers={"l1": scheduler}, n_training_steps=0)
    controller = L0Controller(target=25, coefficient="l1")
    for _ in range(1500):
        _fake_step(controller, trainer, 400 / scheduler.final_value)
    assert scheduler.final_value == pytest.approx(16, rel=0.05)
    assert controller.last[1] == pytest.approx(25, abs=1)
    stuck = CoefficientScheduler(warm_up_steps=0, final_value=1.0)  # an L0 that never follows: bounded
    trainer = SimpleNamespace(coefficient_schedulers={"l0": stuck}, n_training_steps=0)
    bounded = L0Controller(target=10, coefficient="l0", bound=100)
    for _ in range(2000):
        _fake_step(bounded, trainer, 500)
    assert stuck.final_value == pytest.approx(100) and math.isfinite(stuck.current_value)
    with pytest.raises(ValueError, match="no 'l0' coefficient"):
        L0Controller(target=10, coefficient="l0")(
            SimpleNamespace(coefficient_schedulers={"l1": scheduler}, n_training_steps=0),
            SimpleNamespace(feature_acts=torch.ones(2, 3)),
        )
    with pytest.raises(ValueError, match="target"):
        L0Controller(target=0, coefficient="l1")


def test_bench_synth_smoke_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDL_ANCHOR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["bench", "synth", "--preset", "smoke", "--out", str(out), "--no-progress"]
    assert main([*args, "--variants", "stock,anchored+theory,aligned+theory"]) == 0
    printed = capsys.readouterr().out
    assert "NOT the published protocol" in printed and "published" in printed
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["variant"] for r in rows] == ["stock", "anchored+theory", "aligned+theory"]
    for row in rows:
        for fragment in ("mcc", "f1", "uniqueness", "explained_variance", "l0", "dead"):
            keys = [k for k in row if fragment in k]
            assert keys and all(isinstance(row[k], (int, float)) for k in keys), fragment
        assert row["training_samples"] == 256 * 40 and row["l0"] == pytest.approx(12, abs=0.01)
        assert 0 < row["mcc"] <= 1 and 0 <= row["f1"] <= 1
        sae = SAE.load_from_disk(str(out / row["saved_to"]))
        assert sae.cfg.d_sae == 256 and not hasattr(sae, "anchor_directions")
    assert rows[0]["ground_truth_used"] is False and rows[1]["ground_truth_used"] is True
    assert rows[1]["resampling_events"] >= 1 and "resampling_events" not in rows[0]
    assert results["published"]["values"]["batchtopk"]["mcc"] == 0.757
    assert results["config"]["budget_fraction"] == pytest.approx(256 * 40 / 200_000_000)
    assert {c["variant"] for c in results["comparisons"]} == {"anchored+theory", "aligned+theory"}
    assert (out / "table.txt").read_text().startswith("SynthSAEBench (smoke)")
    assert (out / "mcc_f1_vs_l0.png").stat().st_size > 0
    # --resume with the same selection trains nothing more; another variant is added
    assert main([*args, "--variants", "stock,anchored+theory,aligned+theory,theory", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in again["rows"]] == ["stock", "anchored+theory", "aligned+theory", "theory"]
    assert again["rows"][0] == rows[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "topk"], "unknown method"),
        (["--variants", "stock,stock"], "given twice"),
        (["--l0", "0"], "L0 target"),
        (["--samples", "10"], "at least one batch"),
    ],
)
def test_bench_synth_refuses_bad_selections(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("SDL_ANCHOR_CACHE", str(tmp_path / "cache"))
    code = main(
        ["bench", "synth", "--preset", "smoke", "--out", str(tmp_path / "o"), "--no-progress", *extra]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def _planted_row(variant: str, mcc: float, f1: float, ev: float, seed: int = 43) -> dict:
    return {
        "model_seed": seed,
        "held_out": seed != 42,
        "method": "batchtopk",
        "target_l0": 25,
        "variant": variant,
        "mcc": mcc,
        "f1": f1,
        "uniqueness": 0.9,
        "explained_variance": ev,
        "l0": 25.0,
        "dead_fraction": 0.1,
        "mcc_without_anchors": mcc,
        "f1_without_anchors": f1,
        "train_seconds": 60.0,
    }


def test_comparisons_apply_the_goal_to_planted_rows():
    from sdl_anchor.eval.synth_bench import comparisons, render_report

    rows = [
        _planted_row("stock", 0.50, 0.40, 0.80),
        _planted_row("theory", 0.53, 0.43, 0.795),  # +0.03, +0.03, -0.005: met
        _planted_row("anchored", 0.525, 0.43, 0.78),  # explained variance -0.02: missed
        _planted_row("aligned+theory", 0.515, 0.44, 0.80),  # MCC +0.015: missed
    ]
    results = {
        "rows": rows,
        "config": {
            "preset": "planted",
            "training_samples": 1024,
            "budget_fraction": 1024 / 200_000_000,
            "published_samples": 200_000_000,
            "published_protocol": False,
            "eval_samples": 2048,
        },
        "published": {"values": {}},
    }
    goals = {c["variant"]: c["goal"] for c in comparisons(results)}
    assert goals == {"theory": True, "anchored": False, "aligned+theory": False}
    text = render_report("sdl-anchor bench synth --preset planted", results)
    assert "met by theory." in text and "the best variant, theory" in text
    assert "0.05% of the published" not in text and "0.00% of the published" in text
