"""TopK / BatchTopK -> JumpReLU conversion (issue 36) and the export of cross-layer transcoders to
circuit-tracer's format, on planted cases with known answers; circuit-tracer's own check of the export is in
tests/test_circuit_tracer.py."""

import json

import pytest
import torch
import yaml
from sae_lens.saes.batchtopk_sae import BatchTopK

from sdl_anchor.cli import main
from sdl_anchor.integrations.circuit_tracer import (
    export_clt_circuit_tracer,
    is_clt_folder,
    load_exported_clt,
)
from sdl_anchor.integrations.clt_training import CLTBundle
from sdl_anchor.integrations.cross_layer_transcoder import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sdl_anchor.integrations.inference import TopKTranscoder, TopKTranscoderConfig
from sdl_anchor.integrations.jumprelu_conversion import (
    batchtopk_fired,
    convert_clt,
    convert_transcoder,
    fit_jumprelu_thresholds,
    topk_fired,
)


def disagreements(pre, fired, threshold):
    return int(((pre > threshold) != fired).sum())


def test_a_separable_latent_gets_the_midpoint_of_its_gap_and_no_disagreement():
    torch.manual_seed(0)
    off = torch.rand(200, 4)  # in [0, 1)
    on = 2 + torch.rand(50, 4)  # in [2, 3)
    pre = torch.cat([off, on])[torch.randperm(250)]
    fired = pre > 1.5
    thresholds = fit_jumprelu_thresholds(pre, fired, chunk=3)  # chunks of latents agree with one pass
    gap_low = torch.where(fired, -torch.inf, pre).amax(0)
    gap_high = torch.where(fired, pre, torch.inf).amin(0)
    torch.testing.assert_close(thresholds, (gap_low + gap_high) / 2)
    assert ((pre > thresholds) == fired).all()


def test_the_threshold_minimises_disagreements_exactly():
    """Against brute force over every candidate threshold (each value and each midpoint), on noisy decisions."""
    torch.manual_seed(1)
    pre = torch.randn(60, 8).round(decimals=1)  # ties between values
    fired = (pre + 0.4 * torch.randn(60, 8) > 0.5) & (pre > 0)
    thresholds = fit_jumprelu_thresholds(pre, fired)
    for j in range(8):
        values = torch.cat([pre[:, j].clamp_min(0).unique(), torch.tensor([0.0])]).sort().values
        candidates = torch.cat([values, (values[1:] + values[:-1]) / 2])

        def cost(t, j=j):  # disagreements, then |false - missed| firings (the rule's tie-break)
            on = pre[:, j] > t
            false, missed = int((on & ~fired[:, j]).sum()), int((~on & fired[:, j]).sum())
            return false + missed, abs(false - missed)

        assert cost(thresholds[j]) == min(cost(t) for t in candidates)
        assert thresholds[j] >= 0


def test_latents_that_never_or_always_fire():
    pre = torch.tensor([[0.5, 0.2, -1.0], [1.5, 0.4, -2.0], [3.0, 0.8, -0.5]])
    fired = torch.tensor([[False, True, False], [False, True, False], [False, True, False]])
    thresholds = fit_jumprelu_thresholds(pre, fired)
    assert thresholds[0] == 3.0  # never fired: the largest value seen, so it fires on none of them
    assert thresholds[1] == pytest.approx(0.1)  # always fired: half its smallest value (t >= 0)
    assert thresholds[2] == 0.0  # only negative pre-activations: t = 0, never negative


def test_ties_go_to_the_widest_gap():
    """Missing the firing at 4 or falsely firing at 1 cost one disagreement each, with balanced errors; the
    gap 3 -> 5 is wider than 1 -> 2, so t = 4."""
    pre = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    fired = torch.tensor([[False], [True], [False], [True]])
    assert fit_jumprelu_thresholds(pre, fired).item() == 4.0


def test_reference_decisions_are_saelens_activations():
    torch.manual_seed(2)
    pre = torch.randn(64, 16)
    assert (topk_fired(pre, 3) == ((pre >= pre.topk(3).values[:, -1:]) & (pre > 0))).all()
    expected = torch.cat([BatchTopK(2.0)(pre[i : i + 16]) > 0 for i in range(0, 64, 16)])
    assert (batchtopk_fired(pre, 2.0, 16) == expected).all()
    assert topk_fired(pre, 3).sum(-1).le(3).all()


