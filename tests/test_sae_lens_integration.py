import pytest
import torch
from sae_lens import (
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.synthetic import (
    SyntheticModel,
    SyntheticSAERunner,
    SyntheticSAERunnerConfig,
    eval_sae_on_synthetic_data,
)

import sdl_anchor as sa
from sdl_anchor.integrations.synthetic import to_synthetic_model


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(n_features=24, d_in=20, sparsity=0.9, max_interference=0.5, seed=2)


def test_train_on_bench_with_sae_lens_trainer_learns_the_features(bench):
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=20, d_sae=96, k=3))
    before = sa.recovery(sae, bench, mcc=False)
    trained = sa.train_on_bench(sae, bench, n_steps=400, batch_size=256, lr=3e-3, show_progress=False)
    after = sa.recovery(trained, bench, mcc=False)
    assert trained is sae
    assert after["M_IP_dec"] > before["M_IP_dec"] + 0.3
    assert after["M_GT_dec"] > 0.8


def test_train_on_finite_dataset(bench):
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=20, d_sae=48, k=3))
    sa.train_on_bench(sae, bench, n_steps=30, batch_size=64, dataset=bench.dataset(500), show_progress=False)
    with pytest.raises(ValueError, match="different bench"):
        other = sa.LinearRepresentationBench(n_features=24, d_in=20, max_interference=0.5, seed=9)
        sa.train_on_bench(sae, bench, n_steps=1, dataset=other.dataset(10))


def test_train_on_bench_rejects_mismatches(bench):
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=10, d_sae=48, k=3))
    with pytest.raises(ValueError, match="d_in=10"):
        sa.train_on_bench(sae, bench, n_steps=1)
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        sa.train_on_bench(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=20, d_sae=48, k=3)), bench, n_steps=0)
    transcoder_bench = sa.LinearRepresentationBench(
        kind="transcoder", n_features=24, d_in=20, max_interference=0.5
    )
    with pytest.raises(ValueError, match="bench needs a transcoder"):
        sa.train_on_bench(
            TopKTrainingSAE(TopKTrainingSAEConfig(d_in=20, d_sae=48, k=3)), transcoder_bench, n_steps=1
        )


def test_an_l0_target_steers_a_relu_sae_to_it(bench):
    """Left alone at a small L1 coefficient, a ReLU SAE fires most of its latents; with an L0 target of 8 the
    controller raises the coefficient until about 8 fire, and the SAE's metadata says where it ended."""

    def trained_l0(l0_target):
        torch.manual_seed(0)
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=20, d_sae=96, l1_coefficient=1e-3))
        sa.train_on_bench(
            sae, bench, n_steps=400, batch_size=256, lr=3e-3, show_progress=False, l0_target=l0_target
        )
        x = bench.sample(2048, torch.Generator().manual_seed(1)).x_in
        return sae, float((sae.encode(x) != 0).float().sum(-1).mean())

    free, free_l0 = trained_l0(None)
    steered, steered_l0 = trained_l0(8)
    assert free_l0 > 40 and steered_l0 == pytest.approx(8, abs=2)
    control = steered.cfg.metadata.l0_control
    assert (control["target"], control["coefficient"], control["initial_value"]) == (8.0, "l1", 1e-3)
    assert control["final_value"] > 100 * control["initial_value"]
    assert control["final_batch_l0"] == pytest.approx(8, abs=3)
    assert getattr(free.cfg.metadata, "l0_control", None) is None


def test_an_l0_target_is_refused_where_no_coefficient_sets_l0(bench):
    topk = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=20, d_sae=48, k=3))
    with pytest.raises(ValueError, match="keeps k latents per input: set its k"):
        sa.train_on_bench(topk, bench, n_steps=5, show_progress=False, l0_target=8)
    relu = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=20, d_sae=48))
    for bad in (0, -2.0, True, float("nan"), "8"):
        with pytest.raises(ValueError, match="l0_target must be a positive number"):
            sa.train_on_bench(relu, bench, n_steps=5, show_progress=False, l0_target=bad)


def test_exported_synthetic_model_samples_the_bench_exactly(bench):
    model = to_synthetic_model(bench, seed=7)
    assert isinstance(model, SyntheticModel)
    hidden, features = model.sample_with_features(300)
    assert torch.allclose(hidden, features @ bench.features_in, atol=1e-5)
    fired = features > 0
    assert fired.float().mean().item() == pytest.approx(0.1, rel=0.15)


def test_sae_lens_runner_and_eval_run_on_lrb_data(bench, tmp_path):
    model = to_synthetic_model(bench)
    config = SyntheticSAERunnerConfig(
        synthetic_model=str(tmp_path / "unused"),
        sae=TopKTrainingSAEConfig(d_in=20, d_sae=48, k=3),
        training_samples=256 * 20,
        batch_size=256,
        eval_samples=1024,
        output_path=str(tmp_path / "out"),
        checkpoint_path=None,
    )
    result = SyntheticSAERunner(config, override_synthetic_model=model).run()
    assert result.final_eval is not None and 0.0 <= result.final_eval.mcc <= 1.0
    evaluation = eval_sae_on_synthetic_data(
        result.sae, model.feature_dict, model.activation_generator, num_samples=512
    )
    assert evaluation.true_l0 == pytest.approx(24 * 0.1, rel=0.25)


def test_exported_model_saves_for_sae_lens(tmp_path):
    bench = sa.LinearRepresentationBench(
        n_features=24,
        d_in=20,
        sparsity=0.8,
        max_interference=0.5,
        hierarchy={0: [1, 2]},
        mutually_exclusive_children=True,
        child_firing_probability=0.5,
    )
    to_synthetic_model(bench).save(tmp_path / "model")
    loaded = SyntheticModel.load_from_disk(tmp_path / "model")
    assert torch.allclose(loaded.feature_dict.feature_vectors, bench.features_in)
    probs = loaded.activation_generator.firing_probabilities
    assert probs[0].item() == pytest.approx(0.2) and probs[1].item() == pytest.approx(0.5)
    assert loaded.hierarchy is not None
    fired = loaded.activation_generator.sample(4000) > 0
    assert not (fired[:, [1, 2]] & ~fired[:, [0]]).any()
    assert (fired[:, [1, 2]].sum(1) <= 1).all()


def test_export_rejects_non_sae_kinds():
    bench = sa.LinearRepresentationBench(kind="crosscoder", n_features=10, d_in=12, max_interference=0.6)
    with pytest.raises(ValueError, match="SAE data only"):
        to_synthetic_model(bench)
