"""The held-out protocol of ``bench lrb`` (issue 32): seeds, fair baselines, every metric, degenerate flags,
the aggregate and the generated README numbers."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import sdl_anchor as sa
from sdl_anchor.cli import main
from sdl_anchor.eval.lrb_presets import PRESETS, PROTOCOL_COLUMNS
from sdl_anchor.eval.lrb_protocol import aggregate, degenerate_reasons, flag_degenerate, goal, held_out_seeds
from sdl_anchor.eval.lrb_report import (
    REPORTS,
    SUMMARIES,
    SUMMARY_COLUMNS,
    claims,
    render_summary,
    stale_pages,
    updated_page,
)
from sdl_anchor.eval.lrb_table import format_table, run_lrb_bench, select_columns

ROOT = Path(__file__).parents[1]
SMOKE = replace(PRESETS["smoke"], n_steps=20)


@pytest.fixture(scope="module")
def protocol_run():
    """Every protocol column on the smoke bench at two seeds: the development seed and one held out."""
    preset = replace(SMOKE, columns=PROTOCOL_COLUMNS)
    return run_lrb_bench(preset, seeds=(0, 1), progress=False)


def test_every_seed_is_its_own_bench_init_and_data_order(protocol_run):
    rows = protocol_run["rows"]
    assert [r["seed"] for r in rows] == [0] * 7 + [1] * 7
    assert [(r["variant"], r["resampling"]) for r in rows[:7]] == list(PROTOCOL_COLUMNS)
    benches = protocol_run["config"]["benches"]
    assert benches["bounded/sae/seed 0"]["anchor_indices"] != benches["bounded/sae/seed 1"]["anchor_indices"]
    assert rows[0]["M_IP"] != rows[7]["M_IP"]  # another bench and init: other scores
    # the same seed again gives the same row (everything is seeded)
    again = run_lrb_bench(SMOKE, seeds=(1,), variants=("plain",), resampling=("none",), progress=False)
    assert again["rows"][0]["M_IP"] == rows[7]["M_IP"] and again["rows"][0]["fvu"] == rows[7]["fvu"]


def test_every_cell_carries_every_metric_and_its_settings(protocol_run):
    for row in protocol_run["rows"]:
        for key in (
            "M_GT",
            "M_IP",
            "M_GT_dec",
            "MCC",
            "decoder_mcc",
            "fvu",
            "l0",
            "dead_fraction",
            "data_l0",
        ):
            assert isinstance(row[key], float), key
        assert isinstance(row["degenerate"], bool) and isinstance(row["degenerate_reasons"], list)
        settings = row["settings"]
        assert settings["n_steps"] == 20 and settings["dead_feature_window"] == max(1, 20 // 16)
    # the fair plain: AuxK's window fits the run, and every column of a row sees the same samples
    assert {r["samples_seen"] for r in protocol_run["rows"]} == {20 * SMOKE.batch_size}
    assert PRESETS["paper-cpu"].dead_window_for("topk", 32) == 300 // 16
    assert PRESETS["paper-cpu"].dead_window_for("topk", 128) == 600 // 16


def test_the_baseline_columns_train_what_they_say(protocol_run):
    by_column = {
        (r["variant"], r["resampling"]): r["settings"] for r in protocol_run["rows"] if r["seed"] == 0
    }
    anchors = by_column["anchors", "none"]
    assert anchors["anchor_coefficient"] == 0.1 and "self_anchor_coefficient" not in anchors  # Eq. 22 alone
    assert anchors["n_anchors"] == SMOKE.n_anchors
    no_truth = by_column["self_anchored", "theory"]
    assert no_truth["self_anchor_coefficient"] == 0.1 and "n_anchors" not in no_truth
    assert "anchor_coefficient" not in no_truth
    assert by_column["aligned", "theory"]["aligned_encoder"] is True
    assert by_column["anchored", "theory"]["n_anchors"] == SMOKE.n_anchors
    # the paper's anchored number stands beside its own method only
    paper = {(r["variant"], r["resampling"]): r["paper_M_GT"] for r in protocol_run["rows"] if r["seed"] == 0}
    assert paper["plain", "none"] == pytest.approx(0.849) and paper["anchors", "none"] == pytest.approx(0.876)
    assert paper["anchored", "theory"] is None and paper["self_anchored", "theory"] is None


def test_the_aligned_encoder_keeps_encoder_and_decoder_on_one_direction():
    bench = sa.LinearRepresentationBench(n_features=24, d_in=16, sparsity=0.9, max_interference=0.4, seed=0)
    config = sa.AnchoredTopKTrainingSAEConfig(d_in=16, d_sae=32, k=3, aligned_encoder=True)
    sae = sa.AnchoredTopKTrainingSAE(config)
    sa.train_on_bench(sae, bench, n_steps=30, batch_size=64, lr=1e-2, show_progress=False)
    cos = torch.nn.functional.cosine_similarity(sae.W_enc.T, sae.W_dec, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    plain = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=16, d_sae=32, k=3))
    sa.train_on_bench(plain, bench, n_steps=30, batch_size=64, lr=1e-2, show_progress=False)
    assert torch.nn.functional.cosine_similarity(plain.W_enc.T, plain.W_dec, dim=1).min() < 0.99
    # the tie keeps each side's norm and the anchored latents' anchors
    torch.manual_seed(0)
    anchored = sa.AnchoredTopKTrainingSAE(config)
    anchors = bench.anchors(k=4, seed=0)
    anchored.set_anchors(anchors)
    enc_norms, dec_norms = anchored.W_enc.norm(dim=0).clone(), anchored.W_dec.norm(dim=1).clone()
    before = anchored.W_enc[:, :4].clone()
    with torch.no_grad():
        anchored.W_dec.add_(0.05 * torch.randn_like(anchored.W_dec))
    dec_norms = anchored.W_dec.norm(dim=1).clone()
    anchored.align_encoder_()
    assert torch.allclose(anchored.W_enc.norm(dim=0), enc_norms, atol=1e-6)
    assert torch.allclose(anchored.W_dec.norm(dim=1), dec_norms, atol=1e-6)
    assert torch.equal(anchored.W_enc[:, :4], before)


def test_the_aligned_encoder_is_refused_for_a_transcoder():
    with pytest.raises(ValueError, match="needs both in one space"):
        sa.TopKTranscoderTrainingSAE(
            sa.TopKTranscoderTrainingSAEConfig(d_in=8, d_out=8, d_sae=16, k=2, aligned_encoder=True)
        )
    with pytest.raises(ValueError, match="aligned_encoder must be True or False"):
        sa.AnchoredTopKTrainingSAEConfig(d_in=8, d_sae=16, k=2, aligned_encoder="yes")


def _row(**fields):
    base = {"interference": "bounded", "method": "standard", "k": None, "variant": "anchored",
            "resampling": "none", "seed": 1, "label": "ReLU SAE", "data_l0": 10.0, "l0": 20.0,
            "M_GT": 0.5, "M_IP": 0.9, "M_GT_dec": 0.9, "M_IP_dec": 0.95, "MCC": 0.9, "M_GT_live": 0.5,
            "fvu": 0.1, "dead_fraction": 0.0, "train_seconds": 1.0}  # fmt: skip
    return {**base, **fields}


def test_degenerate_cells_are_planted_and_found():
    plain = _row(variant="plain", l0=25.0)
    assert degenerate_reasons(plain, None) == []
    dense = _row(l0=2686.0)
    assert "L0 2686.0 > 30.0" in degenerate_reasons(dense, plain)[0]
    lost = _row(M_GT_dec=0.044)
    assert degenerate_reasons(lost, plain) == ["decoder M_GT 0.044 < plain's 0.900"]
    # a TopK coder's L0 is its k, above 3x the data's: only an L0 above k counts
    assert degenerate_reasons(_row(method="topk", k=32, l0=32.0), plain) == []
    assert degenerate_reasons(_row(method="batchtopk", k=32, l0=40.0), plain)
    flagged = flag_degenerate([lost, plain, _row(variant="plain", seed=2, M_GT_dec=0.0)])[0]
    assert flagged["degenerate"] and flagged["compared_with_plain"]
    (alone,) = flag_degenerate([lost])
    assert not alone["degenerate"] and not alone["compared_with_plain"]
    # a plain row that ran after its sibling (a resume that adds it) still flags the sibling
    assert flag_degenerate([lost, plain])[0]["degenerate"]


def test_a_cell_that_misses_its_l0_target_by_more_than_a_quarter_is_degenerate():
    """With --l0-target a row compares its columns at one L0; a controller that could not steer (a JumpReLU
    threshold that moves at the learning rate) leaves a cell off target, which is flagged, plain's too."""

    def controlled(l0, variant="plain"):
        return _row(variant=variant, l0=l0, settings={"l0_control": {"target": 20.0, "coefficient": "l0"}})

    assert degenerate_reasons(controlled(24.9), None) == []
    assert degenerate_reasons(controlled(15.1), None) == []
    assert degenerate_reasons(controlled(25.7), None) == ["L0 25.7 misses its target 20 by more than 25%"]
    assert degenerate_reasons(controlled(14.0, "anchored"), controlled(20.0)) == [
        "L0 14.0 misses its target 20 by more than 25%"
    ]
    assert degenerate_reasons(_row(variant="plain", l0=25.7), None) == []  # no target, no such rule