def planted_clt(activation="topk", k=1, n_layers=2, d=4):
    """A CLT whose layer-l latents read +x_0 and -x_0: TopK(1) keeps latent 0 exactly when x_0 > 0 and latent 1
    when x_0 < 0, which a JumpReLU with threshold 0 reproduces (known answer: zero disagreement)."""
    config = CrossLayerTranscoderConfig(
        d_in=d,
        d_sae=2,
        d_out=d,
        n_layers=n_layers,
        activation=activation,
        k=k if activation == "topk" else None,
    )
    coder = CrossLayerTranscoder(config)
    torch.manual_seed(3)
    with torch.no_grad():
        coder.W_enc.zero_()
        coder.W_enc[:, 0, 0], coder.W_enc[:, 0, 1] = 1.0, -1.0
        for w in coder.W_dec:
            w.copy_(torch.randn_like(w))
        coder.b_dec.copy_(torch.randn_like(coder.b_dec))
    return coder


def planted_inputs(n, *shape):
    """Inputs whose first coordinate is at least 1 away from 0 (either sign): the planted latents' gap."""
    x = torch.randn(n, *shape)
    x[..., 0] = torch.where(torch.rand(x[..., 0].shape) < 0.5, -1.0, 1.0) * (1 + torch.rand(x[..., 0].shape))
    return x


def test_a_planted_topk_clt_converts_without_error():
    coder = planted_clt()
    x = planted_inputs(400, 2, 4)
    converted, report = convert_clt(coder, x, x_out=torch.randn(400, 2, 4))
    assert converted.cfg.activation == "jumprelu" and converted.cfg.k is None
    assert report["disagreement"] == 0 and report["relative_reconstruction_error"] == 0
    assert report["l0_before"] == report["l0_after"] == 1.0 and report["fvu_before"] == report["fvu_after"]
    assert report["fit_tokens"] == 200 and report["evaluation_tokens"] == 200
    fresh = planted_inputs(100, 2, 4)
    torch.testing.assert_close(converted.encode_layers(fresh), coder.encode_layers(fresh))
    assert (converted.threshold >= 0.5).all() and (converted.threshold < 1).all()  # the gap (0, 1)'s midpoint


def test_a_topk_clt_with_overlapping_latents_reports_its_error():
    torch.manual_seed(4)
    config = CrossLayerTranscoderConfig(d_in=8, d_sae=32, d_out=8, n_layers=2, activation="topk", k=4)
    coder = CrossLayerTranscoder(config)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    _, report = convert_clt(coder, torch.randn(2000, 2, 8))
    assert 0 < report["disagreement"] < 0.1, report
    assert report["disagreement"] == pytest.approx(report["false_firings"] + report["missed_firings"])
    assert report["l0_before"] == 4.0 and abs(report["l0_after"] - 4.0) < 1.0
    assert 0 < report["relative_reconstruction_error"] < 0.5 and len(report["per_layer"]) == 2


def test_a_batchtopk_trained_clt_is_converted_against_batchtopk_and_compared_with_its_saved_thresholds():
    coder = planted_clt(activation="jumprelu")
    with torch.no_grad():
        coder.threshold.fill_(5.0)  # a poor saved threshold: almost nothing fires
    coder.cfg.metadata.training_architecture = "batchtopk_clt"
    with pytest.raises(ValueError, match="records no k"):
        convert_clt(coder, torch.randn(200, 2, 4), batch_size=16)
    coder.cfg.metadata.training_architecture_details = {"k": 1.0}
    with pytest.raises(ValueError, match="give batch_size"):
        convert_clt(coder, torch.randn(200, 2, 4))
    coder.cfg.metadata.train_batch_size_tokens = 32
    _, report = convert_clt(coder, planted_inputs(2000, 2, 4))
    assert report["reference"] == "batchtopk" and report["batch_size"] == 32
    assert report["disagreement"] < 0.02
    assert report["saved_thresholds"]["disagreement"] > 0.3 and report["saved_thresholds"]["l0_after"] < 0.1


