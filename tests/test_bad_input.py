import json

import pytest
import torch

import sdl_anchor as sa
from sdl_anchor.io import write_json


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, "sparsity S must be in \\[0, 1\\)"),
        ({"sparsity": -0.1}, "sparsity S must be in \\[0, 1\\)"),
        ({"max_interference": 0.01}, "Welch bound"),
        ({"beta": 0.0}, "beta .* must be positive"),
        ({"beta": -1.0}, "beta .* must be positive"),
        ({"c_min": -0.5}, "c_min must be"),
        ({"kind": "crosscoder", "n_sources": 1}, "n_sources >= 2"),
        ({"kind": "autoencoder"}, "kind must be one of"),
        ({"n_features": 0}, "n_features must be a positive integer"),
        ({"d_out": 30}, "d_out=30 only applies to kind='transcoder'"),
        ({"interference": "weird"}, "interference must be one of"),
        ({"hierarchy": {0: [200]}}, "unknown child feature 200"),
        ({"hierarchy": {-1: [2]}}, "unknown parent feature -1"),
        ({"hierarchy": {0: [1], 1: [0]}}, "cycle"),
        ({"hierarchy": {0: [0]}}, "cycle"),
        ({"hierarchy": {0: [2], 1: [2]}}, "only one parent"),
        ({"hierarchy": {0: 3}}, "must be a list"),
        ({"hierarchy": [(0, [1])]}, "must be a dict"),
        ({"child_firing_probability": 0.0, "hierarchy": {0: [1]}}, "child_firing_probability"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"c_min": "1"}, "c_min must be a number"),
    ],
)
def test_invalid_parameters_raise_clear_value_errors(kwargs, message):
    params = {"n_features": 100, "d_in": 40, "max_interference": 0.3, **kwargs}
    with pytest.raises(ValueError, match=message):
        sa.LinearRepresentationBench(**params)


def test_bad_batch_sizes_and_k():
    bench = sa.LinearRepresentationBench(n_features=20, d_in=16, max_interference=0.6)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        bench.sample(0)
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 20\\]"):
        bench.anchors(k=21)
    with pytest.raises(ValueError, match="k must be an integer"):
        bench.anchors(k=0)


@pytest.fixture()
def saved(tmp_path):
    bench = sa.LinearRepresentationBench(
        kind="transcoder",
        n_features=30,
        d_in=20,
        d_out=24,
        max_interference=0.5,
        hierarchy={0: [1, 2]},
        mutually_exclusive_children=True,
        seed=3,
    )
    bench.save(tmp_path / "bench")
    return bench, tmp_path / "bench"


def test_save_load_round_trip(saved):
    bench, path = saved
    loaded = sa.LinearRepresentationBench.load(path)
    assert loaded.config == bench.config
    assert torch.equal(loaded.features_in, bench.features_in)
    assert torch.equal(loaded.features_out, bench.features_out)
    assert torch.equal(loaded.sample(50).codes, sa.LinearRepresentationBench.load(path).sample(50).codes)
    assert loaded.interference_stats == bench.interference_stats
    assert sorted(p.name for p in path.iterdir()) == ["lrb_config.json", "lrb_features.safetensors"]


