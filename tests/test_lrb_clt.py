"""The LRB's ``clt`` kind: the generative model (each feature read at its home layer's input, written to its home
layer's output and to later layers only, along unit per-layer directions), per-layer anchors, save/load, and
recovery of a CLT measured in the layers' concatenated spaces (a planted CLT scores 100%, a shuffled one does
not); a short training run goes through train_on_bench with and without anchors and theory resampling."""

import pytest
import torch

import sdl_anchor as sa
from sdl_anchor.anchoring import CLTAnchors
from sdl_anchor.integrations.cross_layer_transcoder import CLT_ARCHITECTURES
from sdl_anchor.metrics import clt_flat_weights

L, N, D_IN, D_OUT = 3, 30, 16, 24


def make_bench(**extra):
    settings = {"kind": "clt", "n_features": N, "d_in": D_IN, "d_out": D_OUT, "n_layers": L, "sparsity": 0.8}
    settings.update(extra)
    return sa.LinearRepresentationBench(max_interference=0.3, seed=3, **settings)


def blocks(x, width):
    return x.unflatten(-1, (L, width))


def test_features_are_read_at_their_home_layer_and_write_there_and_later_only():
    bench = make_bench()
    homes = bench.config.home_layers
    assert homes.tolist() == [i * L // N for i in range(N)]
    f_in, f_out = blocks(bench.features_in, D_IN), blocks(bench.features_out, D_OUT)
    in_norms, out_norms = f_in.norm(dim=-1), f_out.norm(dim=-1)
    layers = torch.arange(L)
    assert torch.allclose(in_norms, (layers[None] == homes[:, None]).float(), atol=1e-5)
    writes = bench.writes
    assert (writes[torch.arange(N), homes]).all()  # every feature writes to its own layer
    assert not (writes & (layers[None] < homes[:, None])).any()  # never to an earlier one
    assert writes[homes == 0, 1:].any() and not writes[homes == 0, 1:].all()  # later layers: some, not all
    assert torch.allclose(out_norms[writes], torch.ones(int(writes.sum())), atol=1e-5)
    assert (out_norms[~writes] == 0).all()
    assert not make_bench(write_probability=0.0).writes[:, 1:].any(dim=1)[homes == 0].any()
    assert make_bench(write_probability=1.0).writes[homes == 0].all()


def test_samples_follow_the_cross_layer_generative_model():
    bench = make_bench()
    batch = bench.sample(64)
    codes = batch.codes
    assert batch.x_in.shape == (64, L * D_IN) and batch.x_out.shape == (64, L * D_OUT)
    f_in, f_out = blocks(bench.features_in, D_IN), blocks(bench.features_out, D_OUT)
    homes, writes = bench.config.home_layers, bench.writes
    for layer in range(L):
        living = homes == layer
        torch.testing.assert_close(blocks(batch.x_in, D_IN)[:, layer], codes[:, living] @ f_in[living, layer])
        writers = writes[:, layer]
        torch.testing.assert_close(
            blocks(batch.x_out, D_OUT)[:, layer],
            codes[:, writers] @ f_out[writers, layer],
            atol=1e-5,
            rtol=1e-5,
        )


def test_anchors_are_per_layer_ground_truth_and_the_bench_round_trips(tmp_path):
    bench = make_bench()
    anchors = bench.anchors(7, seed=1)
    assert isinstance(anchors, CLTAnchors) and anchors.ks == [3, 2, 2]
    homes = bench.config.home_layers
    for layer, a in enumerate(anchors.layers):
        assert (homes[a.indices] == layer).all()
        torch.testing.assert_close(
            a.directions_in, bench.features_in[a.indices, layer * D_IN : (layer + 1) * D_IN]
        )
        out = bench.features_out[a.indices, layer * D_OUT :]
        torch.testing.assert_close(a.directions_out, out / out.norm(dim=1, keepdim=True))
    anchors.check_fits(L, D_IN, D_OUT, 8)
    with pytest.raises(ValueError, match="choose k in"):
        bench.anchors(2)
    loaded = sa.LinearRepresentationBench.load(bench.save(tmp_path / "bench"))
    assert loaded.config == bench.config
    assert torch.equal(loaded.features_in, bench.features_in) and torch.equal(
        loaded.features_out, bench.features_out
    )
    with pytest.raises(ValueError, match="d_out=5 only applies"):
        sa.LinearRepresentationBench(kind="sae", n_features=10, d_in=16, d_out=5, max_interference=0.5)
    with pytest.raises(ValueError, match="write_probability"):
        make_bench(write_probability=1.5)
    with pytest.raises(ValueError, match="n_features=2 < n_layers=3"):
        make_bench(n_features=2)


def planted_clt(bench, d_sae):
    """A CLT whose first latents of each layer are that layer's features exactly."""
    sae_class, config_class = CLT_ARCHITECTURES["topk_clt"]
    clt = sae_class(config_class(d_in=D_IN, d_out=D_OUT, d_sae=d_sae, n_layers=L, k=2))
    homes = bench.config.home_layers
    with torch.no_grad():
        for layer in range(L):
            living = torch.nonzero(homes == layer).flatten()
            clt.W_enc[layer][:, : living.numel()] = bench.features_in[
                living, layer * D_IN : (layer + 1) * D_IN
            ].T
            clt.W_dec[layer][: living.numel()] = bench.features_out[living, layer * D_OUT :].unflatten(
                1, (-1, D_OUT)
            )
    return clt


def test_recovery_of_a_planted_clt_is_complete_and_of_a_misplaced_one_is_not():
    bench = make_bench()
    clt = planted_clt(bench, d_sae=12)
    w_enc, w_dec = clt_flat_weights(clt)
    assert w_enc.shape == (L * D_IN, L * 12) and w_dec.shape == (L * 12, L * D_OUT)
    assert (w_dec[12:24, :D_OUT] == 0).all()  # layer 1's latents write nothing to layer 0
    scores = sa.recovery(clt, bench)
    assert scores["M_GT"] == 1.0 and scores["M_GT_dec"] == 1.0 and scores["MCC"] > 0.99
    assert sa.live_recovery(clt, bench, n_samples=512)["n_live"] > 0
    with torch.no_grad():  # the same weights one layer off: no encoder column reads a feature's home layer
        clt.W_enc.copy_(clt.W_enc.roll(1, dims=0))
        for layer in range(L):
            clt.W_dec[layer].zero_()
            clt.W_dec[layer][:, 0] = torch.randn(12, D_OUT)
    scores = sa.recovery(clt, bench)
    assert scores["M_GT"] < 0.5 and scores["M_GT_dec"] == 0.0


@pytest.mark.parametrize("anchored,strategy", [(False, None), (True, "theory")])
def test_train_on_bench_trains_a_clt_with_anchors_and_theory_resampling(anchored, strategy):
    torch.manual_seed(0)
    bench = make_bench()
    anchors = bench.anchors(6, seed=0)
    sae_class, config_class = CLT_ARCHITECTURES["topk_clt"]
    clt = sae_class(config_class(d_in=D_IN, d_out=D_OUT, d_sae=32, n_layers=L, k=2))
    if anchored:
        clt.set_anchors(anchors)
    resampling = None if strategy is None else sa.ResamplingConfig(strategy=strategy, seed=0)
    sa.train_on_bench(clt, bench, n_steps=40, batch_size=64, dead_feature_window=5, show_progress=False,
                      resampling=resampling, exclude=anchors.indices)  # fmt: skip
    scores = sa.recovery(clt, bench, exclude=anchors.indices)
    assert 0.0 <= scores["M_GT"] <= 1.0 and scores["n_scored"] == N - 6
    if anchored:  # the anchored latents still point at their anchors
        assert float(clt.anchor_cosine()) > 0.9
    if strategy is not None:
        assert clt.cfg.metadata.resampling["strategy"] == "theory"
    with pytest.raises(ValueError, match="needs a cross-layer transcoder"):
        sa.train_on_bench(_sae(), bench, n_steps=1)


def _sae():
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=L * D_IN, d_sae=8, k=2))