def test_the_aggregate_leaves_out_the_development_seed_and_reports_spread():
    rows = flag_degenerate(
        [
            _row(variant="plain", seed=0, M_GT=0.9),
            _row(variant="plain", seed=1, M_GT=0.2),
            _row(variant="plain", seed=2, M_GT=0.4),
            _row(seed=1, l0=19.0, M_GT=0.6),
            _row(seed=2, l0=31.0, M_GT=0.8),
        ]
    )
    cells = {c["variant"]: c for c in aggregate(rows, [0, 1, 2])}
    assert cells["plain"]["seeds"] == [1, 2] and cells["plain"]["M_GT_mean"] == pytest.approx(0.3)
    assert cells["plain"]["M_GT_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std (ddof 1)
    assert cells["anchored"]["degenerate"] and cells["anchored"]["degenerate_seeds"] == [2]
    assert cells["anchored"]["goal"] is False and "degenerate" in cells["anchored"]["goal_reason"]
    assert "goal" not in cells["plain"]
    assert held_out_seeds([0]) == [0] and held_out_seeds([0, 3, 1]) == [3, 1]
    one = aggregate(rows, [0])  # the development seed alone: reported, in-sample, no spread
    assert {c["M_GT_std"] for c in one} == {None}


def test_the_goal_reads_plain_s_numbers():
    plain = {"M_GT_mean": 0.0, "MCC_mean": 0.9, "fvu_mean": 0.10, "l0_mean": 80.0, "M_GT_dec_mean": 0.99}
    topk = {"method": "topk", "degenerate": False, "M_GT_mean": 0.97, "MCC_mean": 0.95, "fvu_mean": 0.105}
    assert goal(topk, plain) == (True, "met")
    assert goal({**topk, "fvu_mean": 0.2}, plain)[0] is False
    assert "MCC 0.850 < plain's 0.900" in goal({**topk, "MCC_mean": 0.85}, plain)[1]
    relu = {
        "method": "standard",
        "degenerate": False,
        "M_GT_mean": 0.3,
        "l0_mean": 170.0,
        "M_GT_dec_mean": 1.0,
    }
    assert "L0 170.0 > 2.0 x plain's 80.0" in goal(relu, plain)[1]
    assert goal({**relu, "l0_mean": 100.0}, plain) == (True, "met")
    assert goal(topk, None) == (None, "no plain column to compare with")


def test_the_table_shows_mean_and_spread_flags_and_every_metric(protocol_run):
    table = format_table(protocol_run)
    assert "held-out seeds 1 (settings chosen on seed 0" in table
    for name in ("enc M_GT %", "enc M_IP", "dec M_GT %", "dec MCC", "FVU", "L0", "dead %"):
        assert name in table
    assert "anchored+theory" in table and "aligned+theory" in table and "self+theory" in table
    dev_only = run_lrb_bench(SMOKE, variants=("plain",), resampling=("none",), progress=False)
    assert "the development seed every setting was chosen on: in-sample" in format_table(dev_only)


def test_columns_are_selected_from_the_preset_or_crossed():
    paper = PRESETS["paper-cpu"]
    assert select_columns(paper, None, None) == PROTOCOL_COLUMNS
    assert select_columns(paper, ("anchored",), None) == (("anchored", "none"), ("anchored", "theory"))
    assert select_columns(paper, ("plain",), ("theory",)) == (("plain", "theory"),)
    with pytest.raises(ValueError, match="no column of preset 'paper-cpu' has variant init_only"):
        select_columns(paper, ("init_only",), None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", ","], "no method given"),
        (["--interference", ","], "no interference given"),
        (["--variants", "plain,plain"], "variant plain given twice"),
        (["--seeds", "1,1"], "repeat a seed"),
    ],
)
def test_bad_selections_exit_2_before_training(tmp_path, capsys, argv, message):
    assert (
        main(["bench", "lrb", "--preset", "smoke", "--out", str(tmp_path / "o"), "--no-progress", *argv]) == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_seed_and_seeds_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "lrb", "--seed", "1", "--seeds", "1,2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_resume_adds_seeds_and_keeps_the_rows_done(tmp_path):
    argv = ["bench", "lrb", "--preset", "smoke", "--out", str(tmp_path), "--no-progress", "--steps", "6"]
    argv += ["--variants", "plain", "--resampling", "none"]
    assert main([*argv, "--seeds", "1"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert main([*argv, "--seeds", "2", "--resume"]) == 0
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in resumed["rows"]] == [1, 2] and resumed["rows"][0] == first["rows"][0]
    assert resumed["config"]["seeds"] == [1, 2] and resumed["aggregate"][0]["seeds"] == [1, 2]
    assert (tmp_path / "table.txt").read_text().startswith("LRB (preset smoke")


def test_a_malformed_results_file_is_refused_on_resume(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"rows": [{"method": "topk"}], "config": {}}))
    argv = ["bench", "lrb", "--preset", "smoke", "--out", str(tmp_path), "--no-progress", "--resume"]
    assert main(argv) == 2
    assert "not this version's bench lrb results" in capsys.readouterr().err