def test_load_missing_folder_and_files(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sa.LinearRepresentationBench.load(tmp_path / "nope")
    (path / "lrb_features.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="LRB features"):
        sa.LinearRepresentationBench.load(path)


def test_load_corrupt_json(saved):
    _, path = saved
    (path / "lrb_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sa.LinearRepresentationBench.load(path)


def test_load_corrupt_tensor_file(saved):
    _, path = saved
    (path / "lrb_features.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sa.LinearRepresentationBench.load(path)


def test_load_mismatched_config(saved):
    _, path = saved
    meta = json.loads((path / "lrb_config.json").read_text())
    meta["config"]["n_features"] = 31
    write_json(path / "lrb_config.json", meta)
    with pytest.raises(ValueError, match="does not match lrb_config.json"):
        sa.LinearRepresentationBench.load(path)


@pytest.mark.parametrize(
    "kind, extra", [("sae", {}), ("crosscoder", {"n_sources": 2}), ("transcoder", {"d_out": 12})]
)
def test_features_that_are_not_unit_norm_per_block_are_refused(kind, extra, tmp_path):
    """The LRB specification: every source block of a feature direction is unit norm; a zero row or a
    rescaled block, given to from_features or found in a saved bench, is refused with the row named."""
    bench = sa.LinearRepresentationBench(kind=kind, n_features=20, d_in=16, max_interference=0.5, **extra)
    features = bench.features_in.clone()
    features[3, -4:] *= 3.0  # the last block of feature 3
    with pytest.raises(ValueError, match="features_in: (block 1 of )?feature 3 has norm .*must be unit norm"):
        sa.LinearRepresentationBench.from_features(bench.config, features, bench.features_out)
    bench.save(tmp_path / "bench")
    from safetensors.torch import save_file

    tensors = {"features_in": bench.features_in.clone()}
    if kind == "transcoder":
        tensors["features_out"] = bench.features_out.clone()
        tensors["features_out"][0] = 0.0
    else:
        tensors["features_in"][0] = 0.0
    save_file(tensors, str(tmp_path / "bench" / "lrb_features.safetensors"))
    side = "features_out" if kind == "transcoder" else "features_in"
    with pytest.raises(ValueError, match=f"does not match lrb_config.json: {side}: .*feature 0 has norm 0"):
        sa.LinearRepresentationBench.load(tmp_path / "bench")


def test_a_clt_bench_allows_zero_blocks_but_not_a_feature_with_none():
    """A CLT feature is read at one layer and writes to some: zero blocks are the specification there, a
    feature with no unit block is not."""
    bench = sa.LinearRepresentationBench(
        kind="clt", n_features=20, d_in=16, d_out=16, n_layers=2, max_interference=0.5
    )
    rebuilt = sa.LinearRepresentationBench.from_features(bench.config, bench.features_in, bench.features_out)
    assert torch.equal(rebuilt.features_out, bench.features_out)
    features = bench.features_in.clone()
    features[5] = 0.0
    with pytest.raises(
        ValueError, match="feature 5 has norm 0.*unit norm or zero \\(and one block unit norm\\)"
    ):
        sa.LinearRepresentationBench.from_features(bench.config, features, bench.features_out)


def test_load_wrong_format(saved):
    _, path = saved
    write_json(path / "lrb_config.json", {"format": "something else"})
    with pytest.raises(ValueError, match="not an sdl_anchor LRB config"):
        sa.LinearRepresentationBench.load(path)


def test_load_config_with_invalid_values(saved):
    _, path = saved
    meta = json.loads((path / "lrb_config.json").read_text())
    meta["config"]["sparsity"] = 1.5
    write_json(path / "lrb_config.json", meta)
    with pytest.raises(ValueError, match="sparsity"):
        sa.LinearRepresentationBench.load(path)


@pytest.mark.parametrize(
    "config, kwargs, message",
    [
        ("AnchoredTopKTrainingSAEConfig", {"d_sae": 10, "k": 0}, "k must be a positive integer"),
        ("AnchoredTopKTrainingSAEConfig", {"d_sae": 10, "k": 2.5}, "k must be a positive integer"),
        ("AnchoredBatchTopKTrainingSAEConfig", {"d_sae": 10, "k": -1.0}, "k must be a positive number"),
        ("AnchoredStandardTrainingSAEConfig", {"d_sae": -5}, "d_sae must be a positive integer, got -5"),
        ("AnchoredJumpReLUTrainingSAEConfig", {"d_sae": 0}, "d_sae must be a positive integer"),
        ("AnchoredStandardTrainingSAEConfig", {"d_sae": 10, "d_in": 0}, "d_in must be a positive integer"),
    ],
)
def test_anchored_configs_refuse_widths_and_k_that_fail_later_inside_torch(config, kwargs, message):
    """Each of these once constructed, then failed deep in torch (a negative tensor size) or trained silently
    at L0 0."""
    from sdl_anchor.integrations import anchored

    with pytest.raises(ValueError, match=message):
        getattr(anchored, config)(**{"d_in": 16, **kwargs})
    assert anchored.AnchoredBatchTopKTrainingSAEConfig(d_in=16, d_sae=10, k=2.5).k == 2.5  # a batch mean


@pytest.mark.parametrize("architecture", ["AnchoredTopKTrainingSAE", "AnchoredBatchTopKTrainingSAE"])
def test_k_above_d_sae_is_refused_at_the_first_step_not_deep_in_torch(architecture):
    """SAELens's default k (100) on a narrow coder builds, as stock SAELens's does; training it once failed
    inside ``torch.topk`` with ``selected index k out of range``."""
    bench = sa.LinearRepresentationBench(n_features=20, d_in=16, max_interference=0.5)
    coder = getattr(sa, architecture)(getattr(sa, architecture + "Config")(d_in=16, d_sae=10))
    assert coder.cfg.k == 100
    with pytest.raises(ValueError, match="k=100 latents kept per input but the coder has d_sae=10"):
        sa.train_on_bench(coder, bench, n_steps=2, batch_size=32, show_progress=False)


def _standard_sae(d_in: int, d_sae: int = 30):
    from sae_lens import StandardSAE, StandardSAEConfig

    return StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))


def test_scores_check_widths_before_running_the_sae():
    bench = sa.LinearRepresentationBench(n_features=20, d_in=16, max_interference=0.5)
    with pytest.raises(ValueError, match="W_enc has d_in=12 but the bench's inputs have width 16"):
        sa.live_recovery(_standard_sae(12), bench)
    transcoder = sa.LinearRepresentationBench(
        n_features=20, d_in=16, d_out=12, kind="transcoder", max_interference=0.5, hierarchy={0: [1, 2]}
    )
    with pytest.raises(
        ValueError, match="W_dec writes width 16 but the data's output features have width 12"
    ):
        sa.hierarchy_absorption(_standard_sae(16), transcoder, n_samples=64)


def test_activation_patterns_refuse_what_would_read_as_every_latent_dead():
    bench = sa.LinearRepresentationBench(n_features=20, d_in=16, max_interference=0.5)
    sae = _standard_sae(16)
    with pytest.raises(ValueError, match="magnitude must be a positive finite number"):
        sa.activation_patterns(sae, bench, magnitude=float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        sa.activation_patterns(sae, torch.full((5, 16), float("nan")))
    with torch.no_grad():
        sae.W_enc.fill_(float("nan"))
    with pytest.raises(ValueError, match="W_enc holds 480 NaN or infinite values"):
        sa.activation_patterns(sae, bench)


def test_class_mean_anchors_refuse_labels_that_casting_would_truncate():
    acts = torch.randn(6, 4)
    for labels in ([0.5, 0.5, 1.5, 1.5, 2.5, 2.5], [0, 0, 1, 1, 2, float("nan")]):
        with pytest.raises(ValueError, match="fractional, NaN or infinite"):
            sa.class_mean_anchors(acts, labels)
    with pytest.raises(ValueError, match="integer class ids, got dtype torch.bool"):
        sa.class_mean_anchors(acts, [True, False] * 3)
    with pytest.raises(ValueError, match="at least one row"):
        sa.class_mean_anchors(torch.zeros(0, 4), [])
    whole = sa.class_mean_anchors(acts, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0])  # whole numbers as floats are ids
    assert torch.equal(whole.directions_in, sa.class_mean_anchors(acts, [0, 0, 1, 1, 2, 2]).directions_in)


def test_train_on_bench_refuses_a_learning_rate_that_cannot_train():
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    from sdl_anchor.integrations.training import train_on_bench

    bench = sa.LinearRepresentationBench(n_features=20, d_in=16, max_interference=0.5)
    for lr in (float("inf"), 0.0, -1e-3):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            train_on_bench(StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=30)), bench, lr=lr)
