import pytest
import torch

import sdl_anchor as sa


def test_round_trip_with_names_and_indices(tmp_path):
    anchors = sa.AnchorSet(torch.randn(4, 8), torch.randn(4, 6), indices=[3, 1, 7, 9], names=list("abcd"))
    anchors.save(tmp_path / "anchors.safetensors")
    loaded = sa.AnchorSet.load(tmp_path / "anchors.safetensors")
    assert torch.equal(loaded.directions_in, anchors.directions_in)
    assert torch.equal(loaded.directions_out, anchors.directions_out)
    assert loaded.indices.tolist() == [3, 1, 7, 9]
    assert loaded.names == list("abcd")
    assert (loaded.k, loaded.d_in, loaded.d_out) == (4, 8, 6)


def test_output_directions_default_to_input(tmp_path):
    anchors = sa.AnchorSet(torch.randn(3, 5))
    assert torch.equal(anchors.directions_out, anchors.directions_in)
    assert anchors.indices is None and anchors.names is None
    anchors.save(tmp_path / "a.safetensors")  # the shared tensor still saves
    assert torch.equal(sa.AnchorSet.load(tmp_path / "a.safetensors").directions_out, anchors.directions_in)


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(0, 5),), "k = 0"),
        ((torch.randn(5),), "shape \\[k, d\\]"),
        ((torch.tensor([[1.0, float("nan")]]),), "NaN"),
        ((torch.tensor([[0.0, 0.0], [1.0, 0.0]]),), "zero-norm anchors at rows \\[0\\]"),
        ((torch.randn(3, 5), torch.randn(2, 5)), "one output direction per input direction"),
        (([[1.0, 0.0]],), "must be a torch.Tensor"),
    ],
)
def test_bad_anchors(args, message):
    with pytest.raises(ValueError, match=message):
        sa.AnchorSet(*args)


def test_any_finite_scale_gives_the_same_unit_directions():
    """Rows are scaled by their largest entry before the norm: 1e19 once overflowed float32's norm into zero
    rows, and 1e-9 was refused as zero-norm."""
    base = torch.randn(3, 8)
    unit = torch.nn.functional.normalize(base, dim=1)
    for scale in (1e19, 1e-9, 50.0):
        anchors = sa.AnchorSet(base * scale, base * scale)
        assert torch.allclose(anchors.directions_in, unit, atol=1e-6)
        assert torch.allclose(anchors.directions_out, unit, atol=1e-6)
    assert torch.allclose(sa.AnchorSet(base.double() * 1e-50).directions_in, unit, atol=1e-6)


def test_bad_indices_and_names():
    with pytest.raises(ValueError, match="indices must hold 2"):
        sa.AnchorSet(torch.randn(2, 3), indices=[1])
    for indices, message in (
        ([4, 4, 2], "repeats feature\\(s\\) \\[4\\]; each anchor needs its own feature"),
        ([-5, 2, 3], "negative feature index \\(-5\\)"),
        ([1.7, 2.0, 3.0], "whole-number feature indices"),
        (torch.tensor([True, False, True]), "boolean mask"),
    ):  # each once read silently as other features: 1.7 -> 1, a mask -> features 1, 0, 1
        with pytest.raises(ValueError, match=message):
            sa.AnchorSet(torch.randn(3, 3), indices=indices)
    assert sa.AnchorSet(torch.randn(2, 3), indices=torch.tensor([5.0, 2.0])).indices.tolist() == [5, 2]
    with pytest.raises(ValueError, match="names must hold 2"):
        sa.AnchorSet(torch.randn(2, 3), names=["a"])


def test_load_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="anchor file"):
        sa.AnchorSet.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"weights": torch.randn(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no 'directions_in' tensor"):
        sa.AnchorSet.load(tmp_path / "other.safetensors")
    for names, message in (
        ("not json", "unreadable 'names' metadata"),
        ("3", "'names' metadata that is not a list"),
    ):
        save_file({"directions_in": torch.randn(2, 2)}, str(tmp_path / "named.safetensors"), {"names": names})
        with pytest.raises(ValueError, match=f"anchor file .*named.safetensors has {message}"):
            sa.AnchorSet.load(tmp_path / "named.safetensors")
