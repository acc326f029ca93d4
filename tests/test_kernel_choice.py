"""The sparse step's dense-product kernel is chosen by a cached calibration (issue 37): the faster candidate
wins whichever it is, the choice is cached per machine and shape class, the override works and bad ones are
refused, the two kernels agree, and a training run records the choice."""

import json

import pytest
import torch
from sae_lens.registry import get_sae_training_class

import sdl_anchor as sa
from sdl_anchor import kernel_choice as kc
from sdl_anchor.integrations.sparse_step import kernel_record, record_kernels
from sdl_anchor.sparse_topk import dense_pre_activations

needs_onednn = pytest.mark.skipif(not kc.onednn_linear_available(), reason="this torch has no oneDNN linear")


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_ANCHOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(kc.KERNELS_ENV, raising=False)
    kc.forget_choices()
    yield
    kc.forget_choices()


class FakeMeasure:
    """Returns the given seconds per candidate and counts its calls (no real timing)."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def __call__(self, candidates, shape, dtype, device_type):
        self.calls.append((candidates, shape, dtype, device_type))
        return {name: self.seconds[name] for name in candidates}


@needs_onednn
@pytest.mark.parametrize(
    "seconds,expected",
    [({"onednn": 0.6, "addmm": 1.0}, "onednn"), ({"onednn": 1.0, "addmm": 0.6}, "addmm")],
)
def test_calibration_picks_the_faster_candidate_whichever_it_is(seconds, expected):
    measure = FakeMeasure(seconds)
    choice = kc.choose_dense_product(1024, 768, 16_384, measure=measure)
    assert choice.choice == expected and choice.source == "calibrated"
    assert choice.seconds == seconds and choice.calibration_seconds >= 0
    assert measure.calls == [(("onednn", "addmm"), (1024, 768, 16_384), torch.float32, "cpu")]


@needs_onednn
def test_the_choice_is_cached_per_shape_class_and_reused_without_timing(tmp_path):
    measure = FakeMeasure({"onednn": 1.0, "addmm": 0.5})
    first = kc.choose_dense_product(1000, 700, 16_000, measure=measure)
    # same class (powers of two at or above: 1024, 1024, 16384): memory, no timing
    assert kc.choose_dense_product(1024, 1024, 16_384, measure=measure) == first
    assert len(measure.calls) == 1
    kc.forget_choices()  # a new process: the file answers
    again = kc.choose_dense_product(1024, 768, 16_384, measure=measure)
    assert len(measure.calls) == 1
    assert again.choice == "addmm" and again.source == "cached" and again.seconds == first.seconds
    assert again.calibration_seconds == pytest.approx(first.calibration_seconds)
    cached = json.loads((tmp_path / "cache" / kc.CACHE_FILE).read_text())
    (key,) = cached["choices"]
    assert key == first.key and kc.cpu_model() in key and f"threads={torch.get_num_threads()}" in key
    assert "batch=1024,d_in=1024,d_sae=16384" in key and "torch.float32" in key
    # another shape class is timed on its own
    kc.choose_dense_product(64, 768, 16_384, measure=measure)
    assert len(measure.calls) == 2
    assert len(json.loads((tmp_path / "cache" / kc.CACHE_FILE).read_text())["choices"]) == 2


@needs_onednn
def test_another_thread_count_or_cpu_is_calibrated_again(monkeypatch):
    measure = FakeMeasure({"onednn": 1.0, "addmm": 0.5})
    kc.choose_dense_product(256, 64, 512, measure=measure)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        kc.choose_dense_product(256, 64, 512, measure=measure)
    finally:
        torch.set_num_threads(threads)
    assert len(measure.calls) == 2
    monkeypatch.setattr(kc, "cpu_model", lambda: "Intel(R) Xeon(R) Another CPU")
    kc.choose_dense_product(256, 64, 512, measure=measure)
    assert len(measure.calls) == 3


@needs_onednn
def test_a_corrupt_cache_file_is_recalibrated_and_rewritten(tmp_path):
    path = tmp_path / "cache" / kc.CACHE_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    measure = FakeMeasure({"onednn": 0.5, "addmm": 1.0})
    assert kc.choose_dense_product(32, 16, 64, measure=measure).choice == "onednn"
    assert len(json.loads(path.read_text())["choices"]) == 1


@needs_onednn
@pytest.mark.parametrize("how", ["env", "argument"])
@pytest.mark.parametrize("kernel", ["onednn", "addmm"])
def test_the_override_fixes_the_kernel_without_timing(monkeypatch, how, kernel):
    measure = FakeMeasure({"onednn": 1.0, "addmm": 1.0})
    if how == "env":
        monkeypatch.setenv(kc.KERNELS_ENV, kernel.upper())
        choice = kc.choose_dense_product(64, 16, 64, measure=measure)
    else:
        monkeypatch.setenv(kc.KERNELS_ENV, "calibrate")
        choice = kc.choose_dense_product(64, 16, 64, override=kernel, measure=measure)
    assert choice.choice == kernel and choice.source == "override" and measure.calls == []


@needs_onednn
def test_recalibrate_times_again_once_and_replaces_the_cached_choice(monkeypatch):
    kc.choose_dense_product(64, 16, 64, measure=FakeMeasure({"onednn": 0.5, "addmm": 1.0}))
    monkeypatch.setenv(kc.KERNELS_ENV, "recalibrate")
    measure = FakeMeasure({"onednn": 1.0, "addmm": 0.5})
    assert kc.choose_dense_product(64, 16, 64, measure=measure).choice == "addmm"
    assert kc.choose_dense_product(64, 16, 64, measure=measure).source == "calibrated"
    assert len(measure.calls) == 1  # once per process and shape class
    monkeypatch.delenv(kc.KERNELS_ENV)
    kc.forget_choices()
    again = kc.choose_dense_product(64, 16, 64, measure=measure)
    assert (again.choice, again.source) == ("addmm", "cached") and len(measure.calls) == 1


@pytest.mark.parametrize("value", ["mkl", "oneDNN2", "auto"])
def test_bad_overrides_are_refused_naming_the_allowed_values(monkeypatch, value):
    monkeypatch.setenv(kc.KERNELS_ENV, value)
    with pytest.raises(
        ValueError, match="SDL_ANCHOR_KERNELS must be one of calibrate, recalibrate, onednn, addmm"
    ):
        kc.choose_dense_product(64, 16, 64)
    x, W, b = torch.randn(4, 16), torch.randn(16, 64), torch.randn(64)
    with pytest.raises(ValueError, match="SDL_ANCHOR_KERNELS must be one of"):
        dense_pre_activations(x, W, b)
    monkeypatch.delenv(kc.KERNELS_ENV)
    with pytest.raises(
        ValueError,
        match=f"override must be one of calibrate, recalibrate, onednn, addmm .*got '{value.lower()}'",
    ):
        dense_pre_activations(x, W, b, kernel=value)


def test_off_the_cpu_or_in_float64_addmm_is_the_only_candidate_and_nothing_is_timed(monkeypatch):
    measure = FakeMeasure({"onednn": 0.1, "addmm": 1.0})
    choice = kc.choose_dense_product(1024, 768, 16_384, torch.float64, measure=measure)
    assert choice.choice == "addmm" and choice.source == "only candidate"
    choice = kc.choose_dense_product(1024, 768, 16_384, torch.float32, "cuda", measure=measure)
    assert choice.choice == "addmm" and choice.source == "only candidate"
    monkeypatch.setenv(kc.KERNELS_ENV, "onednn")  # nothing to choose there: the override is moot
    assert kc.choose_dense_product(8, 8, 8, torch.float64, measure=measure).choice == "addmm"
    assert measure.calls == []


@needs_onednn
def test_the_real_calibration_times_both_kernels_and_they_agree():
    seconds = kc.measure_dense_products(("onednn", "addmm"), (64, 32, 256), torch.float32, "cpu", repeats=3)
    assert set(seconds) == {"onednn", "addmm"} and all(s > 0 for s in seconds.values())
    state = torch.get_rng_state()
    choice = kc.choose_dense_product(64, 32, 256)
    assert torch.equal(torch.get_rng_state(), state)  # calibration leaves the global random state alone
    assert choice.source == "calibrated" and choice.choice in ("onednn", "addmm")
    torch.manual_seed(0)
    x, W, b = torch.randn(64, 32), torch.randn(32, 256), torch.randn(256)
    results = {kernel: dense_pre_activations(x, W, b, kernel=kernel) for kernel in kc.OVERRIDES}
    torch.testing.assert_close(results["onednn"], results["addmm"], rtol=1e-5, atol=1e-5)
    assert torch.equal(results["calibrate"], results[choice.choice])


def test_the_cpu_model_and_shape_classes():
    assert isinstance(kc.cpu_model(), str) and kc.cpu_model()
    assert [kc.shape_class(n) for n in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]


def test_two_generations_behind_one_vendor_name_get_different_cache_keys():
    """A virtual machine's bare "AMD EPYC" covers several generations: family, model and stepping tell them
    apart, so one generation's cached choice is not read on another."""
    block = (
        "processor\t: {cpu}\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: {model}\nstepping\t: 1\n"
    )
    milan = block.format(cpu=0, model=1) + "\n" + block.format(cpu=1, model=17)
    genoa = block.format(cpu=0, model=17)
    assert kc.describe_cpu(milan) == "AMD EPYC (family 25, model 1, stepping 1)"  # the first processor's
    assert kc.describe_cpu(genoa) == "AMD EPYC (family 25, model 17, stepping 1)"
    assert kc.describe_cpu("model name\t: Apple M2\n") == "Apple M2"
    assert kc.describe_cpu("processor\t: 0\nfeatures\t: fp asimd\n") is None


