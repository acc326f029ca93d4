import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdl_anchor.lrb.feature_matrix import make_feature_matrix, welch_bound


def off_diagonal(w):
    gram = w @ w.T
    return gram[~torch.eye(w.shape[0], dtype=torch.bool)]


def test_bounded_reaches_target_with_unit_rows():
    m = make_feature_matrix(300, 100, 0.2, "bounded", seed=1)
    w = m.directions
    assert w.shape == (300, 100)
    assert torch.allclose(w.norm(dim=1), torch.ones(300), atol=1e-5)
    off = off_diagonal(w)
    assert off.abs().max() <= 0.2 + 1e-5
    assert m.max_abs_cos == pytest.approx(float(off.abs().max()), abs=1e-5)
    assert m.max_cos == pytest.approx(float(off.max()), abs=1e-5)


def test_random_start_violates_so_the_optimiser_did_work():
    m = make_feature_matrix(300, 100, 0.2, "bounded", seed=1)
    assert m.steps >= 1


def test_negative_bounds_positive_side_and_pushes_negative():
    m = make_feature_matrix(200, 100, 0.05, "negative", seed=0)
    off = off_diagonal(m.directions)
    assert off.max() <= 0.05 + 1e-5
    assert m.steps >= 20  # the negative push runs for its minimum number of steps
    # The positive-side energy sum relu(<w_i, w_j>)^2 falls well below a merely bounded matrix's.
    bounded = off_diagonal(make_feature_matrix(200, 100, 0.3, "bounded", seed=0).directions)
    assert (off.relu() ** 2).mean() < 0.5 * (bounded.relu() ** 2).mean()


def test_deterministic_per_seed():
    a = make_feature_matrix(100, 50, 0.25, seed=3).directions
    b = make_feature_matrix(100, 50, 0.25, seed=3).directions
    c = make_feature_matrix(100, 50, 0.25, seed=4).directions
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_chunked_gram_matches_unchunked():
    a = make_feature_matrix(130, 60, 0.25, seed=0, chunk_size=4096).directions
    b = make_feature_matrix(130, 60, 0.25, seed=0, chunk_size=17).directions
    assert torch.allclose(a, b, atol=1e-4)


def test_paper_size_reaches_m_quickly():
    m = make_feature_matrix(1000, 768, 0.1, seed=0)
    assert m.max_abs_cos <= 0.1


@pytest.mark.parametrize("n,d", [(1000, 768), (200, 20), (50, 10)])
def test_below_welch_bound_is_rejected(n, d):
    bound = welch_bound(n, d)
    with pytest.raises(ValueError, match="Welch bound"):
        make_feature_matrix(n, d, bound * 0.9, "bounded")


def test_negative_mode_rejects_impossible_targets():
    with pytest.raises(ValueError, match="at most d \\+ 1 = 5 unit vectors"):
        make_feature_matrix(10, 4, -0.5, "negative")
    with pytest.raises(ValueError, match="unreachable.*at least -0.3333"):  # below the simplex's -1/(n-1)
        make_feature_matrix(4, 4, -0.5, "negative")
    with pytest.raises(ValueError, match="positive value"):
        make_feature_matrix(30, 4, 0.0, "negative")


def test_unknown_mode_and_budget_errors():
    with pytest.raises(ValueError, match="interference must be one of"):
        make_feature_matrix(10, 5, 0.5, "sideways")
    with pytest.raises(ValueError, match="could not reach"):
        make_feature_matrix(400, 40, welch_bound(400, 40) * 1.01, max_steps=2)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 80),
    d=st.integers(8, 40),  # in very low d the bounds are far from tight
    slack=st.floats(2.0, 4.0),
    mode=st.sampled_from(["bounded", "negative"]),
    seed=st.integers(0, 2**16),
)
def test_property_any_feasible_target_is_met(n, d, slack, mode, seed):
    target = min(0.95, max(welch_bound(n, d) * slack, 0.05))
    m = make_feature_matrix(n, d, target, mode, seed=seed, max_steps=3000)
    off = off_diagonal(m.directions)
    assert torch.allclose(m.directions.norm(dim=1), torch.ones(n), atol=1e-5)
    if mode == "bounded":
        assert off.abs().max() <= target + 1e-5
    else:
        assert off.max() <= target + 1e-5