def test_claims_are_generated_from_the_numbers(protocol_run):
    text = " ".join(claims(protocol_run))
    cells = {(c["variant"], c["resampling"]): c for c in aggregate(protocol_run["rows"], [0, 1])}
    plain = cells["plain", "none"]
    assert f"encoder M_GT {100 * plain['M_GT_mean']:.1f}%" in text and "Stock SAELens (AuxK on)" in text
    assert "over theory alone, anchoring adds" in text


def test_claims_name_the_columns_that_reach_the_encoder_goal_and_lead_each_metric(protocol_run):
    """Planted: the aligned tie gets the lowest FVU and the paper's method alone an encoder M_GT of 99% on every
    seed; the generated sentence names them, and a degenerate leader carries its flag."""
    import copy

    results = copy.deepcopy(protocol_run)
    for row in results["rows"]:
        column = (row["variant"], row["resampling"])
        row["M_GT"] = {("anchors", "none"): 0.99}.get(column, 0.5)
        if column == ("aligned", "theory"):
            row["fvu"] = 1e-4
        if column == ("self_anchored", "theory"):
            row["MCC"], row["degenerate"] = 1.0, True
    text = claims(results)[0]
    assert (
        "Encoder M_GT at or above 95.0%: anchors; below: plain, anchored, theory, self+theory (degenerate)"
        in text
    )
    assert "Lowest FVU: aligned+theory (0.000)" in text
    assert "highest MCC: self+theory (degenerate) (1.000)" in text


