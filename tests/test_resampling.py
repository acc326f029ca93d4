"""Dead-latent resampling: the schedule, both strategies on planted cases, Adam resets, the trainer, bad input."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class

import sdl_anchor as sa
from sdl_anchor.eval.resampling_experiments import plant_spurious_minimum
from sdl_anchor.integrations.resampling_trainer import LATENT_DIMS, pool_statistics
from sdl_anchor.resampling import (
    ResamplePool,
    ResamplingConfig,
    anthropic_resample,
    reset_adam_state,
    theory_resample,
)


@pytest.fixture(scope="module")
def bench():
    return sa.LinearRepresentationBench(n_features=64, d_in=64, sparsity=0.98, max_interference=0.1, seed=0)


def planted_topk(bench):
    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=64, d_sae=64, k=2, aux_loss_coefficient=0.0))
    plant_spurious_minimum(sae, bench.features_in)
    return sae


def test_schedule_scales_with_the_run_and_refuses_one_that_never_resamples():
    schedule = ResamplingConfig().schedule(2000)
    assert schedule.event_steps == (250, 500, 750, 1000) and schedule.dead_steps == 125
    assert ResamplingConfig(every_n_steps=300, max_events=10, stop_fraction=0.2).schedule(
        1000
    ).event_steps == (
        300,
        600,
    )
    # more intervals: the paper-cpu TopK k=128 schedule, eight events to step 528 of 600 (66 apart)
    nine = ResamplingConfig(intervals=9, max_events=8, stop_fraction=0.1).schedule(600)
    assert nine.event_steps == tuple(range(66, 529, 66)) and nine.dead_steps == 33
    assert (
        ResamplingConfig(intervals=9, max_events=8, stop_fraction=0.1).schedule(4000).event_steps[-1] == 3552
    )
    with pytest.raises(ValueError, match="intervals must be a positive integer"):
        ResamplingConfig(intervals=0)
    with pytest.raises(ValueError, match="never runs"):
        ResamplingConfig(every_n_steps=900).schedule(1000)
    with pytest.raises(ValueError, match="longer than the first event"):
        ResamplingConfig(every_n_steps=100, dead_steps=200).schedule(1000)
    with pytest.raises(ValueError, match="strategy must be one of"):
        ResamplingConfig(strategy="random")
    with pytest.raises(ValueError, match="pool_size must be a positive integer"):
        ResamplingConfig(pool_size=0)


def test_theory_splits_every_planted_polysemantic_latent_into_its_features(bench):
    sae = planted_topk(bench)
    batch = bench.sample(8192, torch.Generator().manual_seed(1))
    pool = pool_statistics(sae, batch.x_in, batch.x_in)
    dead = torch.arange(32, 64)
    update = theory_resample(dead, pool, sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach())
    assert update.n_split == 32 and update.n_fallback == 0 and update.n_dead_resampled == 32
    assert sorted(update.latents.tolist()) == list(range(64))  # 32 re-pointed live latents + 32 new ones
    decoder_cos = F.normalize(update.decoder, dim=1) @ bench.features_in.T
    best = decoder_cos.max(dim=1)
    assert best.values.min() > 0.98  # every new or re-pointed latent writes one ground-truth feature
    assert sorted(best.indices.tolist()) == list(range(64))  # each feature exactly once: distinct
    encoder_cos = F.normalize(update.encoder.T, dim=1) @ bench.features_in.T
    assert (encoder_cos.max(dim=1).values > 0.95).all()


def test_theory_recovers_what_no_resampling_cannot(bench):
    results = {}
    for strategy in (None, "theory"):
        sae = planted_topk(bench)
        config = None if strategy is None else ResamplingConfig(strategy=strategy)
        sa.train_on_bench(
            sae, bench, n_steps=300, batch_size=256, lr=1e-3, resampling=config, show_progress=False
        )
        results[strategy] = sa.recovery(sae, bench, mcc=False)
    assert results[None]["M_GT_dec"] < 0.2  # stuck at the spurious minimum
    assert results["theory"]["M_GT_dec"] > 0.8


def test_anthropic_samples_by_squared_loss_and_normalises(bench):
    d = 8
    inputs = torch.eye(d) * torch.arange(1, d + 1)[:, None]
    loss = torch.tensor([0.0, 0, 0, 0, 0, 0, 1.0, 2.0])  # squared: 1 vs 4
    pool = ResamplePool.from_firing(inputs, inputs, loss, torch.zeros(d, 3, dtype=torch.bool))
    generator = torch.Generator().manual_seed(0)
    picks = [
        int(anthropic_resample(torch.tensor([0]), pool, 5.0, 2.0, generator=generator).decoder.argmax())
        for _ in range(2000)
    ]
    share = sum(p == 7 for p in picks) / len(picks)
    assert share == pytest.approx(0.8, abs=0.03)  # 4 / (1 + 4), not 2 / 3 as with the unsquared loss
    update = anthropic_resample(torch.tensor([0, 2]), pool, 5.0, 2.0, generator=generator)
    assert torch.allclose(update.encoder.norm(dim=0), torch.full((2,), 0.2 * 5.0))
    assert torch.allclose(update.decoder.norm(dim=1), torch.full((2,), 2.0))
    assert torch.equal(update.encoder_bias, torch.zeros(2))
    assert set(update.decoder.argmax(dim=1).tolist()) == {6, 7}  # drawn without replacement


def no_firing(n_inputs):
    return torch.zeros(n_inputs, 10, dtype=torch.bool)


def test_bad_pools_warn_and_fall_back():
    inputs = torch.randn(6, 4)
    inputs[2, 0] = float("nan")
    loss = torch.ones(6)
    pool = ResamplePool.from_firing(inputs, inputs, loss, no_firing(6))
    with pytest.warns(UserWarning, match="1 non-finite inputs"):
        update = anthropic_resample(torch.tensor([0, 1]), pool, 1.0, 1.0)
    assert torch.isfinite(update.encoder).all()
    with pytest.warns(UserWarning, match="5 usable inputs for 8 dead latents; resampling 5"):
        update = anthropic_resample(torch.arange(8), pool, 1.0, 1.0)
    assert update.latents.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no input with a non-zero loss"):
        anthropic_resample(
            torch.tensor([0]), ResamplePool.from_firing(inputs, inputs, loss * 0, no_firing(6)), 1, 1
        )
    W_enc, W_dec = torch.randn(4, 10), torch.randn(10, 4)
    with pytest.warns(UserWarning, match="no latent is live"):
        theory_resample(torch.arange(10), pool, W_enc, torch.zeros(10), W_dec)


def test_adam_reset_touches_exactly_the_resampled_latents():
    sae_class, config_class = get_sae_training_class("jumprelu")
    sae = sae_class(config_class(d_in=6, d_sae=12))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        x = torch.randn(16, 6)
        hidden = x @ sae.W_enc + sae.b_enc
        ((hidden.relu() @ sae.W_dec + sae.b_dec - x).pow(2).sum() + sae.threshold.sum()).backward()
        optimizer.step()
    before = {
        name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in sae.named_parameters()
    }
    named = dict(sae.named_parameters())
    latents = torch.tensor([2, 7])
    touched = reset_adam_state(
        optimizer, [(named[n], d) for n, d in LATENT_DIMS.items() if n in named], latents
    )
    assert touched == 8  # exp_avg and exp_avg_sq of W_enc, b_enc, W_dec, threshold
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[latents] = False
    for name, param in sae.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            now, then = optimizer.state[param][key], before[name][key]
            if name not in LATENT_DIMS:
                assert torch.equal(now, then)  # b_dec: not latent-indexed
                continue
            dim = LATENT_DIMS[name]
            assert torch.equal(
                now.index_select(dim, torch.nonzero(untouched).flatten()),
                then.index_select(dim, torch.nonzero(untouched).flatten()),
            )  # bit for bit
            assert not now.index_select(dim, latents).any()


def test_adam_reset_of_one_layer_touches_only_that_layers_slice():
    W_enc = torch.nn.Parameter(torch.randn(3, 4, 6))  # [n_layers, d_in, d_sae], as a CLT's
    b_enc = torch.nn.Parameter(torch.randn(3, 6))
    optimizer = torch.optim.Adam([W_enc, b_enc], lr=1e-2, amsgrad=True)
    for _ in range(2):
        optimizer.zero_grad()
        (W_enc.pow(2).sum() + b_enc.pow(3).sum()).backward()
        optimizer.step()
    before = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in (W_enc, b_enc)}
    latents = torch.tensor([1, 4])
    touched = reset_adam_state(optimizer, [(W_enc, 1), (b_enc, 0)], latents, layer=2)
    assert touched == 6  # exp_avg, exp_avg_sq and max_exp_avg_sq of both
    for param, dim in ((W_enc, 2), (b_enc, 1)):  # the latent dimension of the whole parameter
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            now, then = optimizer.state[param][key], before[id(param)][key]
            expected = then.clone()
            expected[2].index_fill_(dim - 1, latents, 0.0)
            assert torch.equal(now, expected)  # layer 2's latents 1 and 4 zeroed, all else bit for bit
            assert then[2].index_select(dim - 1, latents).any()


@pytest.mark.parametrize(
    "architecture, kind, extra",
    [
        ("standard", "sae", {"l1_coefficient": 3.0}),
        ("jumprelu", "sae", {}),
        ("batchtopk", "sae", {"k": 2}),
        ("matryoshka_batchtopk", "sae", {"k": 2, "matryoshka_widths": [32, 96]}),
        ("anchored_topk", "sae", {"k": 2}),
        ("topk_transcoder", "transcoder", {"k": 2, "d_out": 24}),
        ("jumprelu_crosscoder", "crosscoder", {"n_sources": 2}),
    ],
)
@pytest.mark.parametrize("strategy", ["anthropic", "theory"])
def test_every_architecture_and_kind_resamples_through_train_on_bench(architecture, kind, extra, strategy):
    d_in = 32
    bench = sa.LinearRepresentationBench(
        kind=kind,
        n_features=48,
        d_in=d_in // (2 if kind == "crosscoder" else 1),
        d_out=extra.get("d_out"),
        sparsity=0.95,
        max_interference=0.4,
        seed=0,
    )
    sae_class, config_class = get_sae_training_class(architecture)
    torch.manual_seed(0)
    sae = sae_class(config_class(d_in=d_in, d_sae=96, **extra))
    with torch.no_grad():
        sae.b_enc[48:] = -100.0  # half the latents start dead
    config = ResamplingConfig(strategy=strategy, every_n_steps=20, max_events=2, pool_size=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sa.train_on_bench(
            sae, bench, n_steps=80, batch_size=128, lr=3e-3, resampling=config, show_progress=False
        )
    events = sae.cfg.metadata.resampling["events"]
    assert [e["resample/step"] for e in events] == [20.0, 40.0]
    assert events[0]["resample/dead_before"] >= 48 and events[0]["resample/latents"] >= 48
    assert (sae.b_enc[48:] > -100).all()  # every planted-dead latent was rewritten
    assert all(torch.isfinite(p).all() for p in sae.parameters())


def test_dead_latents_by_tokens(bench):
    sae = planted_topk(bench)
    config = ResamplingConfig(strategy="anthropic", every_n_steps=10, max_events=1, dead_tokens=10 * 128)
    sa.train_on_bench(sae, bench, n_steps=30, batch_size=128, lr=1e-3, resampling=config, show_progress=False)
    assert sae.cfg.metadata.resampling["events"][0]["resample/dead_before"] == 32


def resampling_trainer(bench, sae, total_steps, resampling):
    """A ``ResamplingSAETrainer`` at a constant lr 1e-3 over batches of 64 from ``bench`` (stepped by hand)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer

    config = SAETrainerConfig(
        total_training_samples=total_steps * 64,
        train_batch_size_samples=64,
        lr=1e-3,
        lr_end=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return ResamplingSAETrainer(config, sae, bench.stream(64), resampling=resampling)


def test_learning_rate_rewarms_after_an_event(bench):
    resampling = ResamplingConfig(strategy="anthropic", every_n_steps=10, max_events=1, rewarm_steps=4)
    trainer = resampling_trainer(bench, planted_topk(bench), 40, resampling)
    lrs = []
    for _ in range(16):
        trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert len(trainer.resample_log) == 1
    assert lrs[:9] == pytest.approx([1e-3] * 9)
    assert lrs[9:14] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])  # ramps back over 4 steps