def test_a_planted_topk_transcoder_converts_to_saelens_jumprelu_transcoder():
    from sae_lens.saes.transcoder import JumpReLUTranscoder

    transcoder = TopKTranscoder(
        TopKTranscoderConfig(d_in=4, d_out=6, d_sae=2, k=1, apply_b_dec_to_input=False)
    )
    with torch.no_grad():
        transcoder.W_enc.zero_()
        transcoder.W_enc[0, 0], transcoder.W_enc[0, 1] = 1.0, -1.0
        transcoder.W_dec.copy_(torch.randn_like(transcoder.W_dec))
    x = planted_inputs(300, 4)
    converted, report = convert_transcoder(transcoder, x, x_out=torch.randn(300, 6))
    assert isinstance(converted, JumpReLUTranscoder) and report["disagreement"] == 0
    assert report["relative_reconstruction_error"] == 0 and report["l0_before"] == 1.0
    fresh = planted_inputs(50, 4)
    torch.testing.assert_close(converted(fresh), transcoder(fresh))


@pytest.mark.parametrize(
    "call, problem",
    [
        (
            lambda: fit_jumprelu_thresholds(torch.tensor([[float("nan")]]), torch.ones(1, 1, dtype=bool)),
            "NaN",
        ),
        (lambda: fit_jumprelu_thresholds(torch.ones(3), torch.ones(3, dtype=bool)), r"\[n_tokens, d_sae\]"),
        (lambda: fit_jumprelu_thresholds(torch.ones(3, 2), torch.ones(3, 1, dtype=bool)), "shape"),
        (lambda: fit_jumprelu_thresholds(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2)), "floating"),
        (lambda: batchtopk_fired(torch.ones(3, 2), 1.0, 0), "batch_size"),
        (lambda: convert_clt(planted_clt(), torch.randn(100, 3, 4)), r"\[n_tokens, 2, 4\]"),
        (lambda: convert_clt(planted_clt(), torch.randn(100, 2, 4), torch.randn(99, 2, 4)), "targets"),
        (lambda: convert_clt(planted_clt(), torch.randn(100, 2, 4), fit_fraction=1.0), "fit_fraction"),
        (lambda: convert_clt(planted_clt(), torch.randn(1, 2, 4)), "more held-out tokens"),
        (lambda: convert_clt(planted_clt("relu"), torch.randn(100, 2, 4)), "loads as it is"),
        (lambda: convert_clt(object(), torch.randn(100, 2, 4)), "CrossLayerTranscoder"),
        (lambda: convert_transcoder(planted_clt(), torch.randn(100, 4)), "SAELens Transcoder"),
    ],
)
def test_bad_input_is_a_message(call, problem):
    with pytest.raises(ValueError, match=problem):
        call()


def saved_clt(folder, coder, layers=(0, 1), model_n_layers=None):
    if model_n_layers is not None:
        coder.cfg.metadata.model_n_layers = model_n_layers
    coder.cfg.metadata.model_name = "gpt2"
    return CLTBundle(coder, list(layers)).save(folder)


