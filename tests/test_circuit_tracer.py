"""circuit-tracer loads an exported transcoder set, matches our spliced logits and traces a graph.

circuit-tracer pins transformers<=4.57.3, so it runs in its own virtual environment, which CI builds
(``.ci/run``) and names in ``SDL_ANCHOR_CIRCUIT_TRACER_PYTHON``; the format itself is tested without it in
``tests/test_transcoder_set.py``.
"""

import os

import pytest

from sdl_anchor.eval.circuit_tracer_check import check

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
