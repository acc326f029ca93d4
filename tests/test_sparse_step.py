"""The sparse-backward TopK-family step equals SAELens's dense step: loss terms, gradients, threshold updates."""

import pytest
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sdl_anchor as sa
from sdl_anchor.integrations.sparse_step import dense_step_reason
from sdl_anchor.sparse_topk import (
    SparseEntries,
    batch_topk_entries,
    dense_pre_activations,
    largest_indices,
    sampled_pre_activations,
    sparse_decode,
    topk_entries,
)

D_IN, D_SAE, BATCH = 16, 96, 48
EXTRA = {"matryoshka_batchtopk": {"matryoshka_widths": [24, 60, D_SAE]}}


def step_input(sae, x, dead=None):
    coefficients = {name: getattr(c, "value", c) for name, c in sae.get_coefficients().items()}
    return TrainStepInput(
        sae_in=x, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=True
    )


def run_step(sae, x, dead=None, target=None):
    sae.zero_grad(set_to_none=True)
    if target is not None:
        sae.set_training_target(target)
    output = sae.training_forward_pass(step_input(sae, x, dead))
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}
    return output, grads


def assert_same_step(ours, theirs, x, dead=None, target=None):
    out_a, grads_a = run_step(ours, x, dead, target)
    out_b, grads_b = run_step(theirs, x, dead, target)
    assert set(out_a.losses) == set(out_b.losses)
    for name in out_a.losses:
        torch.testing.assert_close(out_a.losses[name], out_b.losses[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_a.feature_acts.to_dense(), out_b.feature_acts.to_dense())
    torch.testing.assert_close(out_a.sae_out, out_b.sae_out)
    assert set(grads_a) == set(grads_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-9, atol=1e-12, msg=name)
    return out_a, out_b


def twin(architecture, reference_architecture=None, **fields):
    """Our coder (sparse step) and a reference with the same weights (SAELens's class, or ours dense)."""
    sae_class, config_class = get_sae_training_class(architecture)
    ours = sae_class(config_class(d_in=D_IN, d_sae=D_SAE, dtype="float64", sparse_backward=True, **fields))
    if reference_architecture is None:
        reference = sae_class(
            config_class(d_in=D_IN, d_sae=D_SAE, dtype="float64", sparse_backward=False, **fields)
        )
    else:
        ref_class, ref_config = get_sae_training_class(reference_architecture)
        fields = {k: v for k, v in fields.items() if not k.startswith("anchor")}
        reference = ref_class(ref_config(d_in=D_IN, d_sae=D_SAE, dtype="float64", **fields))
    with torch.no_grad():
        ours.W_dec.mul_(torch.rand(D_SAE, 1, dtype=torch.float64) + 0.5)  # uneven decoder norms
        ours.b_enc.normal_(0, 0.05)
        ours.b_dec.normal_(0, 0.1)
    reference.load_state_dict(ours.state_dict(), strict=False)
    return ours, reference


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("with_dead", [False, True])
def test_sae_step_equals_saelens(activation, rescale, with_dead):
    torch.manual_seed(0)
    ours, saelens = twin(
        f"anchored_{activation}",
        activation,
        k=4,
        rescale_acts_by_decoder_norm=rescale,
        **EXTRA.get(activation, {}),
    )
    assert dense_step_reason(ours) is None
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    dead = torch.rand(D_SAE) < 0.6 if with_dead else None
    out_a, _ = assert_same_step(ours, saelens, x, dead)
    if with_dead:
        assert out_a.losses["auxiliary_reconstruction_loss"] > 0
    if activation != "topk":
        torch.testing.assert_close(ours.topk_threshold, saelens.topk_threshold)
        assert ours.topk_threshold > 0


def test_anchored_sparse_step_equals_anchored_dense_step(small_bench, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "anchors.safetensors"
    sa.AnchorSet(torch.randn(5, D_IN, dtype=torch.float64)).save(path)
    ours, dense = twin("anchored_topk", k=4, anchor_path=str(path))
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    out, _ = assert_same_step(ours, dense, x, torch.rand(D_SAE) < 0.5)
    assert out.losses["anchor_loss"] > 0


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_sparse_step_equals_dense_step(activation, skip):
    torch.manual_seed(0)
    ours, dense = twin(f"{activation}_transcoder", k=4, d_out=10, skip_connection=skip)
    if skip:
        with torch.no_grad():
            ours.W_skip.normal_(0, 0.1)
            dense.W_skip.copy_(ours.W_skip)
    x, target = torch.randn(BATCH, D_IN, dtype=torch.float64), torch.randn(BATCH, 10, dtype=torch.float64)
    out, _ = assert_same_step(ours, dense, x, torch.rand(D_SAE) < 0.5, target)
    assert out.sae_in.shape == (BATCH, 10)


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_crosscoder_sparse_step_equals_dense_step(activation):
    torch.manual_seed(0)
    ours, dense = twin(f"{activation}_crosscoder", k=4, n_sources=2)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    out, _ = assert_same_step(ours, dense, x, torch.rand(D_SAE) < 0.5)
    assert {"mse_source_0", "mse_source_1"} <= set(out.metrics)


def test_sparse_step_is_the_default_on_cpu_only_where_supported():
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=8, d_sae=32, k=2))
    assert sae.cfg.sparse_backward is None and dense_step_reason(sae) is None
    off = sa.AnchoredTopKTrainingSAE(
        sa.AnchoredTopKTrainingSAEConfig(d_in=8, d_sae=32, k=2, sparse_backward=False)
    )
    assert dense_step_reason(off) == "sparse_backward=False"
    normed = sa.AnchoredTopKTrainingSAE(
        sa.AnchoredTopKTrainingSAEConfig(d_in=8, d_sae=32, k=2, normalize_activations="layer_norm")
    )
    assert "layer_norm" in dense_step_reason(normed)
    sae.hook_sae_acts_post.add_hook(lambda tensor, hook: tensor)
    assert "hooks" in dense_step_reason(sae)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch is built without oneDNN")