def test_a_relu_rows_claims_use_its_own_goal_and_name_the_lowest_l0(protocol_run):
    """Planted: on a ReLU row (L0 free, goal encoder M_GT above 0) only the anchored columns find any feature
    with their encoders, and the aligned tie has the lowest L0; the sentence says "above 0", not the TopK
    family's 95%, and names the L0 leader."""
    import copy

    results = copy.deepcopy(protocol_run)
    for row in results["rows"]:
        column = (row["variant"], row["resampling"])
        row["method"], row["k"], row["l0"] = "standard", None, 40.0
        row["M_GT"] = 0.02 if row["variant"] == "anchored" else 0.0
        if column == ("aligned", "theory"):
            row["l0"] = 12.0
    text = claims(results)[0]
    assert "**ReLU SAE, bounded interference**" in text
    assert (
        "Encoder M_GT above 0: anchored, anchored+theory; at 0: plain, anchors, theory, self+theory" in text
    )
    assert "Lowest L0: aligned+theory (12.0); lowest FVU: " in text
    assert "95.0%" not in text
    assert "Stock SAELens: " in text and "AuxK" not in text  # SAELens's AuxK loss is the TopK family's
    results["config"]["l0_target"] = 20.0  # the same row, its columns matched to L0 20 (--l0-target 20)
    assert "**ReLU SAE at L0 20, bounded interference**" in claims(results)[0]
    assert "every column's L0 matched to 20 by its sparsity coefficient" in format_table(results)


