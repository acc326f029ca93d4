"""circuit-tracer loads an exported transcoder set or cross-layer transcoder, matches our spliced logits and
traces a graph.

circuit-tracer pins transformers<=4.57.3, so it runs in its own virtual environment, which CI builds
(``.ci/run``) and names in ``SDL_ANCHOR_CIRCUIT_TRACER_PYTHON``; the format itself is tested without it in
``tests/test_transcoder_set.py``. What the export refuses (sets of SAEs or crosscoders, corrupt or malformed
manifests) is tested here without it.
"""

import json
import os

import pytest
import torch
from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig, TopKSAE, TopKSAEConfig

import sdl_anchor as sa
from sdl_anchor.cli import main
from sdl_anchor.eval.circuit_tracer_check import check
from sdl_anchor.integrations.circuit_tracer import export_circuit_tracer
from sdl_anchor.integrations.transcoder_set import TranscoderSet

PYTHON = os.environ.get("SDL_ANCHOR_CIRCUIT_TRACER_PYTHON")


@pytest.mark.skipif(
    not PYTHON,
    reason="needs circuit-tracer's own environment: set SDL_ANCHOR_CIRCUIT_TRACER_PYTHON (CI builds it)",
)
def test_circuit_tracer_loads_the_exported_set_and_traces_a_graph(tmp_path):
    record = check(PYTHON, tmp_path)
    assert record["passed"], record
    assert record["max_abs_logit_difference"] <= 1e-3 * max(1.0, record["max_abs_logit"])
    assert record["active_features"] > 0 and record["logit_targets"] >= 1


@pytest.mark.skipif(
    not PYTHON,
    reason="needs circuit-tracer's own environment: set SDL_ANCHOR_CIRCUIT_TRACER_PYTHON (CI builds it)",
)
def test_circuit_tracer_loads_an_exported_batchtopk_clt_and_traces_a_graph(tmp_path):
    """Issue 36: sdl-anchor train --architecture batchtopk_clt --layers all, export with per-latent JumpReLU
    thresholds fitted on held-out text, circuit-tracer's CLT reproduces our spliced logits and attributes."""
    record = check(PYTHON, tmp_path, kind="clt")
    assert record["passed"], record
    assert record["transcoders"] == "CrossLayerTranscoder" and record["active_features"] > 0
    assert record["max_abs_logit_difference"] <= 1e-3 * max(1.0, record["max_abs_logit"])
    conversion = record["conversion"]
    assert conversion["reference"] == "batchtopk" and conversion["evaluation_tokens"] == 1024
    assert conversion["disagreement"] < 0.05 and conversion["relative_reconstruction_error"] < 0.1
    assert abs(conversion["l0_after"] - conversion["l0_before"]) < 1


def jumprelu_transcoders(n_layers=2):
    config = JumpReLUTranscoderConfig(d_in=8, d_out=8, d_sae=16, apply_b_dec_to_input=False)
    return [JumpReLUTranscoder(config) for _ in range(n_layers)]


def saved_set(folder, coders):
    TranscoderSet(dict(enumerate(coders))).save(folder)
    return folder


def refused(capsys, set_dir, out):
    """The CLI's exit code and message for exporting ``set_dir``; nothing is written to ``out``."""
    code = main(["export", "circuit-tracer", str(set_dir), "--out", str(out)])
    assert not out.exists()
    return code, capsys.readouterr().err


def test_a_transcoder_set_exports_and_sets_of_saes_or_crosscoders_are_refused(tmp_path, capsys):
    """Issue 35: a set of plain SAEs or of crosscoders exported as if it were transcoders."""
    torch.manual_seed(0)
    transcoders = jumprelu_transcoders()
    assert main(["export", "circuit-tracer", str(saved_set(tmp_path / "tc", transcoders)),
                 "--out", str(tmp_path / "ct")]) == 0  # fmt: skip
    saes = saved_set(tmp_path / "saes", [TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=2)) for _ in range(2)])
    with pytest.raises(
        ValueError, match=r"needs a transcoder set .* holds layer 0: sae 'topk', layer 1: sae"
    ):
        export_circuit_tracer(saes, tmp_path / "out")
    code, err = refused(capsys, saes, tmp_path / "out")
    assert (
        code == 2 and "holds layer 0: sae 'topk'" in err and "_transcoder" in err and "Traceback" not in err
    )
    config = sa.TopKCrosscoderTrainingSAEConfig(d_in=8, n_sources=2, d_sae=16, k=2)
    crosscoders = saved_set(tmp_path / "xc", [sa.TopKCrosscoderTrainingSAE(config) for _ in range(2)])
    code, err = refused(capsys, crosscoders, tmp_path / "out")
    assert code == 2 and "holds layer 0: crosscoder" in err and "needs a transcoder set" in err


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ("{not json", "is not valid JSON"),
        ("[0, 1]", "must hold a JSON object"),
        (
            json.dumps({"layers": "all", "input_hook": "a", "output_hook": "b"}),
            "'layers' must be a non-empty",
        ),
        (json.dumps({"layers": [], "input_hook": "a", "output_hook": "b"}), "'layers' must be a non-empty"),
        (json.dumps({"layers": [0, True], "input_hook": "a", "output_hook": "b"}), "non-negative integers"),
        (json.dumps({"layers": [0, "1"], "input_hook": "a", "output_hook": "b"}), "non-negative integers"),
        (json.dumps({"layers": [0, 0], "input_hook": "a", "output_hook": "b"}), "names a layer twice"),
        (json.dumps({"layers": [0, 1], "output_hook": "b"}), "'input_hook' must be a hook name"),
        (json.dumps({"layers": [0, 1], "input_hook": "a", "output_hook": 3}), "'output_hook' must be a hook"),
        (json.dumps({"format": "other", "layers": [0, 1]}), "its format is 'other'"),
    ],
)
def test_a_corrupt_or_malformed_manifest_is_a_message_naming_the_file(tmp_path, capsys, manifest, problem):
    """Issue 35: a corrupt manifest.json gave a traceback (KeyError, TypeError)."""
    transcoders = jumprelu_transcoders()
    folder = saved_set(tmp_path / "tc", transcoders)
    (folder / "manifest.json").write_text(manifest)
    with pytest.raises(ValueError, match=problem):
        TranscoderSet.load(folder)
    code, err = refused(capsys, folder, tmp_path / "out")
    assert code == 2 and str(folder / "manifest.json") in err and problem in err and "Traceback" not in err