def test_a_jumprelu_clt_exports_in_circuit_tracers_layout_and_reads_back(tmp_path, capsys):
    coder = planted_clt("jumprelu")
    with torch.no_grad():
        coder.threshold.copy_(torch.tensor([[0.5, -0.2], [0.1, 0.3]]))
    folder = saved_clt(tmp_path / "clt", coder)
    assert is_clt_folder(folder) and not is_clt_folder(tmp_path)
    assert main(["export", "circuit-tracer", str(folder), "--out", str(tmp_path / "ct")]) == 0
    config = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert (
        config["model_kind"] == "cross_layer_transcoder"
        and config["feature_input_hook"] == "ln2.hook_normalized"
    )
    assert config["feature_output_hook"] == "hook_mlp_out" and config["activation_function"] == "jumprelu"
    names = sorted(p.name for p in (tmp_path / "ct").iterdir())
    assert names == ["W_dec_0.safetensors", "W_dec_1.safetensors", "W_enc_0.safetensors", "W_enc_1.safetensors",
                     "config.yaml"]  # fmt: skip
    back = load_exported_clt(tmp_path / "ct")
    x = torch.randn(20, 2, 4)
    coder.threshold.data.clamp_(min=0.0)  # circuit-tracer's JumpReLU has no ReLU: thresholds written >= 0
    torch.testing.assert_close(
        back.decode_layers(back.encode_layers(x)), coder.decode_layers(coder.encode_layers(x))
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kind"] == "cross_layer_transcoder"


def test_a_topk_clt_converts_on_export_and_is_refused_without_held_out_activations(tmp_path, capsys):
    folder = saved_clt(tmp_path / "clt", planted_clt())
    code = main(["export", "circuit-tracer", str(folder), "--out", str(tmp_path / "ct")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and "--held-out-dataset" in err
        and "Traceback" not in err
        and not (tmp_path / "ct").exists()
    )
    out, report = export_clt_circuit_tracer(
        folder, tmp_path / "ct", held_out=(planted_inputs(300, 2, 4), None)
    )
    assert report["disagreement"] == 0
    assert json.loads((out / "conversion.json").read_text())["reference"] == "topk"
    assert yaml.safe_load((out / "config.yaml").read_text())["converted_from"] == "topk"
    x = planted_inputs(30, 2, 4)
    torch.testing.assert_close(load_exported_clt(out).encode_layers(x), planted_clt().encode_layers(x))


def test_a_clt_not_covering_every_model_layer_is_refused(tmp_path, capsys):
    partial_model = saved_clt(tmp_path / "clt", planted_clt("relu"), layers=(0, 1), model_n_layers=3)
    code = main(["export", "circuit-tracer", str(partial_model), "--out", str(tmp_path / "ct")])
    err = capsys.readouterr().err
    assert code == 2 and "every layer 0..2" in err and "lacks [2]" in err and "--layers all" in err
    shifted = saved_clt(tmp_path / "clt1", planted_clt("relu"), layers=(1, 2))
    with pytest.raises(ValueError, match=r"covers layers \[1, 2\] and lacks \[0\]"):
        export_clt_circuit_tracer(shifted, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
    code = main(
        ["export", "circuit-tracer", str(partial_model), "--out", str(tmp_path / "ct"), "--model", "gpt2"]
    )
    assert code == 2 and "exports as it is; drop --model" in capsys.readouterr().err
    topk = saved_clt(tmp_path / "clt2", planted_clt())
    code = main(["export", "circuit-tracer", str(topk), "--out", str(tmp_path / "ct"), "--model", "gpt2"])
    assert code == 2 and "together" in capsys.readouterr().err


def planted_topk_transcoder():
    transcoder = TopKTranscoder(
        TopKTranscoderConfig(d_in=4, d_out=4, d_sae=2, k=1, apply_b_dec_to_input=False)
    )
    with torch.no_grad():
        transcoder.W_enc.zero_()
        transcoder.W_enc[0, 0], transcoder.W_enc[0, 1] = 1.0, -1.0
        transcoder.W_dec.copy_(torch.randn_like(transcoder.W_dec))
    return transcoder


def test_a_topk_transcoder_set_converts_to_jumprelu_on_export(tmp_path):
    """With held-out activations the set exports as JumpReLU transcoders, which circuit-tracer 0.5.0 loads
    (without them it keeps 'activation: topk' and 'k' for circuit-tracer's main branch)."""
    from sdl_anchor.integrations.circuit_tracer import export_circuit_tracer
    from sdl_anchor.integrations.transcoder_set import TranscoderSet
    from sdl_anchor.io import read_safetensors

    folder = TranscoderSet({0: planted_topk_transcoder(), 1: planted_topk_transcoder()}).save(
        tmp_path / "set"
    )
    with pytest.warns(UserWarning, match="loads only ReLU and JumpReLU"):
        plain = export_circuit_tracer(folder, tmp_path / "plain")
    assert yaml.safe_load((plain / "config.yaml").read_text())["activation"] == "topk"
    out = export_circuit_tracer(folder, tmp_path / "ct", held_out=(planted_inputs(300, 2, 4), None))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["activation_function"] == "jumprelu" and "activation" not in config and "k" not in config
    reports = json.loads((out / "conversion.json").read_text())["layers"]
    assert set(reports) == {"0", "1"} and all(r["disagreement"] == 0 for r in reports.values())
    threshold = read_safetensors(out / "layer_0.safetensors", "layer")["activation_function.threshold"]
    assert threshold.shape == (2,) and (threshold >= 0.5).all()
    with pytest.raises(ValueError, match=r"\[n_tokens, 2 layers, d_in\]"):
        export_circuit_tracer(folder, tmp_path / "bad", held_out=(torch.randn(300, 4), None))
