import json
import subprocess
import sys

import pytest

from sdl_anchor.cli import main
from sdl_anchor.eval.lrb_report import REPORTS

ROW_KEYS = {
    "method",
    "kind",
    "anchored",
    "resampling",
    "interference",
    "M_GT",
    "M_IP",
    "M_GT_dec",
    "M_IP_dec",
    "MCC",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lrb")
    code = main(
        [
            "bench",
            "lrb",
            "--preset",
            "small",
            "--steps",
            "15",
            "--methods",
            "topk,standard",
            "--variants",
            "plain,anchored",
            "--interference",
            "bounded,negative",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    return code, out


def test_bench_lrb_writes_results_json_and_plot(quick_run, capsys):
    code, out = quick_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["interference"], r["method"], r["variant"]) for r in results["rows"]] == [
        (mode, method, variant)
        for mode in ("bounded", "negative")
        for method in ("topk", "standard")
        for variant in ("plain", "anchored")
    ]
    for row in results["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["kind"] == "sae" and row["resampling"] == "none"
        assert row["anchored"] is (row["variant"] == "anchored")
        assert 0.0 <= row["M_GT"] <= 1.0 and 0.0 < row["M_IP"] <= 1.0
        assert row["n_scored"] == 128 - 13  # the anchors are not scored
    assert results["rows"][0]["paper_M_GT"] == pytest.approx(0.849)
    assert results["rows"][1]["paper_M_GT"] is None  # the paper's anchored number is its method's, 'anchors'
    assert results["rows"][1]["settings"]["anchor_coefficient"] == 0.1
    assert results["config"]["n_features"] == 128 and results["config"]["d_sae"] == 2048
    assert (out / "recovery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_lrb_has_transcoder_and_crosscoder_rows(tmp_path):
    argv = [
        "bench",
        "lrb",
        "--preset",
        "small",
        "--steps",
        "10",
        "--methods",
        "transcoder,crosscoder",
        "--variants",
        "plain,anchored",
    ]
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["kind"], r["anchored"]) for r in rows] == [
        ("transcoder", False),
        ("transcoder", True),
        ("crosscoder", False),
        ("crosscoder", True),
    ]
    assert [r["paper_M_GT"] for r in rows] == [pytest.approx(0.236), None, pytest.approx(0.564), None]
    assert rows[0]["settings"]["architecture"] == "topk_transcoder"
    assert rows[3]["settings"]["architecture"] == "topk_crosscoder" and rows[3]["n_scored"] == 128 - 13


def test_bench_lrb_resampling_rows(tmp_path, capsys):
    argv = ["bench", "lrb", "--preset", "small", "--steps", "40", "--methods", "topk", "--variants", "plain"]
    argv += ["--resampling", "none,theory", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["resampling"] for r in rows] == ["none", "theory"]
    assert "resampling" not in rows[0]["settings"]
    resampled = rows[1]["settings"]["resampling"]
    assert resampled["strategy"] == "theory" and len(resampled["events"]) >= 1
    for row in rows:
        assert 0 < row["n_live"] <= 2048 and row["M_GT_live"] <= row["M_GT"]
    table = capsys.readouterr().out
    assert "TopK k=2" in table and "theory" in table.splitlines()[1] and "live M_GT" in table


def test_existing_results_are_not_overwritten(quick_run, capsys):
    _, out = quick_run
    before = (out / "results.json").read_text()
    assert main(["bench", "lrb", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


def test_bench_lrb_resume_keeps_finished_rows_and_refuses_other_settings(tmp_path, capsys):
    argv = ["bench", "lrb", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--variants", "plain", "--resampling", "none"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert main([*argv, "--variants", "plain,anchored", "--resampling", "none", "--resume"]) == 0
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert [(r["variant"], r["resampling"]) for r in resumed["rows"]] == [
        ("plain", "none"),
        ("anchored", "none"),
    ]
    assert resumed["rows"][0] == first["rows"][0]  # kept, not retrained
    assert resumed["config"]["wall_seconds"] > first["config"]["wall_seconds"]
    assert "anchored" in capsys.readouterr().out
    assert main([*argv, "--resume", "--steps", "5"]) == 2
    assert "cannot resume: the results there were made with n_steps=30" in capsys.readouterr().err
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert json.loads((tmp_path / "results.json").read_text()) == resumed


def test_bench_lrb_writes_results_after_every_row(tmp_path, monkeypatch):
    from sdl_anchor.eval import lrb_table

    seen = []
    real = lrb_table._train_and_score

    def recording(*args):
        seen.append(len(json.loads((tmp_path / "results.json").read_text())["rows"]) if seen else 0)
        return real(*args)

    monkeypatch.setattr(lrb_table, "_train_and_score", recording)
    argv = ["bench", "lrb", "--preset", "smoke", "--variants", "plain,anchored", "--resampling", "none"]
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen == [0, 1]  # the first row was on disk before the second started


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "relu"], "unknown method 'relu'"),
        (["--interference", "sideways"], "unknown interference"),
        (["--steps", "0"], "--steps must be positive"),
        (["--variants", "frozen"], "unknown variant 'frozen'"),
        (["--resampling", "ghost"], "unknown resampling 'ghost'"),
        (
            ["--preset", "paper-cpu", "--k", "48"],
            "--k 48 is not a TopK k of preset 'paper-cpu'; choose from 32,64,128",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert main(["bench", "lrb", "--out", str(tmp_path / "o"), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "sdl_anchor", "bench", "lrb", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--preset" in result.stdout and "--out" in result.stdout


def test_the_smoke_preset_runs_the_whole_path_in_seconds(tmp_path, capsys):
    assert main(["bench", "lrb", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["variant"], r["resampling"]) for r in results["rows"]] == [
        ("plain", "none"), ("anchored", "none"), ("plain", "theory"), ("anchored", "theory"),
    ]  # fmt: skip
    assert results["rows"][1]["settings"]["self_anchor_coefficient"] == 0.1
    assert all(r["train_seconds"] > 0 for r in results["rows"])
    assert "Total wall time" in capsys.readouterr().out


def test_an_l0_target_reaches_every_column_and_the_table_and_is_refused_for_topk(tmp_path, capsys):
    """``--l0-target`` puts an L0 controller on every column of a ReLU row (the train_on_bench test checks
    that it steers); results.json and the table say the row was L0-matched; a TopK row is refused."""
    command = ["bench", "lrb", "--preset", "smoke", "--methods", "standard", "--resampling", "none"]
    assert main([*command, "--variants", "plain,anchored", "--l0-target", "6", "--out", str(tmp_path)]) == 0
    assert "every column's L0 matched to 6 by its sparsity coefficient" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["l0_target"] == 6.0
    assert [r["settings"]["l0_control"]["target"] for r in results["rows"]] == [6.0, 6.0]
    assert [r["settings"]["l0_control"]["coefficient"] for r in results["rows"]] == ["l1", "l1"]
    assert main(["bench", "lrb", "--preset", "smoke", "--l0-target", "6", "--out", str(tmp_path / "k")]) == 2
    assert "topk keeps k latents per input" in capsys.readouterr().err
    assert main([*command, "--l0-target", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "L0 target must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "k").exists() and not (tmp_path / "zero").exists()


def test_the_paper_cpu_preset_is_the_paper_s_configuration():
    from sdl_anchor.eval.lrb_presets import PRESETS, PROTOCOL_COLUMNS
    from sdl_anchor.resampling import ResamplingConfig

    preset = PRESETS["paper-cpu"]
    assert (preset.n_features, preset.d_in, preset.d_sae, preset.sparsity, preset.max_interference) == (
        1000, 768, 16_000, 0.99, 0.1,
    )  # fmt: skip
    assert (preset.n_samples, preset.n_anchors, preset.anchor_coefficient) == (100_000, 100, 0.1)
    assert preset.topk_ks == (32, 64, 128) and preset.ks_for("batchtopk") == (32,)
    assert set(preset.methods) == {"standard", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk",
                                   "transcoder", "crosscoder"}  # fmt: skip
    assert preset.default_columns() == PROTOCOL_COLUMNS  # the fair baselines beside ours
    # ReLU's and JumpReLU's self-anchoring starts late (half and 80% of their steps); the rest's at step 0
    anchored = {m: preset.anchor_settings("anchored", m) for m in preset.methods}
    assert {m: a["self_anchor_coefficient"] for m, a in anchored.items()} == {
        m: 0.01 if m in ("standard", "jumprelu") else 0.1 for m in preset.methods
    }
    assert {m: a.get("self_anchor_start_step", 0) for m, a in anchored.items()} == {
        m: {"standard": 125, "jumprelu": 200}.get(m, 0) for m in preset.methods
    }
    assert PRESETS["paper"].anchor_settings("anchored", "standard")["self_anchor_start_step"] == 2000
    # TopK k=128 trains twice as long as k=32 and 64; Matryoshka's innermost width holds every feature
    assert [preset.training_for("topk", k)["n_steps"] for k in preset.topk_ks] == [300, 300, 600]
    assert preset.training_for("matryoshka_batchtopk")["n_steps"] == 450
    # the lr decays over the half after the last resampling event where the curves fell after it, else the
    # last fifth (SAELens's default)
    assert [preset.training_for("topk", k)["lr_decay_fraction"] for k in preset.topk_ks] == [0.2, 0.2, 0.5]
    assert {m: preset.training_for(m)["lr_decay_fraction"] for m in preset.methods} == {
        m: 0.5 if m == "matryoshka_batchtopk" else 0.2 for m in preset.methods
    }
    # TopK k=128's theory rows resample eight times (every 66 steps, to step 528 of 600), merging duplicated
    # latents first; Matryoshka's six times (to step 336 of 450); the rest four times (to half their steps)
    assert preset.resampling_for("topk", 128) == {
        "intervals": 9,
        "max_events": 8,
        "stop_fraction": 0.1,
        "duplicate_cosine": 0.8,
    }
    assert ResamplingConfig(**preset.resampling_for("topk", 128)).schedule(600).event_steps[-1] == 528
    assert preset.resampling_for("matryoshka_batchtopk") == {"max_events": 7, "stop_fraction": 0.2}
    assert all(
        preset.resampling_for(m, k) == {}
        for m in preset.methods
        for k in preset.ks_for(m)
        if k != 128 and m != "matryoshka_batchtopk"
    )
    for paper in (preset, PRESETS["paper"]):  # the GPU preset has the same method settings
        assert paper.resampling_for("matryoshka_batchtopk") == preset.resampling_for("matryoshka_batchtopk")
        assert paper.resampling_for("topk", 128) == preset.resampling_for("topk", 128)
        assert paper.settings_for("jumprelu")["jumprelu_init_threshold"] == 0.05
        assert paper.anchor_settings("anchored", "jumprelu")["self_anchor_target"] == "inputs"
    assert preset.settings_for("matryoshka_batchtopk")["matryoshka_widths"][0] >= preset.n_features
    # the start is a fraction of the run: a shorter budget (bench lrb's n_steps override) moves it
    assert preset.with_steps(100).anchor_settings("anchored", "jumprelu")["self_anchor_start_step"] == 80


@pytest.mark.parametrize(
    "name", [*(report.name for report in REPORTS if report.kind == "lrb"), "clt-cpu-heldout"]
)
def test_a_committed_table_was_made_with_its_preset_as_it_is_and_has_every_row(name):
    """docs/assets/NAME/results.json (the README's tables): a resume from it with the preset as it is now and
    the rows it selected is accepted (same settings) and trains nothing (no row of the selection missing)."""
    from pathlib import Path

    from sdl_anchor.eval.lrb_table import _jobs, _row_key, resolve_preset, run_lrb_bench

    committed = json.loads((Path(__file__).parents[1] / f"docs/assets/{name}/results.json").read_text())
    rows = committed["rows"]
    preset = resolve_preset(committed["config"]["name"])
    methods = tuple(dict.fromkeys(r["method"] for r in rows))
    ks = tuple(dict.fromkeys(r["k"] for r in rows if r["method"] == "topk")) or None
    interference = tuple(dict.fromkeys(r["interference"] for r in rows))
    seeds = tuple(committed["config"]["seeds"])
    # every run of the selection is there (checked first: a resume would train what is missing)
    jobs = _jobs(preset, methods, ks, preset.default_columns(), interference, seeds)
    assert sorted(map(str, jobs)) == sorted(str(_row_key(r)) for r in rows)
    resumed = run_lrb_bench(
        preset,
        previous=committed,
        progress=False,
        methods=methods,
        ks=ks,
        interference=interference,
        seeds=seeds,
    )
    assert len(resumed["rows"]) == len(rows)
    assert resumed["config"]["wall_seconds"] == pytest.approx(committed["config"]["wall_seconds"], abs=5)


def test_a_method_s_self_anchoring_override_reaches_its_anchored_rows_only():
    from dataclasses import replace

    from sdl_anchor.eval.lrb_presets import PRESETS
    from sdl_anchor.eval.lrb_table import build_bench, build_sae

    smoke = PRESETS["smoke"]
    settings = {**smoke.method_settings, "standard": {"l1_coefficient": 1.0, "self_anchor_coefficient": 0.0}}
    preset = replace(smoke, method_settings=settings)
    bench = build_bench(preset, "sae", "bounded", 0, "cpu")
    assert build_sae("standard", preset, bench, "cpu", "anchored").cfg.self_anchor_coefficient == 0.0
    assert build_sae("topk", preset, bench, "cpu", "anchored").cfg.self_anchor_coefficient == 0.1
    plain = build_sae("standard", preset, bench, "cpu", "plain")  # a stock config: no anchoring field
    assert not hasattr(plain.cfg, "self_anchor_coefficient") and plain.cfg.l1_coefficient == 1.0


def test_a_topk_k_s_training_override_reaches_its_rows_only(monkeypatch):
    from dataclasses import replace

    import sdl_anchor.eval.lrb_table as lrb_table
    from sdl_anchor.eval.lrb_presets import PRESETS
    from sdl_anchor.eval.lrb_table import run_lrb_bench

    decay_steps = []  # what the trainer is asked for: SAELens decays the lr over the last lr_decay_steps
    train = lrb_table.train_on_bench

    def recording_train(*args, **kwargs):
        decay_steps.append(kwargs["lr_decay_steps"])
        return train(*args, **kwargs)

    monkeypatch.setattr(lrb_table, "train_on_bench", recording_train)
    overrides = {"n_steps": 10, "lr": 1e-3, "lr_decay_fraction": 0.5}
    preset = replace(PRESETS["smoke"], topk_ks=(2, 4), topk_training={4: overrides})
    rows = run_lrb_bench(preset, variants=("plain",), resampling=("none",), progress=False)["rows"]
    assert [(r["k"], r["settings"]["n_steps"], r["settings"]["lr"]) for r in rows] == [
        (2, 30, 3e-4),
        (4, 10, 1e-3),
    ]
    assert [r["settings"]["lr_decay_fraction"] for r in rows] == [0.2, 0.5] and decay_steps == [6, 5]
    assert [r["samples_seen"] for r in rows] == [30 * 128, 10 * 128]
    # bench lrb's --steps override replaces every step count, this one included
    shortened = run_lrb_bench(preset, variants=("plain",), resampling=("none",), n_steps=3, progress=False)
    assert [r["settings"]["n_steps"] for r in shortened["rows"]] == [3, 3]
    with pytest.raises(ValueError, match="not among topk_ks"):
        replace(preset, topk_training={8: {"n_steps": 5}})
    with pytest.raises(ValueError, match="may set"):
        replace(preset, topk_training={4: {"k": 5}})
    with pytest.raises(ValueError, match=r"topk_training\[4\]'s lr_decay_fraction must be a fraction"):
        replace(preset, topk_training={4: {"lr_decay_fraction": 1.5}})
    with pytest.raises(ValueError, match=r"topk_training\[4\]'s resampling_settings: max_events must be"):
        replace(preset, topk_training={4: {"resampling_settings": {"max_events": 0}}})
    # a k's resampling schedule reaches its theory rows only (the preset's: one event, at step 10)
    resampled = replace(
        preset, topk_training={4: {**overrides, "resampling_settings": {"every_n_steps": 2, "max_events": 2}}}
    )
    rows = run_lrb_bench(resampled, variants=("plain",), resampling=("theory",), progress=False)["rows"]
    assert [[e["resample/step"] for e in r["settings"]["resampling"]["events"]] for r in rows] == [
        [10],
        [2, 4],
    ]


def test_a_method_s_resampling_schedule_reaches_its_theory_rows_and_is_checked():
    from dataclasses import replace

    from sdl_anchor import LinearRepresentationBench
    from sdl_anchor.eval.lrb_presets import PRESETS
    from sdl_anchor.eval.lrb_table import build_sae, run_lrb_bench

    preset = PRESETS["smoke"]
    settings = {
        **preset.method_settings["topk"],
        "resampling_settings": {"every_n_steps": 4, "max_events": 3},
    }
    scheduled = replace(preset, method_settings={**preset.method_settings, "topk": settings})
    assert scheduled.resampling_for("topk") == {"every_n_steps": 4, "max_events": 3}
    assert scheduled.resampling_for("standard") == preset.resampling_settings  # the other methods keep it
    assert "resampling_settings" not in scheduled.settings_for("topk")  # not a SAELens config field
    rows = run_lrb_bench(scheduled, variants=("plain",), resampling=("theory",), progress=False)["rows"]
    assert [e["resample/step"] for e in rows[0]["settings"]["resampling"]["events"]] == [4, 8, 12]
    bench = LinearRepresentationBench(n_features=48, d_in=32, max_interference=0.3, seed=0)
    assert build_sae("topk", scheduled, bench, "cpu").cfg.k == 4
    with pytest.raises(
        ValueError, match=r"method_settings\['topk'\]'s resampling_settings: max_events must be"
    ):
        replace(preset, method_settings={"topk": {"k": 4, "resampling_settings": {"max_events": 0}}})


def test_the_self_anchor_sweep_trains_plain_anchors_only_and_each_coefficient(capsys):
    from sdl_anchor.eval.self_anchor_sweep import format_rows, self_anchor_sweep

    rows = self_anchor_sweep(
        "standard", "smoke", d_sae=None, n_steps=5, coefficients=(0.1,), targets=("decoder",)
    )
    assert [(r["variant"], r["self_anchor_coefficient"]) for r in rows] == [
        ("plain", 0.0), ("anchored", 0.0), ("anchored", 0.1),
    ]  # fmt: skip
    assert rows[1]["M_IP"] != rows[2]["M_IP"]  # the coefficient reached the training
    assert all(0.0 <= r["fvu"] and r["l0"] > 0 for r in rows)
    assert "self-anchor" in format_rows(rows)


def test_a_k_that_is_not_a_number_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "lrb", "--k", "x", "--no-progress"])
    assert exit_info.value.code == 2 and "expected comma-separated integers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "absorption", "--sae-path", "x", "--model", "gpt2", "--out", "o", "--model-kwargs", "{fold"],
        ["anchors", "class-means", "--model", "gpt2", "--hook", "h", "--prompts", "p.json", "--out", "o",
         "--model-kwargs", "[1, 2]"],
    ],
)  # fmt: skip
def test_model_kwargs_that_are_not_a_json_object_exit_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "expected a JSON object" in capsys.readouterr().err


def test_an_sae_s_recorded_model_kwargs_are_what_the_audit_loads_with():
    from sae_lens import TopKSAE, TopKSAEConfig

    from sdl_anchor.integrations.loading import TRAINING_MODEL_KWARGS, model_kwargs_of

    sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=2))
    assert model_kwargs_of(sae) == TRAINING_MODEL_KWARGS  # records none: training's default
    sae.cfg.metadata.model_from_pretrained_kwargs = {"fold_ln": False, "n_devices": 1}
    assert model_kwargs_of(sae) == {"fold_ln": False, "n_devices": 1}


def test_class_means_of_two_classes_are_raw_by_default_and_centring_them_exits_2(
    tmp_path, capsys, monkeypatch
):
    """Issue 35: ``anchors class-means`` with two classes wrote two antipodal anchors by default."""
    import sdl_anchor.integrations.loading as loading
    from sdl_anchor import AnchorSet
    from sdl_anchor.testing.toy_lm import toy_language_model

    prompts = {"animal": ["the cat", "a dog"], "colour": ["a red", "the blue"]}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    argv = ["anchors", "class-means", "--model", "no-such-model", "--hook", "blocks.0.hook_resid_post",
            "--prompts", str(tmp_path / "p.json")]  # fmt: skip
    assert main([*argv, "--centred", "--out", str(tmp_path / "c")]) == 2  # before any model loads
    err = capsys.readouterr().err
    assert "antipodal" in err and "drop --centred" in err and not (tmp_path / "c").exists()
    model = toy_language_model([" ".join(p for ps in prompts.values() for p in ps)], d_model=16, n_layers=1)
    monkeypatch.setattr(loading, "load_model", lambda *args: model)
    assert main([*argv, "--out", str(tmp_path / "raw")]) == 0
    assert "2 classes: raw class means" in capsys.readouterr().out
    assert json.loads((tmp_path / "raw" / "anchors.json").read_text())["centred"] is False
    anchors = AnchorSet.load(tmp_path / "raw" / "anchors.safetensors")
    assert float(anchors.directions_in[0] @ anchors.directions_in[1]) > -0.99