def test_the_committed_pages_say_what_their_results_say():
    """README and docs sections between lrb-report markers are what the script writes from results.json."""
    assert stale_pages(ROOT, write=False) == []
    for report in REPORTS:
        results = json.loads((ROOT / report.results).read_text())
        if report.kind == "synth":  # bench synth: model seeds, the evaluator's metrics in every row
            assert results["config"]["model_seeds"] and all("mcc" in r and "f1" in r for r in results["rows"])
        else:
            assert results["config"]["seeds"] and all("degenerate" in r for r in results["rows"])


def test_a_changed_number_makes_the_page_stale(tmp_path):
    import shutil

    for report in REPORTS:
        for relative in (report.results, *report.pages):
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / relative, tmp_path / relative)
    assert stale_pages(tmp_path, write=False) == []
    held_out = next(r for r in REPORTS if r.name == "quick-heldout")
    results = json.loads((tmp_path / held_out.results).read_text())
    next(r for r in results["rows"] if r["seed"] == 1)["M_GT"] -= 0.25  # one seed's number changes
    (tmp_path / held_out.results).write_text(json.dumps(results))
    assert stale_pages(tmp_path, write=False) == [
        "README.md (quick-heldout)",
        "docs/results.md (quick-heldout)",
    ]
    assert stale_pages(tmp_path, write=True) and stale_pages(tmp_path, write=False) == []
    synth = next(r for r in REPORTS if r.kind == "synth")
    results = json.loads((tmp_path / synth.results).read_text())
    results["rows"][0]["mcc"] += 0.1  # the evaluator's MCC of one SAE changes
    (tmp_path / synth.results).write_text(json.dumps(results))
    assert stale_pages(tmp_path, write=False) == [
        "README.md (synth-cpu)",
        "docs/synthsaebench.md (synth-cpu)",
    ]
    page = "x\n<!-- lrb-report quick-heldout -->\nold\n<!-- /lrb-report quick-heldout -->\ny\n"
    assert updated_page(page, held_out, "new") == page.replace("old", "new")
    with pytest.raises(ValueError, match="has no <!-- lrb-report quick-heldout -->"):
        updated_page("no markers", held_out, "new")


