"""Numbers that came out silently wrong before, each pinned: every coder kind runs SAELens's own step, the
spliced evaluator scales like SAELens's evals, scores leave anchored features out, anchors are directions,
non-finite weights are refused, resampling keeps a live split latent's threshold, and bad bench or anchor
requests are refused or warned about up front."""

import re
from pathlib import Path

import pytest
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

import sdl_anchor as sa
from sdl_anchor.anchoring.loss import anchor_loss
from sdl_anchor.integrations.training import LRBRecoveryEvaluator

D, D_SAE, BATCH = 12, 48, 40
ACTIVATION_FIELDS = {"topk": {"k": 3}, "batchtopk": {"k": 3}, "standard": {}, "jumprelu": {}}


def step(sae, x, target=None, dead=None):
    sae.zero_grad(set_to_none=True)
    if target is not None:
        sae.set_training_target(target)
    coefficients = {name: getattr(c, "value", c) for name, c in sae.get_coefficients().items()}
    output = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=0,
                       is_logging_step=False)
    )  # fmt: skip
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("activation", ["standard", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("sparse", [False, True])
def test_a_transcoder_on_its_own_input_is_saelens_s_sae_step_for_step(activation, sparse):
    """Target = input, no b_dec on the input: the transcoder's loss terms, gradients and threshold updates are
    SAELens's own SAE's (its JumpReLU clamp and BatchTopK threshold update included)."""
    if sparse and activation not in ("topk", "batchtopk"):
        pytest.skip("the sparse-backward step is the TopK family's")
    fields = dict(ACTIVATION_FIELDS[activation])
    if activation in ("topk", "batchtopk"):
        fields["sparse_backward"] = sparse
    tc_class, tc_config = get_sae_training_class(f"{activation}_transcoder")
    sae_class, sae_config = get_sae_training_class(activation)
    torch.manual_seed(0)
    transcoder = tc_class(tc_config(d_in=D, d_out=D, d_sae=D_SAE, dtype="float64", **fields))
    fields.pop("sparse_backward", None)
    saelens = sae_class(
        sae_config(d_in=D, d_sae=D_SAE, dtype="float64", apply_b_dec_to_input=False, **fields)
    )
    with torch.no_grad():
        transcoder.b_enc.normal_(0, 0.1)
        if activation == "jumprelu":
            transcoder.threshold.fill_(
                -0.5
            )  # SAELens's JumpReLU projects a negative threshold to 0 each step
    saelens.load_state_dict(transcoder.state_dict())
    x = torch.randn(BATCH, D, dtype=torch.float64)
    dead = torch.rand(D_SAE) < 0.5
    ours, our_grads = step(transcoder, x, target=x, dead=dead)
    theirs, their_grads = step(saelens, x, dead=dead)
    assert set(ours.losses) == set(theirs.losses)
    for name in theirs.losses:
        torch.testing.assert_close(ours.losses[name], theirs.losses[name], msg=name)
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], msg=name)
    if activation == "jumprelu":
        assert torch.all(transcoder.threshold == 0) and torch.equal(transcoder.threshold, saelens.threshold)
    if activation == "batchtopk":
        assert transcoder.topk_threshold > 0
        torch.testing.assert_close(transcoder.topk_threshold, saelens.topk_threshold)


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_a_topk_family_crosscoder_is_saelens_s_sae_over_the_concatenation(activation):
    cc_class, cc_config = get_sae_training_class(f"{activation}_crosscoder")
    sae_class, sae_config = get_sae_training_class(activation)
    torch.manual_seed(0)
    crosscoder = cc_class(cc_config(d_in=2 * D, n_sources=2, d_sae=D_SAE, dtype="float64", k=3))
    saelens = sae_class(sae_config(d_in=2 * D, d_sae=D_SAE, dtype="float64", k=3))
    saelens.load_state_dict(crosscoder.state_dict())
    x = torch.randn(BATCH, 2 * D, dtype=torch.float64)
    dead = torch.rand(D_SAE) < 0.5
    ours, our_grads = step(crosscoder, x, dead=dead)
    theirs, their_grads = step(saelens, x, dead=dead)
    assert set(ours.losses) == set(theirs.losses)
    for name in theirs.losses:
        torch.testing.assert_close(ours.losses[name], theirs.losses[name], msg=name)
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], msg=name)


