"""The GPU path: float32 numerics on the device against a float64 CPU reference (anchor loss, crosscoder
penalty, resampling, LRB sampling), no host syncs in the hot loop, bf16 autocast and torch.compile.

Tests parametrised over ``device`` run on CPU everywhere and on CUDA where there is one (the ``cuda``
marker skips without it), so the comparisons themselves are exercised by CI."""

import copy

import pytest
import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sdl_anchor as sa
from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.anchoring.loss import anchor_loss
from sdl_anchor.eval.resampling_experiments import plant_spurious_minimum
from sdl_anchor.eval.step_timing import trainer_for_timing
from sdl_anchor.integrations.resampling_trainer import InputPool, pool_statistics
from sdl_anchor.resampling import theory_resample

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double().cpu() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_anchor_loss_and_its_gradient_in_float32_match_float64(device, kind):
    generator = torch.Generator().manual_seed(0)
    d_in, d_sae, k = 256, 2048, 100
    tensors = {
        "w_enc": torch.randn(d_in, d_sae, generator=generator, dtype=torch.float64) * 0.05,
        "w_dec": torch.randn(d_sae, d_in, generator=generator, dtype=torch.float64) * 0.05,
        "anchors_in": F.normalize(torch.randn(k, d_in, generator=generator, dtype=torch.float64), dim=1),
        "anchors_out": F.normalize(torch.randn(k, d_in, generator=generator, dtype=torch.float64), dim=1),
    }
    results = {}
    for name, dtype, where in (("reference", torch.float64, "cpu"), ("ours", torch.float32, device)):
        args = {n: t.to(where, dtype).clone().requires_grad_(n.startswith("w_")) for n, t in tensors.items()}
        loss = anchor_loss(kind, **args)
        loss.backward()
        results[name] = (loss.detach(), args["w_enc"].grad, args["w_dec"].grad)
    for ours, reference in zip(results["ours"], results["reference"], strict=True):
        assert ours.dtype == torch.float32 and ours.device.type == torch.device(device).type
        assert _relative_error(ours, reference) < 1e-5
    assert results["reference"][1][:, 100:].abs().max() == 0  # only anchored latents feel the loss


@pytest.mark.parametrize("device", DEVICES)
def test_crosscoder_penalty_in_float32_matches_float64(device):
    sae_class, config_class = get_sae_training_class("standard_crosscoder")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=3 * 64, n_sources=3, d_sae=512, device=device))
    with torch.no_grad():  # sources of different scale, so the block norms differ
        sae.W_dec.mul_(torch.tensor([0.1, 1.0, 10.0], device=device).repeat_interleave(64))
    reference = copy.deepcopy(sae).to("cpu", torch.float64)
    x = torch.randn(1024, 3 * 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outputs = {}
    for name, model, batch in (("ours", sae, x.float().to(device)), ("reference", reference, x)):
        step = TrainStepInput(
            sae_in=batch,
            coefficients={"l1": 2.0},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        outputs[name] = model.training_forward_pass(step)
    for key in ("l1_loss", "mse_loss"):
        ours, ref = outputs["ours"].losses[key], outputs["reference"].losses[key]
        assert ref.dtype == torch.float64 and ref > 0
        assert _relative_error(ours.detach(), ref.detach()) < 1e-5, key


@pytest.mark.parametrize("device", DEVICES)
def test_theory_resampling_in_float32_matches_float64(device):
    bench = sa.LinearRepresentationBench(n_features=64, d_in=64, sparsity=0.98, max_interference=0.1, seed=0)
    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=64, d_sae=64, k=2, aux_loss_coefficient=0.0))
    plant_spurious_minimum(sae, bench.features_in)
    x = bench.sample(8192, torch.Generator().manual_seed(1)).x_in
    updates = {}
    for name, model, where in (
        ("reference", copy.deepcopy(sae).to(torch.float64), "cpu"),
        ("ours", copy.deepcopy(sae).to(device), device),
    ):
        batch = x.to(where, model.W_enc.dtype)
        pool = pool_statistics(model, batch, batch)
        W_enc, b_enc, W_dec = model.W_enc.detach(), model.b_enc.detach(), model.W_dec.detach()
        updates[name] = theory_resample(torch.arange(32, 64, device=where), pool, W_enc, b_enc, W_dec)
    ours, reference = updates["ours"], updates["reference"]
    assert ours.n_split == reference.n_split == 32
    assert ours.latents.cpu().tolist() == reference.latents.tolist()
    cosine = F.cosine_similarity(ours.decoder.double().cpu(), reference.decoder, dim=1)
    assert cosine.min() > 1 - 1e-5
    assert _relative_error(ours.encoder, reference.encoder) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_lrb_sampling_on_the_device_is_exact_and_has_the_asked_for_statistics(device):
    bench = sa.LinearRepresentationBench(
        n_features=2048, d_in=96, sparsity=0.99, max_interference=0.99, seed=0, device=device
    )
    codes = bench.sample_codes(8192, torch.Generator(device=device).manual_seed(0))
    assert codes.values.device.type == torch.device(device).type
    x = codes.project(bench.features_in)
    reference = codes.dense().double().cpu() @ bench.features_in.double().cpu()
    assert _relative_error(x, reference) < 1e-5
    dense = codes.dense()
    firing = (dense != 0).double().mean()
    expected = bench.config.firing_probability
    assert abs(float(firing) - expected) < 5 * (expected * (1 - expected) / dense.numel()) ** 0.5
    magnitudes = dense[dense != 0].double()
    assert abs(float(magnitudes.mean()) - (bench.config.c_min + bench.config.beta)) < 0.02