def test_the_summary_reads_every_row_of_its_reports_and_goes_stale_with_them(tmp_path):
    """The paper-size summary has one line per table row of its reports, each cell the held-out means of
    encoder and decoder M_GT and FVU; a changed number in one report makes the summary stale too."""
    import shutil

    for report in REPORTS:
        for relative in (report.results, *report.pages):
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / relative, tmp_path / relative)
    summary = next(s for s in SUMMARIES if s.name == "paper-cpu")
    text = render_summary(summary, tmp_path)
    n_rows = 0
    for report in (r for r in REPORTS if r.name in summary.reports):
        results = json.loads((tmp_path / report.results).read_text())
        cells = aggregate(results["rows"], results["config"]["seeds"])
        theory = [c for c in cells if (c["variant"], c["resampling"]) == ("plain", "theory")]
        n_rows += len(theory)
        for cell in theory:  # the theory-alone cell of every row, as the summary prints it
            assert (
                f"{100 * cell['M_GT_mean']:.1f} / {100 * cell['M_GT_dec_mean']:.1f}, {cell['fvu_mean']:.3f}"
                in text
            )
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == n_rows + 1 and f"of {n_rows} rows" in text  # the heading and one line a row

    def negative_line() -> str:
        return render_summary(summary, tmp_path).split("| TopK k=32, negative")[1].split("\n")[0]

    assert "self+theory" in negative_line()
    negative = next(r for r in REPORTS if r.name == "paper-cpu-heldout-negative")
    results = json.loads((tmp_path / negative.results).read_text())
    for row in results["rows"]:
        if (row["variant"], row["resampling"]) == ("self_anchored", "theory"):
            row["fvu"] *= 2  # self-anchoring's FVU doubles on every seed: no longer within 1.1x plain's
    (tmp_path / negative.results).write_text(json.dumps(results))
    assert "self+theory" not in negative_line()
    stale = stale_pages(tmp_path, write=False)
    assert {"README.md (paper-cpu)", "docs/results.md (paper-cpu)"} <= set(stale)


def test_the_summary_tells_a_column_a_method_lacks_from_one_that_was_not_run(tmp_path):
    """A transcoder has no aligned encoder: its summary cell says the column does not apply, and the legend
    says why; a column a row simply did not run says "not run"."""
    import shutil

    for report in REPORTS:
        for relative in (report.results, *report.pages):
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / relative, tmp_path / relative)
    summary = next(s for s in SUMMARIES if s.name == "paper-cpu")
    assert "| TopK k=32, bounded" in render_summary(summary, tmp_path)
    by_name = {report.name: report for report in REPORTS}
    planted = tmp_path / by_name["paper-cpu-heldout"].results
    results = json.loads(planted.read_text())
    results["rows"] = [
        {**row, "method": "transcoder", "label": "Transcoder"}
        for row in results["rows"]
        if row["variant"] != "aligned"
    ]
    planted.write_text(json.dumps(results))
    planted = tmp_path / by_name["paper-cpu-heldout-negative"].results
    results = json.loads(planted.read_text())
    results["rows"] = [row for row in results["rows"] if row["variant"] != "aligned"]
    planted.write_text(json.dumps(results))
    text = render_summary(summary, tmp_path)
    assert "| TopK k=32, bounded" not in text  # the planted row is the first transcoder row
    transcoder = text.split("| Transcoder, bounded")[1].split("\n")[0].split(" | ")
    negative = text.split("| TopK k=32, negative")[1].split("\n")[0].split(" | ")
    aligned = 1 + [heading for _, heading in SUMMARY_COLUMNS].index("Aligned encoder + theory")
    assert transcoder[aligned] == "does not apply" and negative[aligned] == "not run"
    assert text.count("A transcoder has no aligned encoder") == 1


@pytest.mark.parametrize("command", [["bench", "lrb", "--preset", "smoke"], ["bench", "perf"]])
def test_an_output_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*command, "--out", str(blocker / "out")]) == 2
    assert f"lies under {blocker}, which is a file" in capsys.readouterr().err
    assert main([*command, "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