def test_the_spliced_evaluator_scales_in_and_out_like_saelens_s_evals():
    """Mid-training (the scaling not folded yet) with the trainer's scaler = after folding without one."""
    from sae_lens.training.activation_scaler import ActivationScaler

    from sdl_anchor.integrations.splice import evaluate_spliced
    from sdl_anchor.testing.toy_lm import toy_language_model

    corpus = ["a b c d e f g h i j k l m n o p"] * 4
    model = toy_language_model(corpus, d_model=16, n_layers=1, n_ctx=16)
    tokens = model.to_tokens(corpus[0])[:, :12]
    torch.manual_seed(0)
    sae = sa.AnchoredTopKTrainingSAE(
        sa.AnchoredTopKTrainingSAEConfig(
            d_in=16, d_sae=64, k=4, normalize_activations="expected_average_only_in"
        )
    )
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    scaler = ActivationScaler()
    scaler.scaling_factor = 2.5
    during = evaluate_spliced(sae, model, tokens, activation_scaler=scaler)
    sae.fold_activation_norm_scaling_factor(2.5)
    after = evaluate_spliced(sae, model, tokens)
    for group, values in after.items():
        for name, value in values.items():
            assert during[group][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (group, name)
    assert after["sparsity"]["l0"] > 0


def test_lrb_scores_in_training_leave_the_anchored_features_out():
    bench = sa.LinearRepresentationBench(n_features=40, d_in=24, sparsity=0.9, max_interference=0.45, seed=0)
    anchors = bench.anchors(k=8, seed=0)
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=24, d_sae=64, k=3))
    sae.set_anchors(anchors)
    scores = LRBRecoveryEvaluator(bench)(sae, None, None)
    assert scores["lrb/n_scored"] == 32
    expected = sa.recovery(sae, bench, exclude=anchors.indices, mcc=False)
    assert scores["lrb/M_IP"] == pytest.approx(expected["M_IP"])
    assert sa.recovery(sae, bench, mcc=False)["M_GT"] > scores["lrb/M_GT"]  # anchored features sit at init
    sa.train_on_bench(sae, bench, n_steps=4, batch_size=64, show_progress=False, recovery_every=2)
    assert all(point["n_scored"] == 32 for point in sae.cfg.metadata.recovery_curve)


def test_a_plain_lrb_row_s_curve_and_w_and_b_scores_leave_the_anchor_features_out(monkeypatch):
    """Issue 35: a plain row has no anchors of its own, yet the table scores it without the bench's anchor
    features; its recovery curve and its ``lrb/*`` W&B scores must leave out the same features."""
    from dataclasses import replace

    import sdl_anchor.integrations.training as training
    from sdl_anchor.eval.lrb_presets import PRESETS
    from sdl_anchor.eval.lrb_table import run_lrb_bench

    evaluators = []

    class Recording(LRBRecoveryEvaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            evaluators.append(self)

    monkeypatch.setattr(training, "LRBRecoveryEvaluator", Recording)
    preset = replace(PRESETS["smoke"], n_steps=4, recovery_points=2)
    results = run_lrb_bench(preset, variants=("plain",), resampling=("none",), progress=False)
    (row,) = results["rows"]
    n_scored = preset.n_features - preset.n_anchors
    assert row["n_scored"] == n_scored
    assert [point["n_scored"] for point in row["recovery_curve"]] == [n_scored] * 3
    (evaluator,) = evaluators
    plain = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=preset.d_in, d_sae=8, k=2))
    assert evaluator(plain, None, None)["lrb/n_scored"] == n_scored
    with pytest.raises(ValueError, match=r"exclude names feature 48, outside 0..47"):
        sa.train_on_bench(plain, evaluator.bench, n_steps=1, exclude=[48])