@pytest.mark.cuda
def test_the_hot_loop_makes_no_host_round_trip():
    """LRB batches, the anchor loss forward and backward, and the resampler's per-step bookkeeping run
    with CUDA's sync debug mode set to raise on any device-to-host synchronisation."""
    device = "cuda"
    bench = sa.LinearRepresentationBench(
        n_features=4096, d_in=128, sparsity=0.99, max_interference=0.99, seed=0, device=device
    )
    stream = bench.stream(1024)
    w_enc = torch.randn(128, 512, device=device, requires_grad=True)
    w_dec = torch.randn(512, 128, device=device, requires_grad=True)
    anchors = F.normalize(torch.randn(16, 128, device=device), dim=1)
    pool = InputPool(4096)
    since_fired = torch.zeros(512, dtype=torch.long, device=device)
    next(stream)  # allocations and lazy initialisation outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            x = next(stream)
            anchor_loss("mse", w_enc, w_dec, anchors, anchors).backward()
            pool.add(x, None)
            fired = (x @ w_enc > 0).any(dim=0)
            since_fired = torch.where(fired, 0, since_fired + x.shape[0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert pool.size == 3072


def _build(architecture, device="cpu"):
    sae_class, config_class = get_sae_training_class(architecture)
    extra = {"k": 4} if "topk" in architecture else {}
    if "matryoshka" in architecture:
        extra["matryoshka_widths"] = [16, 64]
    if "crosscoder" in architecture:
        fields = {"d_in": 32, "n_sources": 2}
    elif "transcoder" in architecture:
        fields = {"d_in": 16, "d_out": 16}
    else:
        fields = {"d_in": 16}
    torch.manual_seed(0)
    sae = sae_class(config_class(d_sae=64, device=device, **fields, **extra))
    if architecture.startswith("anchored_"):
        sae.set_anchors(AnchorSet(torch.randn(4, 16)))
    return sae


def _batches(architecture, n=3):
    generator = torch.Generator().manual_seed(0)
    if "transcoder" in architecture:
        return [
            (torch.randn(32, 16, generator=generator), torch.randn(32, 16, generator=generator))
            for _ in range(n)
        ]
    width = 32 if "crosscoder" in architecture else 16
    return [torch.randn(32, width, generator=generator) for _ in range(n)]


COMPILED = [
    "anchored_topk",
    "anchored_jumprelu",
    "anchored_matryoshka_batchtopk",
    "topk_transcoder",
    "standard_crosscoder",
    "jumprelu_crosscoder",
]


def _graph_break_sites(sae, batch):
    """The innermost source file of every graph break dynamo meets in ``sae.training_forward_pass``."""
    if isinstance(batch, tuple):
        sae.set_training_target(batch[1])
        batch = batch[0]
    coefficients = {
        name: value if isinstance(value, float) else value.value
        for name, value in sae.get_coefficients().items()
    }
    step = TrainStepInput(
        sae_in=batch,
        coefficients=coefficients,
        dead_neuron_mask=torch.zeros(sae.cfg.d_sae, dtype=torch.bool),
        n_training_steps=0,
        is_logging_step=True,
    )
    explanation = torch._dynamo.explain(sae.training_forward_pass)(step)
    return {reason.user_stack[-1].filename for reason in explanation.break_reasons}


@pytest.mark.parametrize("architecture", COMPILED)
def test_compile_sae_matches_eager_and_breaks_graphs_only_inside_sae_lens(architecture):
    """What SAELens's ``compile_sae`` does (``torch.compile(sae.training_forward_pass)``), through
    training steps: the same losses and weights as eager; and every graph break is SAELens's own (its
    TopK aux loss reads the dead-latent count on the host), none in sdl_anchor's code."""
    torch._dynamo.reset()
    eager, compiled = _build(architecture), _build(architecture)
    compiled.training_forward_pass = torch.compile(compiled.training_forward_pass, backend="aot_eager")
    trainers = [trainer_for_timing(model, 32, "cpu") for model in (eager, compiled)]
    for batch in _batches(architecture):
        losses = [float(trainer.step(batch).loss.detach()) for trainer in trainers]
        assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
    assert torch.allclose(eager.W_enc, compiled.W_enc, atol=1e-6)
    sites = _graph_break_sites(_build(architecture), _batches(architecture)[0])
    torch._dynamo.reset()
    ours = [site for site in sites if "/sae_lens/" not in site]
    assert ours == [], f"graph breaks in our code: {ours}"


@pytest.mark.parametrize("architecture", ["anchored_topk", "topk_transcoder", "standard_crosscoder"])
def test_bf16_autocast_steps_track_float32(architecture):
    """SAELens's ``autocast=True`` (bf16 matmuls, float32 weights) on our architectures: the weights stay
    float32, the anchor loss stays on, and the loss follows the float32 run to bf16 precision."""
    runs = {}
    for autocast in (False, True):
        sae = _build(architecture)
        trainer = trainer_for_timing(sae, 32, "cpu", autocast=autocast)
        outputs = [trainer.step(batch) for batch in _batches(architecture, 5)]
        assert sae.W_enc.dtype == torch.float32
        runs[autocast] = outputs
    for plain, mixed in zip(runs[False], runs[True], strict=True):
        assert torch.isfinite(mixed.loss)
        assert float(mixed.loss) == pytest.approx(float(plain.loss), rel=5e-2)
        if architecture.startswith("anchored_"):
            assert float(mixed.losses["anchor_loss"]) == pytest.approx(
                float(plain.losses["anchor_loss"]), rel=5e-2
            )
