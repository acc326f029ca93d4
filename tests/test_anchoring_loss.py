import pytest
import torch

import sdl_anchor as sa
from sdl_anchor.anchoring import anchor_loss, anchor_loss_cosine, anchor_loss_mse, mean_anchor_cosine
from sdl_anchor.anchoring import loss as anchoring_loss


def test_mse_matches_eq22_by_hand():
    w_enc = torch.tensor([[1.0, 2.0, 5.0], [0.0, 1.0, 5.0]])  # [d_in=2, d_sae=3]
    w_dec = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]])  # [d_sae=3, d_out=3]
    a_in = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # k=2
    a_out = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # encoder: col0 (1,0)-(1,0)=0; col1 (2,1)-(0,1) -> 4; decoder: row0 (0,1,1) -> 2; row1 (0,1,0) -> 1
    assert anchor_loss_mse(w_enc, w_dec, a_in, a_out).item() == pytest.approx(7.0)


def test_mse_gradient_is_twice_the_residual_on_anchored_slices_only():
    w_enc = torch.randn(4, 6, requires_grad=True)
    w_dec = torch.randn(6, 5, requires_grad=True)
    a_in, a_out = torch.randn(2, 4), torch.randn(2, 5)
    anchor_loss_mse(w_enc, w_dec, a_in, a_out).backward()
    assert torch.allclose(w_enc.grad[:, :2], 2 * (w_enc[:, :2] - a_in.T).detach())
    assert torch.allclose(w_dec.grad[:2], 2 * (w_dec[:2] - a_out).detach())
    assert (w_enc.grad[:, 2:] == 0).all() and (w_dec.grad[2:] == 0).all()


def test_cosine_form_by_hand_and_scale_invariance():
    w_enc = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    w_dec = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    a_in = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a_out = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # enc: cos((3,0),(1,0)) = 1; cos((0,2),(1,1)) = 1/sqrt2. dec: cos((0,4),(1,0)) = 0; cos((1,1),(1,1)) = 1
    expected = (1 - 1) + (1 - 2**-0.5) + (1 - 0) + (1 - 1)
    assert anchor_loss_cosine(w_enc, w_dec, a_in, a_out).item() == pytest.approx(expected)
    assert anchor_loss_cosine(5 * w_enc, 0.1 * w_dec, a_in, a_out).item() == pytest.approx(expected, rel=1e-5)
    assert mean_anchor_cosine(w_enc, w_dec, a_in, a_out).item() == pytest.approx(
        0.5 * ((1 + 2**-0.5) / 2 + 0.5)
    )


def test_cosine_gradient_against_autograd_of_a_hand_formula():
    w_enc = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w_dec = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 4, dtype=torch.float64)
    anchor_loss_cosine(w_enc, w_dec, a, a).backward()
    e = w_enc.detach()[:, 0]
    u = a[0] / a[0].norm()
    # d/de (1 - e.u/|e|) = -(u - (e.u) e / |e|^2) / |e|
    hand = -(u - (e @ u) * e / (e @ e)) / e.norm()
    assert torch.allclose(w_enc.grad[:, 0], hand)


def test_dispatch_rejects_unknown_form():
    with pytest.raises(ValueError, match="anchor_loss must be one of"):
        anchor_loss("l1", torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(1, 2), torch.ones(1, 2))


def test_class_mean_anchors_recover_planted_directions():
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(8, 64), dim=1)
    labels = torch.arange(8).repeat_interleave(200)
    acts = 4 * directions[labels] + 0.3 * torch.randn(1600, 64) + 3 * torch.randn(64)  # shared offset
    names = list("abcdefgh")
    anchors = sa.class_mean_anchors(acts, labels, names=names, center=False)
    centred = sa.class_mean_anchors(acts, labels, names=names, center=True)
    assert anchors.names == names and anchors.k == 8
    assert torch.allclose(centred.directions_in.norm(dim=1), torch.ones(8))
    cos_centred = (centred.directions_in * directions).sum(1)
    cos_raw = (anchors.directions_in * directions).sum(1)
    assert (cos_centred > 0.8).all()
    assert cos_centred.mean() > cos_raw.mean()  # centring removes the shared offset


def test_probe_anchors_are_normalised_probe_weights():
    w = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    anchors = sa.probe_anchors(w, names=["x", "y"])
    assert torch.allclose(anchors.directions_in, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


@pytest.mark.parametrize(
    "acts, labels, message",
    [
        (torch.randn(4, 3), [0, 0, 2, 2], "classes \\[1\\] have no examples"),
        (torch.randn(4, 3), [0, 1], "labels must have shape \\[4\\]"),
        (torch.randn(4), [0, 1, 0, 1], "2-D tensor"),
        (torch.full((4, 3), float("nan")), [0, 1, 0, 1], "NaN"),
        (torch.ones(6, 3), [0, 1, 2, 0, 1, 2], "zero mean after centring"),  # 3 classes: centred
    ],
)
def test_class_mean_bad_inputs(acts, labels, message):
    with pytest.raises(ValueError, match=message):
        sa.class_mean_anchors(acts, labels)


def _self_anchor_by_autograd(w_enc, directions, start, mask):
    """The self-anchoring formula written plainly, for autograd to differentiate."""
    cos = torch.nn.functional.cosine_similarity(w_enc[:, start:].T, directions[start:], dim=1)
    gaps = 1.0 - cos
    return gaps.sum() if mask is None else (gaps * mask[start:].to(gaps.dtype)).sum()


@pytest.mark.parametrize("block", [3, 256])  # blocks that split the latents unevenly, and one block for all
@pytest.mark.parametrize("masked", [False, True])
def test_self_anchor_loss_and_gradient_match_autograd_of_the_formula(monkeypatch, block, masked):
    monkeypatch.setattr(anchoring_loss, "SELF_ANCHOR_BLOCK", block)
    torch.manual_seed(0)
    w_enc = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    directions = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(11) > 0.4 if masked else None
    reference = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        reference.copy_(w_enc)
    tie = anchoring_loss.self_anchor_loss(w_enc, directions, start=2, mask=mask)
    expected = _self_anchor_by_autograd(reference, directions.detach(), 2, mask)
    (0.3 * tie).backward()
    (0.3 * expected).backward()
    assert tie.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(w_enc.grad, reference.grad, rtol=1e-10, atol=1e-12)
    assert (w_enc.grad[:, :2] == 0).all()  # anchored latents are not self-anchored
    if masked:
        assert (w_enc.grad[:, ~mask] == 0).all()
    assert directions.grad is None  # the targets are held fixed


def test_self_anchor_loss_is_zero_on_aligned_columns_and_counts_opposite_ones_twice():
    directions = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    w_enc = torch.tensor([[5.0, 0.0, -1.0], [0.0, 0.5, -1.0]])  # columns: along, along, opposite
    assert anchoring_loss.self_anchor_loss(w_enc, directions).item() == pytest.approx(2.0)
    assert anchoring_loss.self_anchor_loss(w_enc, directions, start=2).item() == pytest.approx(2.0)
    assert anchoring_loss.self_anchor_loss(w_enc, directions, start=3).item() == 0.0