@needs_onednn
def test_a_training_run_records_the_kernel_choice_in_its_metadata(monkeypatch):
    from sdl_anchor.integrations.training import train_on_bench

    monkeypatch.setattr(
        kc, "measure_dense_products", FakeMeasure({"onednn": 2.0, "addmm": 1.0}), raising=True
    )
    bench = sa.LinearRepresentationBench(n_features=32, d_in=16, sparsity=0.9, max_interference=0.5, seed=0)
    sae_class, config_class = get_sae_training_class("anchored_topk")
    sae = sae_class(config_class(d_in=16, d_sae=64, k=4, sparse_backward=True))
    trained = train_on_bench(sae, bench, n_steps=3, batch_size=32, show_progress=False)
    record = trained.cfg.metadata.kernels
    assert record["step"] == "sparse" and record["dense_product"] == "addmm"
    assert record["source"] in ("calibrated", "cached") and record["cpu"] == kc.cpu_model()
    assert record["seconds"] == {"onednn": 2.0, "addmm": 1.0} and record["threads"] == torch.get_num_threads()
    assert "kernels" in trained.cfg.to_dict()["metadata"]  # saved with the coder's config
    dense = sae_class(config_class(d_in=16, d_sae=64, k=4, sparse_backward=False))
    assert kernel_record(dense, 32) == {"step": "dense", "reason": "sparse_backward=False"}
    clt_class, clt_config = get_sae_training_class("batchtopk_clt")
    clt = clt_class(clt_config(d_in=16, d_out=8, d_sae=64, k=4, n_layers=3, sparse_backward=True))
    record_kernels(clt, 32)  # one product per layer, of shape [32, 16] x [16, 64]
    assert clt.cfg.metadata.kernels["step"] == "sparse"
    assert clt.cfg.metadata.kernels["dense_product"] == "addmm"
    dense_clt = clt_class(clt_config(d_in=16, d_out=8, d_sae=64, k=4, n_layers=3, sparse_backward=False))
    assert kernel_record(dense_clt, 32) == {"step": "dense", "reason": "sparse_backward=False"}
    standard_class, standard_config = get_sae_training_class("anchored_standard")
    plain = standard_class(standard_config(d_in=16, d_sae=64))
    record_kernels(plain, 32)
    assert kernel_record(plain, 32) is None and "kernels" not in plain.cfg.metadata
