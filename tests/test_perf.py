"""The performance suite (``sdl-anchor bench perf``): every section's rows at toy sizes, the perf.json
contract, and bad input. The real figures come from ``--preset cpu`` / ``--preset gpu`` (README)."""

import json
import math

import pytest
import torch

from sdl_anchor.cli import main
from sdl_anchor.eval.perf import SECTIONS, format_table, matmul_flops_per_second, run_perf
from sdl_anchor.eval.step_timing import paired_ratio

TINY = {
    "anchor": {"d_in": 16, "d_sae": 64, "batch_size": 32, "k": 4, "steps": 2},
    "sparse": {"d_in": 16, "d_sae": 64, "k": 4, "batch_size": 32, "steps": 2},
    "coder": {"d": 16, "d_sae": 64, "batch_size": 32, "steps": 2, "n_sources": 2},
    "transcoder_set": {
        "n_layers": 2,
        "d_model": 16,
        "n_ctx": 64,
        "d_sae": 32,
        "k": 4,
        "training_tokens": 2048,
        "repeats": 2,
    },
    "clt": {
        "activation": "batchtopk",
        "n_layers": 3,
        "d": 16,
        "d_sae": 64,
        "k": 4,
        "batch_size": 32,
        "steps": 2,
        "memory_n_layers": 2,
        "memory_d": 16,
        "memory_d_sae": 64,
    },
    "sampling": {"n_features": 256, "d": 32, "sparsity": 0.99, "batch_size": 64, "repeats": 2},
    "synth_sampling": {"num_features": 256, "hidden_dim": 32, "batch_size": 64, "repeats": 2},
    "feed": {"n_features": 256, "d": 32, "d_sae": 64, "batch_size": 64, "steps": 2},
    "resampling": {"d_in": 16, "d_sae": 256, "batch_size": 64, "steps": 2, "total_steps": 1000},
    "absorption": {"preset": "toy"},
    "hardware": {"d_in": 16, "d_sae": 64, "batch_size": 32, "steps": 2, "dtypes": ["float32", "bfloat16"]},
    "autocast": {"d_in": 16, "d_sae": 64, "batch_size": 32, "steps": 2},
    "compile": {"d_in": 16, "d_sae": 64, "batch_size": 32, "k": 4, "steps": 2, "backend": "aot_eager"},
}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("perf_cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("SDL_ANCHOR_CACHE", str(tmp_path_factory.mktemp("perf_cache")))
        results = run_perf(TINY)
    assert list(cwd.iterdir()) == []  # timing writes nothing where it runs (SAELens's default ./output)
    return results


def test_every_section_reports_rows_that_keep_the_contract(tiny_results):
    rows = tiny_results["rows"]
    assert {row["section"] for row in rows} == set(SECTIONS) - {"absorption"}
    for row in rows:
        assert isinstance(row["name"], str) and row["name"]
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert isinstance(row["ok"], bool) and row["better"] in ("lower", "higher")
        assert row["ok"] == (
            row["ratio"] <= row["target"] if row["better"] == "lower" else row["ratio"] >= row["target"]
        )
    counts = {section: sum(row["section"] == section for row in rows) for section in SECTIONS}
    # a noise-floor row and 5 activations; the dense product (CPU), 3 sparse-step architectures and
    # sparsify's step (the dev extra installs it); 4 transcoders and 4 crosscoders; a set's passes and
    # wall time; a CLT's step per FLOP, its sparse step against its dense step and its memory; 2 strategies;
    # 2 dtypes
    assert counts == {
        "anchor": 6,
        "sparse": 5,
        "coder": 8,
        "transcoder_set": 2,
        "clt": 3,
        "sampling": 1,
        "synth_sampling": 1,
        "feed": 1,
        "resampling": 2,
        "absorption": 0,
        "hardware": 2,
        "autocast": 1,
        "compile": 1,
    }
    assert tiny_results["skipped"] == [
        {"section": "absorption", "reason": "needs a Python with sae-bench==0.6.0: pass --saebench-python"}
    ]
    assert tiny_results["device"].startswith("cpu")


def test_ratios_are_the_ratios_of_their_own_timings(tiny_results):
    by_section = {}
    for row in tiny_results["rows"]:
        by_section.setdefault(row["section"], []).append(row)
    sampling = by_section["sampling"][0]
    assert sampling["ratio"] == pytest.approx(sampling["sae_lens_seconds"] / sampling["lrb_seconds"])
    synth = by_section["synth_sampling"][0]
    assert synth["ratio"] == pytest.approx(synth["saelens_seconds"] / synth["ours_seconds"])
    assert "synth" in synth["name"].lower() and "generator" in synth["name"].lower()
    feed = by_section["feed"][0]
    assert feed["ratio"] == pytest.approx(feed["generation_seconds"] / feed["step_seconds"])
    for row in by_section["resampling"]:  # 4 default events over the 1000-step run
        assert row["ratio"] == pytest.approx(4 * row["event_seconds"] / (1000 * row["step_seconds"]))
    crosscoder = [row for row in by_section["coder"] if "crosscoder" in row["name"]]
    for row in crosscoder:
        assert row["flop_ratio"] == 2.0 and row["ratio"] == pytest.approx(row["time_ratio"] / 2.0)
    for row in by_section["hardware"]:
        flops = 5 * 2 * 32 * 16 * 64
        assert row["ratio"] == pytest.approx(flops / row["step_seconds"] / (1e12 * row["matmul_tflops"]))


def test_paired_ratio_is_the_median_of_per_round_ratios():
    times = {"ours": [2.0, 3.0, 10.0], "base": [1.0, 2.0, 2.0]}
    assert paired_ratio(times, "ours", "base") == 2.0  # of 2.0, 1.5 and 5.0


def test_matmul_rate_is_flops_over_time():
    rate = matmul_flops_per_second(64, 64, 64, torch.float32, "cpu", repeats=3)
    assert 1e6 < rate < 1e14


def test_the_table_lists_every_row_and_the_skipped_sections(tiny_results):
    table = format_table(tiny_results)
    for row in tiny_results["rows"]:
        assert row["name"] in table
    assert "skipped absorption" in table


def test_the_results_name_the_cpu_and_the_kernel_choices(tiny_results):
    """Issue 37: a figure is never read without its machine and the kernels the step ran on."""
    from sdl_anchor.kernel_choice import cpu_model, onednn_linear_available

    table = format_table(tiny_results)
    assert tiny_results["cpu_model"] == cpu_model() and cpu_model() in tiny_results["device"]
    assert cpu_model() in table.splitlines()[0] and f"kernel choices on {cpu_model()}" in table
    assert tiny_results["kernel_setting"] == "calibrate"
    if onednn_linear_available():
        sparse_shape = [c for c in tiny_results["kernels"] if "batch=32,d_in=16,d_sae=64" in c["key"]]
        choice = sparse_shape[-1]  # (earlier tests in this process may have chosen for this shape elsewhere)
        assert choice["kernel"] == "dense_product" and choice["choice"] in ("onednn", "addmm")
        assert set(choice["seconds"]) == {"onednn", "addmm"} and choice["calibration_seconds"] > 0
        assert "dense_product (batch ~32, d_in ~16, d_sae ~64): " + choice["choice"] in table
        (product,) = [r for r in tiny_results["rows"] if r["name"].startswith("sparse step's dense product")]
        assert product["chosen"] == choice["choice"] and product["other"] != choice["choice"]
        assert product[f"{product['chosen']}_seconds"] > 0 and product[f"{product['other']}_seconds"] > 0
        assert product["noise_floor"] >= 0 and "noise floor" in product["note"]
        assert product["ok"] == (product["ratio"] <= 1.0 or product["ratio"] <= 1 + product["noise_floor"])


@pytest.mark.parametrize(
    ("again", "floor", "within"),
    [([1.05, 0.99, 1.0], 0.05, True), ([1.0, 1.0, 1.0], 0.0, False)],
)
def test_the_dense_product_row_judges_a_tie_by_the_chosen_kernel_against_itself(
    monkeypatch, again, floor, within
):
    """Planted rounds: the chosen kernel is 3% slower than the other. When the chosen kernel disagrees with
    itself by 5% in the same rounds, that is a tie within noise; when it never does, the choice was wrong."""
    from sdl_anchor.eval import sparse_step_time

    def planted(steppers, steps, device, warm_up):
        chosen, other, repeat = steppers
        return {chosen: [1.0, 1.0, 1.0], other: [0.97, 0.97, 0.97], repeat: again}

    monkeypatch.setattr(sparse_step_time, "step_seconds", planted)
    row = sparse_step_time.measure_dense_product({"d_in": 8, "d_sae": 16, "batch_size": 4, "steps": 3})
    assert row["ratio"] == pytest.approx(1 / 0.97)
    assert row["noise_floor"] == pytest.approx(floor) and row["within_noise"] is within


def test_the_transcoder_set_wall_row_is_a_median_with_its_noise_floor(tiny_results):
    (wall,) = [r for r in tiny_results["rows"] if r["section"] == "transcoder_set" and "wall" in r["name"]]
    assert wall["repeats"] == 2 and len(wall["seconds_ratio_rounds"]) == 2
    assert wall["ratio"] == pytest.approx(
        sorted(wall["seconds_ratio_rounds"])[0] / 2 + sorted(wall["seconds_ratio_rounds"])[1] / 2
    )
    rounds = wall["single_runs_seconds_rounds"]
    assert wall["noise_floor"] == pytest.approx((max(rounds) - min(rounds)) / wall["single_runs_seconds"])
    assert "noise floor" in format_table(tiny_results)


def test_the_clt_rows_count_flops_and_memory_from_the_shapes(tiny_results):
    step, sparse, memory = [r for r in tiny_results["rows"] if r["section"] == "clt"]
    assert sparse["name"] == "batchtopk_clt sparse step / dense step (same CLT trainer, fused Adam)"
    assert sparse["sparse_seconds"] > 0 and sparse["dense_seconds"] > 0 and len(sparse["ratio_rounds"]) == 2
    n_layers, d, d_sae, batch = 3, 16, 64, 32
    # planted shape: encoders 4 d d_sae per layer and token, decoder blocks 6 d_sae d each, L(L+1)/2 for the
    # CLT against L for the set
    assert step["clt_flops"] == batch * (4 * n_layers * d * d_sae + 6 * 6 * d_sae * d)
    assert step["set_flops"] == batch * (4 * n_layers * d * d_sae + 6 * n_layers * d_sae * d)
    assert step["decoder_flop_ratio"] == (n_layers + 1) / 2 == 2.0
    assert step["flop_ratio"] == pytest.approx(step["clt_flops"] / step["set_flops"])
    assert 1 < step["flop_ratio"] < step["decoder_flop_ratio"]
    assert step["ratio"] == pytest.approx(step["time_ratio"] / step["flop_ratio"])
    assert step["clt_seconds"] > 0 and step["set_seconds"] > 0
    # measured after one Adam step: parameters and their two moments, plus a step counter per tensor
    assert 1.0 <= memory["ratio"] < 1.01
    params = 2 * (16 * 64 + 64 + 16) + 3 * 64 * 16  # 2 layers: encoders and biases, 3 decoder blocks
    assert memory["measured_bytes"]["parameters"] == 4 * params
    assert memory["computed_bytes_at_measured_shape"]["between_steps"] == 12 * params
    # the paper's shape is computed, never allocated here: 12 layers, 768 -> 16,384 per layer
    paper = memory["paper_clt_bytes"]
    assert paper["parameters"] == 4 * (12 * (768 * 16_384 + 16_384 + 768) + 78 * 16_384 * 768)
    assert paper["peak"] == 4 * paper["parameters"]
    assert memory["paper_clt_over_set"] == pytest.approx(
        (12 * (768 * 16_384 + 16_384 + 768) + 78 * 16_384 * 768) / (12 * (2 * 768 * 16_384 + 16_384 + 768))
    )
    assert "computed from shapes" in memory["note"] and "measured" in memory["note"]


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_the_clt_sparse_row_times_the_same_clt_sparse_and_dense_under_clt_trainers(monkeypatch, activation):
    import sdl_anchor.eval.clt_step_time as clt_step_time
    from sdl_anchor.integrations.clt_training import CLTTrainer
    from sdl_anchor.integrations.sparse_step import dense_step_reason

    timed = {}

    def fake_step_seconds(trainers, steps, device):
        timed.update(trainers)
        return {"dense": [2.0, 4.0, 4.0][:steps], "sparse": [1.0, 1.0, 3.0][:steps]}

    monkeypatch.setattr(clt_step_time, "step_seconds", fake_step_seconds)
    row = clt_step_time.measure_sparse_step({**TINY["clt"], "activation": activation, "steps": 3})
    (dense, dense_batches), (sparse, sparse_batches) = timed["dense"], timed["sparse"]
    assert type(dense) is type(sparse) is CLTTrainer and dense_batches is sparse_batches
    assert dense_step_reason(sparse.sae) is None and dense_step_reason(dense.sae) == "sparse_backward=False"
    for name, weight in dense.sae.state_dict().items():
        assert torch.equal(weight, sparse.sae.state_dict()[name]), name
    for trainer in (dense, sparse):
        assert all(group["fused"] for group in trainer.optimizer.param_groups)
    assert row["ratio"] == 0.5 and row["ratio_rounds"] == [0.5, 0.25, 0.75]  # median of per-round ratios
    assert row["sparse_seconds"] == 1.0 and row["dense_seconds"] == 4.0
    assert row["name"] == f"{activation}_clt sparse step / dense step (same CLT trainer, fused Adam)"
    with pytest.raises(ValueError, match="TopK family"):
        clt_step_time.measure_sparse_step({**TINY["clt"], "activation": "jumprelu"})


def test_clt_flop_ratio_has_the_analytic_decoder_factor():
    from sdl_anchor.eval.clt_step_time import matmul_flops_per_token

    for n_layers in (1, 2, 5, 12):
        # decoder work alone: set the encoder's to nothing with d_in = 0
        clt = matmul_flops_per_token(n_layers, 0, 256, 64, cross_layer=True)
        per_layer = matmul_flops_per_token(n_layers, 0, 256, 64, cross_layer=False)
        assert clt / per_layer == (n_layers + 1) / 2


def test_bench_perf_writes_perf_json(tmp_path, capsys):
    out = tmp_path / "perf"
    assert main(["bench", "perf", "--preset", "cpu", "--sections", "feed", "--out", str(out)]) == 0
    results = json.loads((out / "perf.json").read_text())
    assert set(results) >= {"rows", "device"}
    (row,) = results["rows"]
    assert row["section"] == "feed" and row["better"] == "lower" and row["target"] == 0.1
    assert row["n_features"] == 4096 and row["d_sae"] == 4096 and row["batch_size"] == 1024
    assert row["name"] in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--preset", "gpu", "--device", "cuda"], "needs CUDA"),
        (["--sections", "anchor,speed"], "unknown section 'speed'"),
        (["--sections", "compile"], "runs only with --preset gpu"),
        (["--device", "tpu9"], "is not a torch device"),
        (["--saebench-python", "/no/such/python"], "does not exist"),
    ],
)
def test_bench_perf_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "perf"
    assert main(["bench", "perf", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bench_perf_keeps_earlier_results_without_overwrite(tmp_path, capsys):
    out = tmp_path / "perf"
    out.mkdir()
    (out / "perf.json").write_text("{}")
    assert main(["bench", "perf", "--sections", "feed", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "perf.json").read_text() == "{}"


def test_the_sparse_against_dense_rows_time_both_steps_with_the_same_trainer_and_fused_adam(monkeypatch):
    """Issue 35: the dense side ran under SAELens's own trainer and unfused Adam, the sparse side under ours
    with fused Adam, so the row credited the fused optimiser to the sparse step."""
    import sdl_anchor.eval.sparse_step_time as sparse_step_time

    timed = {}

    def fake_step_seconds(trainers, steps, device, warm_up):
        timed.update({name: trainer for name, (trainer, _) in trainers.items()})
        return {name: [1.0] * steps for name in trainers}

    monkeypatch.setattr(sparse_step_time, "step_seconds", fake_step_seconds)
    for architecture in sparse_step_time.SPARSE_ARCHITECTURES:
        row = sparse_step_time.measure_against_dense(architecture, TINY["sparse"])
        dense, sparse = timed["dense"], timed["sparse"]
        assert not getattr(dense.sae.cfg, "sparse_backward", False) and sparse.sae.cfg.sparse_backward
        for trainer in (dense, sparse):
            assert type(trainer.optimizer) is torch.optim.Adam
            assert all(group["fused"] for group in trainer.optimizer.param_groups), (architecture, trainer)
        assert type(dense) is type(sparse)
        stock = sparse_step_time.SPARSE_ARCHITECTURES[architecture]
        assert (
            row["name"]
            == f"{architecture} sparse step / SAELens {stock} dense step (same trainer, fused Adam)"
        )


def test_the_sparsify_row_times_sparsify_s_step_as_its_trainer_runs_it():
    """The baseline does what sparsify's Trainer does every step for an SAE (decoder rows to unit norm, the
    decoder gradient's component along each row removed, fired-latent bookkeeping); the bare step does
    not, and is timed beside it."""
    pytest.importorskip("sparsify")
    from sdl_anchor.eval.sparse_step_time import SparsifyStep

    torch.manual_seed(0)
    batch = torch.randn(64, 16)
    steps = {trainer: SparsifyStep(16, 128, 4, "cpu", trainer=trainer) for trainer in (True, False)}
    for step in steps.values():
        with torch.no_grad():
            step.coder.W_dec.mul_(3.0 / step.coder.W_dec.norm(dim=1, keepdim=True))
        step.optimizer.param_groups[0]["lr"] = 1e-6  # the update barely moves the rows
        step.step(batch)
    norms = {trainer: step.coder.W_dec.norm(dim=1) for trainer, step in steps.items()}
    torch.testing.assert_close(norms[True], torch.ones(128), atol=1e-4, rtol=0)
    torch.testing.assert_close(norms[False], torch.full((128,), 3.0), atol=1e-4, rtol=0)
    since_fired = steps[True].tokens_since_fired
    assert 0 < int((since_fired == 0).sum()) < 128 and set(since_fired.tolist()) == {0, 64}
