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
