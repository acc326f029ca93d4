import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdl_anchor as sa
from sdl_anchor.lrb.codes import bernoulli_positions


def test_codes_follow_bernoulli_times_shifted_exponential():
    bench = sa.LinearRepresentationBench(
        n_features=200, d_in=100, sparsity=0.95, c_min=0.5, beta=2.0, max_interference=0.3
    )
    codes = bench.sample(20_000).codes
    fired = codes > 0
    assert fired.float().mean().item() == pytest.approx(0.05, rel=0.03)
    values = codes[fired]
    assert values.min() >= 0.5
    # c_min + Exp(beta): mean c_min + beta, variance beta^2
    assert values.mean().item() == pytest.approx(2.5, rel=0.03)
    assert values.var().item() == pytest.approx(4.0, rel=0.08)
    per_feature = fired.float().mean(0)
    assert per_feature.min() > 0.03 and per_feature.max() < 0.07


def test_sampling_is_sparse_not_n_uniforms_per_sample():
    g = torch.Generator().manual_seed(0)
    positions, valid = bernoulli_positions(4096 * 16384, 0.01, g, "cpu")
    assert positions.numel() < 0.011 * 4096 * 16384  # ~1% of the grid, not the whole grid
    assert valid.sum().item() == pytest.approx(0.01 * 4096 * 16384, rel=0.01)
    kept = positions[valid]
    assert (kept.diff() > 0).all()  # distinct, increasing positions


def test_representations_are_linear_in_the_codes():
    bench = sa.LinearRepresentationBench(n_features=80, d_in=40, sparsity=0.8, max_interference=0.35)
    b = bench.sample(500)
    assert b.x_in.shape == (500, 40)
    assert torch.allclose(b.codes @ bench.features_in, b.x_in, atol=1e-5)
    assert b.x_out is b.x_in


def test_transcoder_has_independent_output_features_of_its_own_width():
    bench = sa.LinearRepresentationBench(
        kind="transcoder", n_features=80, d_in=40, d_out=56, sparsity=0.8, max_interference=0.35
    )
    assert bench.features_out.shape == (80, 56)
    b = bench.sample(300)
    assert torch.allclose(b.codes @ bench.features_out, b.x_out, atol=1e-5)
    assert torch.allclose(b.codes @ bench.features_in, b.x_in, atol=1e-5)


def test_crosscoder_concatenates_unit_norm_source_blocks():
    bench = sa.LinearRepresentationBench(
        kind="crosscoder", n_features=60, d_in=32, n_sources=3, sparsity=0.8, max_interference=0.4
    )
    assert bench.features_in.shape == (60, 96)
    for block in bench.source_slices:
        assert torch.allclose(bench.features_in[:, block].norm(dim=1), torch.ones(60), atol=1e-5)
    assert not torch.allclose(bench.features_in[:, :32], bench.features_in[:, 32:64])
    b = bench.sample(100)
    assert b.x_in.shape == (100, 96) and torch.equal(b.x_out, b.x_in)


def test_same_seed_same_bench_and_samples():
    a = sa.LinearRepresentationBench(n_features=50, d_in=30, seed=5, max_interference=0.4)
    b = sa.LinearRepresentationBench(n_features=50, d_in=30, seed=5, max_interference=0.4)
    assert torch.equal(a.features_in, b.features_in)
    assert torch.equal(a.sample(64).codes, b.sample(64).codes)
    assert not torch.equal(a.sample(64).codes, a.sample(64).codes)  # the stream advances


def test_hierarchy_children_fire_only_with_parents_and_exclusively():
    bench = sa.LinearRepresentationBench(
        n_features=40,
        d_in=30,
        sparsity=0.5,
        max_interference=0.45,
        hierarchy={0: [1, 2, 3], 1: [4, 5]},
        mutually_exclusive_children=True,
    )
    fired = bench.sample(20_000).codes > 0
    assert not (fired[:, [1, 2, 3]] & ~fired[:, [0]]).any()
    assert not (fired[:, [4, 5]] & ~fired[:, [1]]).any()
    assert (fired[:, [1, 2, 3]].sum(1) <= 1).all()
    assert (fired[:, [4, 5]].sum(1) <= 1).all()
    # each child is chosen uniformly: P(child 1 | parent 0) = (1 - 0.5^3) / 3
    conditional = fired[fired[:, 0]][:, 1].float().mean().item()
    assert conditional == pytest.approx((1 - 0.5**3) / 3, abs=0.02)


def test_child_firing_probability_is_conditional_on_the_parent():
    bench = sa.LinearRepresentationBench(
        n_features=30,
        d_in=30,
        sparsity=0.9,
        max_interference=0.3,
        hierarchy={0: [1]},
        child_firing_probability=0.6,
    )
    fired = bench.sample(40_000).codes > 0
    assert fired[:, 0].float().mean().item() == pytest.approx(0.1, rel=0.05)
    assert fired[fired[:, 0]][:, 1].float().mean().item() == pytest.approx(0.6, abs=0.03)


def test_finite_dataset_and_stream_are_sae_lens_data_providers():
    bench = sa.LinearRepresentationBench(n_features=50, d_in=30, sparsity=0.9, max_interference=0.4)
    stream = bench.stream(32)
    assert next(stream).shape == (32, 30)
    dataset = bench.dataset(100)
    assert len(dataset) == 100 and dataset.x_in.shape == (100, 30)
    loader = dataset.loader(40)
    seen = torch.cat([next(loader) for _ in range(2)])  # one epoch = 2 full batches of 40
    rows = {tuple(r.tolist()) for r in dataset.x_in}
    assert all(tuple(r.tolist()) in rows for r in seen)
    assert len({tuple(r.tolist()) for r in seen}) == 80 or (seen == 0).all(1).any()
    x_in, x_out = next(bench.stream(8, with_targets=True))
    assert torch.equal(x_in, x_out)


def test_anchors_are_ground_truth_features():
    bench = sa.LinearRepresentationBench(
        kind="transcoder", n_features=50, d_in=30, d_out=20, max_interference=0.45
    )
    anchors = bench.anchors(k=7, seed=1)
    assert isinstance(anchors, sa.AnchorSet)
    assert anchors.indices.shape == (7,) and len(set(anchors.indices.tolist())) == 7
    assert torch.equal(anchors.directions_in, bench.features_in[anchors.indices])
    assert torch.equal(anchors.directions_out, bench.features_out[anchors.indices])
    assert torch.equal(bench.anchors(7, seed=1).indices, anchors.indices)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 120),
    sparsity=st.floats(0.0, 0.999),
    c_min=st.floats(0.0, 3.0),
    beta=st.floats(0.01, 5.0),
    batch=st.integers(1, 300),
    seed=st.integers(0, 1000),
)
def test_property_codes_are_valid_for_any_parameters(n, sparsity, c_min, beta, batch, seed):
    bench = sa.LinearRepresentationBench(
        n_features=n,
        d_in=16,
        sparsity=sparsity,
        c_min=c_min,
        beta=beta,
        seed=seed,
        max_interference=0.99,
    )
    b = bench.sample(batch)
    codes = b.codes
    assert codes.shape == (batch, n)
    assert torch.isfinite(codes).all() and (codes >= 0).all()
    assert ((codes == 0) | (codes >= c_min)).all()
    assert torch.allclose(
        codes @ bench.features_in, b.x_in, atol=1e-4 * max(1.0, c_min + beta) * math.sqrt(n)
    )
