"""Examples 3 and 4 run at their default (offline, CPU) size and print what the README shows; examples 1 and
2 are run by tests/test_language_model_training.py and tests/test_hooked_coders.py."""

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def run_example(name, out):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_resampling_on_the_lrb(tmp_path):
    printed = run_example("resampling_on_the_lrb.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"none", "anthropic", "theory"}
    assert results["theory"]["M_GT_live"] > 0.5 > results["none"]["M_GT_live"]
    assert len(results["theory"]["events"]) == 4 and results["none"]["events"] == []
    assert [p["step"] for p in results["theory"]["curve"]][:3] == [0.0, 50.0, 100.0]
    assert (tmp_path / "recovery_over_training.png").read_bytes()[:4] == b"\x89PNG"
    assert "live M_GT" in printed and "theory" in printed


def test_audit_saved_sae_absorption(tmp_path):
    printed = run_example("audit_saved_sae_absorption.py", tmp_path)
    report = json.loads((tmp_path / "absorption.json").read_text())
    for letter in "abcde":
        assert 0.2 < report["per_letter"][letter]["absorption_fraction"] < 0.8
    for letter in "fghij":
        assert report["per_letter"][letter]["absorption_fraction"] == 0.0
    assert "all planted as absorbed: True" in printed
    assert (tmp_path / "report.html").is_file() and (tmp_path / "sae" / "cfg.json").is_file()