def test_anchors_are_directions_whatever_their_scale():
    torch.manual_seed(0)
    directions = torch.randn(5, D)
    unit, scaled = sa.AnchorSet(directions), sa.AnchorSet(5 * directions)
    torch.testing.assert_close(unit.directions_in.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(scaled.directions_in, unit.directions_in)
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=D, d_sae=D_SAE, k=3))
    sae.set_anchors(scaled)
    loss = anchor_loss("mse", sae.W_enc, sae.W_dec, sae.anchor_directions_in, sae.anchor_directions_out)
    assert (
        float(loss.detach()) < 2 * 5
    )  # unit anchors against SAELens's 0.1-norm columns, not 5-norm ones (~3,470)
    cos = torch.nn.functional.cosine_similarity(sae.W_enc[:, :5].T, unit.directions_in, dim=1)
    torch.testing.assert_close(cos, torch.ones(5))


def test_recovery_refuses_non_finite_weights():
    bench = sa.LinearRepresentationBench(n_features=40, d_in=24, sparsity=0.9, max_interference=0.45, seed=0)
    sae = sa.AnchoredTopKTrainingSAE(sa.AnchoredTopKTrainingSAEConfig(d_in=24, d_sae=64, k=3))
    with torch.no_grad():
        sae.W_enc[0, 3] = float("nan")
    with pytest.raises(ValueError, match="W_enc holds 1 NaN or infinite values"):
        sa.recovery(sae, bench)


def test_theory_resampling_keeps_the_threshold_of_a_split_latent_that_stays_live():
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
    from sdl_anchor.resampling.strategies import ResampleUpdate

    sae = sa.AnchoredJumpReLUTrainingSAE(sa.AnchoredJumpReLUTrainingSAEConfig(d_in=D, d_sae=D_SAE))
    with torch.no_grad():
        sae.threshold.fill_(0.7)
    config = SAETrainerConfig(total_training_samples=64 * 8, train_batch_size_samples=64, lr_end=1e-4,
                              device="cpu", logger=LoggingConfig(log_to_wandb=False))  # fmt: skip
    trainer = ResamplingSAETrainer(cfg=config, sae=sae, data_provider=iter(()),
                                   resampling=sa.ResamplingConfig(every_n_steps=2))  # fmt: skip
    latents = torch.tensor([3, 10, 11])
    update = ResampleUpdate(
        latents, torch.randn(D, 3), torch.zeros(3), torch.randn(3, D),
        kept_live=torch.tensor([True, False, False]),
    )  # fmt: skip
    trainer._apply(update)
    threshold = sae.threshold.detach()
    assert float(threshold[3]) == pytest.approx(0.7)  # the split latent keeps its tuned threshold
    init = float(sae.cfg.jumprelu_init_threshold)
    assert float(threshold[10]) == pytest.approx(init) and float(threshold[11]) == pytest.approx(init)


def test_more_pairwise_obtuse_features_than_d_plus_one_are_refused_up_front():
    with pytest.raises(ValueError, match=r"at most d \+ 1 = 7 unit vectors"):
        sa.LinearRepresentationBench(n_features=10, d_in=6, max_interference=-0.05, interference="negative")
    sa.LinearRepresentationBench(n_features=7, d_in=6, max_interference=-0.1, interference="negative")


def test_two_classes_give_two_distinct_class_mean_anchors_by_default(recwarn):
    """Issue 35: two centred class means are exactly antipodal; by default they were centred (with a warning).
    Now two classes keep their raw means, centring them on request is refused, and three or more are centred."""
    torch.manual_seed(0)
    acts = torch.randn(60, D) + torch.linspace(0, 1, D)
    two = torch.arange(60) % 2
    default = sa.class_mean_anchors(acts, two)
    assert float(default.directions_in[0] @ default.directions_in[1]) > -0.99
    torch.testing.assert_close(
        default.directions_in, sa.class_mean_anchors(acts, two, center=False).directions_in
    )
    assert not recwarn.list
    with pytest.raises(ValueError, match="exactly antipodal.*pass center=False"):
        sa.class_mean_anchors(acts, two, center=True)
    three = torch.arange(60) % 3
    torch.testing.assert_close(
        sa.class_mean_anchors(acts, three).directions_in,
        sa.class_mean_anchors(acts, three, center=True).directions_in,
    )


def test_no_torch_load_without_weights_only_anywhere():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in root.rglob("*.py"):
        if any(part in {"build", ".venv", "site-packages"} for part in path.parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if (
                re.search(r"torch\.load\(", line)
                and "weights_only=True" not in line
                and "re.search" not in line
            ):
                offenders.append(f"{path.relative_to(root)}:{number}")
    assert offenders == []