def test_bench_lrb_runs_the_clt_row_in_every_column_and_scores_it_like_the_others():
    from dataclasses import replace

    from sdl_anchor.eval.lrb_presets import CLT_COLUMNS, PRESETS
    from sdl_anchor.eval.lrb_table import format_table, run_lrb_bench

    preset = replace(
        PRESETS["clt-cpu"], max_interference=0.3, n_features=24, d_in=16, d_sae=16, n_samples=2048, n_steps=30, batch_size=64,
        n_anchors=4, method_settings={"clt": {"k": 2, "n_layers": 2, "write_probability": 0.5}},
        resampling_settings={"every_n_steps": 10, "max_events": 1},
    )  # fmt: skip
    results = run_lrb_bench(preset, seeds=(0, 1), progress=False)
    rows = results["rows"]
    assert [(r["variant"], r["resampling"]) for r in rows if r["seed"] == 1] == list(CLT_COLUMNS)
    for row in rows:
        assert row["kind"] == "clt" and row["method"] == "clt" and row["k_all_layers"] == 4
        assert row["settings"]["architecture"] == "topk_clt" and row["n_scored"] == 20
        for key in ("M_GT", "M_IP", "M_GT_dec", "MCC", "fvu", "l0", "dead_fraction", "degenerate"):
            assert key in row
        assert row["l0"] <= 4.0 + 1e-6  # k per layer, over 2 layers
    assert rows[1]["anchored"] and not rows[0]["anchored"]
    assert {c["seeds"][0] for c in results["aggregate"]} == {1}  # the held-out seed only
    assert "CLT" in format_table(results)
    with pytest.raises(ValueError, match="a CLT runs the variants"):
        run_lrb_bench(preset, variants=("anchored",), resampling=("none",), progress=False)