def test_anchored_latents_are_never_resampled_or_split():
    bench = sa.LinearRepresentationBench(n_features=48, d_in=32, sparsity=0.95, max_interference=0.4, seed=0)
    anchors = bench.anchors(k=8)
    torch.manual_seed(0)
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=32, d_sae=96, k=4))
    sae.set_anchors(anchors)
    with torch.no_grad():
        sae.b_enc[:4] = -100.0  # dead anchored latents stay as they are
        sae.b_enc[48:] = -100.0
    config = ResamplingConfig(strategy="theory", every_n_steps=20, max_events=1, pool_size=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sa.train_on_bench(
            sae, bench, n_steps=40, batch_size=128, lr=3e-3, resampling=config, show_progress=False
        )
    event = sae.cfg.metadata.resampling["events"][0]
    assert event["resample/latents"] >= 40
    assert (sae.b_enc[:4] < -99).all()  # not rewritten (Adam moved them a little at most)
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[:8].detach(), anchors.directions_out, dim=1)
    assert cos.min() > 0.9


def test_an_event_with_nothing_to_resample_skips_the_pool_pass(bench, monkeypatch):
    from sdl_anchor.integrations import resampling_trainer as trainer_module
    from sdl_anchor.integrations.resampling_trainer import pool_loss

    sae = planted_topk(bench)
    trainer = resampling_trainer(bench, sae, 20, ResamplingConfig(strategy="theory"))
    for _ in range(3):
        trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1
    trainer.n_forward_passes_since_fired.zero_()  # every latent fired lately: none is dead

    def no_pool_pass(*args, **kwargs):
        raise AssertionError("an event with no dead latent ran the pool pass")

    monkeypatch.setattr(trainer_module, "pool_statistics", no_pool_pass)
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    record = trainer.resample(3)
    x_in, target = trainer.pool.tensors()
    assert record["resample/dead_before"] == 0 and record["resample/latents"] == 0
    assert record["resample/loss_before"] == pytest.approx(pool_loss(sae, x_in, target))
    assert record["resample/loss_after"] == record["resample/loss_before"]
    assert all(torch.equal(p, before[name]) for name, p in sae.named_parameters())