def test_dense_pre_activations_run_onednn_when_chosen_and_agree_with_addmm(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(40, 64, dtype=torch.float64)
    W_enc = torch.randn(64, 300, dtype=torch.float64)
    b_enc = torch.randn(300, dtype=torch.float64)
    exact = torch.addmm(b_enc, x, W_enc)
    assert torch.equal(dense_pre_activations(x, W_enc, b_enc), exact)  # float64: torch.addmm itself
    calls = []
    onednn = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or onednn(*args))
    monkeypatch.setenv("SDL_ANCHOR_KERNELS", "onednn")
    x32, W32, b32 = x.float(), W_enc.float(), b_enc.float()
    for batch in (x32, x32[::2], x32[:1], x32.T.contiguous().T):  # strided and single-row batches too
        got = dense_pre_activations(batch, W32, b32)
        assert got.shape == (batch.shape[0], 300) and got.dtype == torch.float32
        torch.testing.assert_close(got, torch.addmm(b32, batch, W32), rtol=1e-5, atol=1e-4)
    assert len(calls) == 4
    assert torch.equal(dense_pre_activations(x32, W32, b32, kernel="addmm"), torch.addmm(b32, x32, W32))
    monkeypatch.setattr("sdl_anchor.kernel_choice.onednn_linear_available", lambda: False)
    assert torch.equal(dense_pre_activations(x32, W32, b32), torch.addmm(b32, x32, W32))  # the only candidate
    assert len(calls) == 4


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_float32_sparse_step_equals_saelens_within_float32_round_off(activation):
    torch.manual_seed(0)
    sae_class, config_class = get_sae_training_class(f"anchored_{activation}")
    ref_class, ref_config = get_sae_training_class(activation)
    ours = sae_class(config_class(d_in=D_IN, d_sae=D_SAE, k=4, sparse_backward=True))
    saelens = ref_class(ref_config(d_in=D_IN, d_sae=D_SAE, k=4))
    saelens.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(BATCH, D_IN)
    out_a, grads_a = run_step(ours, x)
    out_b, grads_b = run_step(saelens, x)
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out_a.feature_acts.to_dense(), out_b.feature_acts.to_dense(), rtol=1e-5, atol=1e-5
    )
    assert set(grads_a) == set(grads_b)
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_entries_and_decode_match_dense_algebra():
    torch.manual_seed(0)
    scores = torch.randn(6, 20, dtype=torch.float64)
    entries = topk_entries(scores, 3)
    assert entries.rows.tolist() == sorted(entries.rows.tolist())
    dense_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(3).indices, True)
    assert torch.equal(entries.scatter(torch.ones(18, dtype=torch.float64)).bool(), dense_mask)
    batch = batch_topk_entries(scores, 2.5)
    assert batch.rows.numel() == 15 and torch.all(batch.gather(scores.relu()) >= 0)
    values = torch.randn(18, dtype=torch.float64, requires_grad=True)
    W = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v, w: sparse_decode(v, w, entries), (values, W))
    torch.testing.assert_close(
        entries.product(values.detach(), W.detach()), entries.scatter(values.detach()) @ W.detach()
    )
    x, shift = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    W_enc, b_enc = torch.randn(4, 20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    tensors = [t.requires_grad_() for t in (x, shift, W_enc, b_enc)]

    def sampled(x, shift, W_enc, b_enc):  # every input's gradient, dL/dx included
        with torch.no_grad():
            values = entries.gather((x - shift) @ W_enc + b_enc)
        return sampled_pre_activations(values, x, shift, W_enc, b_enc, entries)

    torch.autograd.gradcheck(sampled, tensors)
    empty = SparseEntries(entries.rows[:0], entries.cols[:0], 6, 20)
    out = sparse_decode(values[:0], W, empty)
    assert out.shape == (6, 5) and torch.all(out == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_transposed_product_is_the_dense_transpose_product(dtype):
    torch.manual_seed(0)
    scores = torch.randn(7, 50, dtype=dtype)
    entries = batch_topk_entries(scores, 2.0)  # uneven columns, most of the 50 empty
    values, dense = torch.randn(14, dtype=dtype), torch.randn(7, 4, dtype=dtype)
    product = entries.transposed_product(values, dense)
    assert product.shape == (50, 4) and product.dtype == dtype and product.is_contiguous()
    empty_columns = torch.ones(50, dtype=torch.bool).index_fill_(0, entries.cols, False)
    assert empty_columns.sum() > 30 and torch.all(product[empty_columns] == 0)
    torch.testing.assert_close(product, entries.scatter(values).T @ dense)
    torch.testing.assert_close(entries.transposed_product(values, dense.T.contiguous().T), product)
    nothing = entries.select(torch.zeros(14, dtype=torch.bool))
    assert torch.equal(nothing.transposed_product(values[:0], dense), torch.zeros(50, 4, dtype=dtype))


@pytest.mark.parametrize("positives", [1.0, 0.001])
def test_largest_indices_are_topk_s_on_a_large_tensor(positives):
    torch.manual_seed(0)
    scores = torch.randn(512, 4000)
    scores[torch.rand_like(scores) > positives] = -1.0  # 0.001: fewer positives than kept, the rest ties at 0
    flat = scores.relu().flatten()
    n = 32 * 512
    expected = torch.topk(flat, n).indices
    found = largest_indices(flat, n)
    assert found.numel() == n and found.unique().numel() == n
    # the same values (the same entries where no ties are involved)
    assert torch.equal(flat[found].sort().values, flat[expected].sort().values)
    if positives == 1.0:
        assert torch.equal(found.sort().values, expected.sort().values)
    entries = batch_topk_entries(scores, 32)
    assert torch.equal(entries.gather(flat.view_as(scores)).sort().values, flat[expected].sort().values)
    flat[7] = float("nan")  # ranked first by torch.topk, and so here
    assert 7 in largest_indices(flat, n).tolist()


@pytest.mark.parametrize(
    "architecture, fields",
    [
        ("anchored_topk", {"rescale_acts_by_decoder_norm": True}),
        ("anchored_topk", {"apply_b_dec_to_input": True}),
        ("anchored_batchtopk", {}),
        ("anchored_matryoshka_batchtopk", EXTRA["matryoshka_batchtopk"]),
        ("topk_transcoder", {"d_out": 10, "skip_connection": True}),
        ("batchtopk_crosscoder", {"n_sources": 2}),
    ],
)
def test_the_resampler_s_sparse_pool_pass_equals_encode_and_decode(architecture, fields):
    from sdl_anchor.integrations.resampling_trainer import pool_statistics

    torch.manual_seed(0)
    ours, dense = twin(architecture, k=4, **fields)
    dense.cfg.sparse_backward = False  # the same weights through SAELens's encode and decode
    if "skip_connection" in fields:
        with torch.no_grad():
            ours.W_skip.normal_(0, 0.1)
            dense.W_skip.copy_(ours.W_skip)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    target = torch.randn(BATCH, fields.get("d_out", D_IN), dtype=torch.float64)
    pools = [pool_statistics(coder, x, target, chunk=20) for coder in (ours, dense)]
    torch.testing.assert_close(pools[0].loss, pools[1].loss)
    assert torch.equal(pools[0].fire_rows, pools[1].fire_rows)
    assert torch.equal(pools[0].fire_latents, pools[1].fire_latents)
    expected = []  # BatchTopK selects over each chunk of the pool
    for chunk in x.split(20):
        acts = dense.encode(chunk)
        expected.append(dense.transcode(chunk, acts) if hasattr(dense, "transcode") else dense.decode(acts))
    torch.testing.assert_close(pools[0].loss, (target - torch.cat(expected)).pow(2).sum(dim=-1))


CLT_LAYERS, CLT_D_OUT = 3, 10  # k_aux = d_out / 2 = 5 dead latents per layer


def clt_twin(activation, **fields):
    """A TopK-family CLT taking the sparse step and one taking the dense step, with the same weights."""
    sae_class, config_class = get_sae_training_class(f"{activation}_clt")
    shape = {"d_in": D_IN, "d_out": CLT_D_OUT, "d_sae": D_SAE, "n_layers": CLT_LAYERS, "k": 4}
    sparse, dense = (
        sae_class(config_class(**shape, dtype="float64", sparse_backward=flag, **fields))
        for flag in (True, False)
    )
    with torch.no_grad():
        for W_dec in sparse.W_dec:
            W_dec.mul_(torch.rand(D_SAE, 1, 1, dtype=torch.float64) + 0.5)  # uneven decoder norms
        sparse.b_enc.normal_(0, 0.05)
        sparse.b_dec.normal_(0, 0.1)
    dense.load_state_dict(sparse.state_dict())  # anchors (from anchor_path) are not in the state dict
    return sparse, dense


def clt_dead_mask():
    """Dead latents: most of layer 0's, 2 of layer 1's (fewer than k_aux), none of layer 2's."""
    dead = torch.zeros(CLT_LAYERS, D_SAE, dtype=torch.bool)
    dead[0] = torch.rand(D_SAE) < 0.6
    dead[1, [3, 50]] = True
    return dead.flatten()


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("anchored", [False, True])
def test_clt_sparse_step_equals_the_dense_clt_step(activation, rescale, anchored, tmp_path):
    from sdl_anchor.anchoring import CLTAnchors

    torch.manual_seed(0)
    fields = {"rescale_acts_by_decoder_norm": rescale}
    if anchored:
        path = tmp_path / "clt_anchors.safetensors"
        CLTAnchors(
            [sa.AnchorSet(torch.randn(3, D_IN, dtype=torch.float64),
                          torch.randn(3, (CLT_LAYERS - layer) * CLT_D_OUT, dtype=torch.float64))
             for layer in range(CLT_LAYERS)]
        ).save(path)  # fmt: skip
        fields |= {"anchor_path": str(path), "anchor_coefficient": 0.5}
    sparse, dense = clt_twin(activation, **fields)
    assert dense_step_reason(sparse) is None and dense_step_reason(dense) == "sparse_backward=False"
    x = torch.randn(BATCH, CLT_LAYERS * D_IN, dtype=torch.float64)
    target = torch.randn(BATCH, CLT_LAYERS * CLT_D_OUT, dtype=torch.float64)
    out, _ = assert_same_step(sparse, dense, x, clt_dead_mask(), target)
    assert out.feature_acts.is_sparse and out.feature_acts.shape == (BATCH, CLT_LAYERS * D_SAE)
    assert out.losses["auxiliary_reconstruction_loss"] > 0
    assert ("anchor_loss" in out.losses) == anchored and (not anchored or out.losses["anchor_loss"] > 0)
    assert {f"mse_layer_{layer}" for layer in range(CLT_LAYERS)} <= set(out.metrics)
    if activation == "batchtopk":
        torch.testing.assert_close(sparse.topk_threshold, dense.topk_threshold)
        assert torch.all(sparse.topk_threshold > 0)
        # a second step moves the thresholds (an EMA) the same way from where the first left them
        assert_same_step(sparse, dense, x.flip(0), None, target.flip(0))
        torch.testing.assert_close(sparse.topk_threshold, dense.topk_threshold)


def test_clt_sparse_step_is_the_default_on_cpu_in_float32_and_matches_the_dense_step():
    from sdl_anchor.integrations.cross_layer_transcoder import CLT_ARCHITECTURES

    torch.manual_seed(0)
    sae_class, config_class = CLT_ARCHITECTURES["batchtopk_clt"]
    shape = {"d_in": D_IN, "d_out": CLT_D_OUT, "d_sae": D_SAE, "n_layers": CLT_LAYERS, "k": 4}
    sparse = sae_class(config_class(**shape))
    assert sparse.cfg.sparse_backward is None and dense_step_reason(sparse) is None
    dense = sae_class(config_class(**shape, sparse_backward=False))
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(BATCH, CLT_LAYERS * D_IN)
    target = torch.randn(BATCH, CLT_LAYERS * CLT_D_OUT)
    dead = clt_dead_mask()
    out_a, grads_a = run_step(sparse, x, dead, target)
    out_b, grads_b = run_step(dense, x, dead, target)
    assert out_a.feature_acts.is_sparse and not out_b.feature_acts.is_sparse
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=1e-5, atol=1e-6)
    assert set(grads_a) == set(grads_b)
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    sparse.hook_sae_acts_post.add_hook(lambda tensor, hook: tensor)
    assert "hooks" in dense_step_reason(sparse)
    with pytest.raises(ValueError, match="sparse_backward must be True, False or None"):
        config_class(**shape, sparse_backward="yes")
