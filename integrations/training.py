"""Train SAELens SAEs and our transcoders on LRB data with ``PairedSAETrainer`` (SAELens's
``SAETrainer``, extended so a batch can carry a target).

The bench's stream (or a finite dataset's loader) is the trainer's ``DataProvider``: ``x`` batches for
an SAE or crosscoder bench (a crosscoder's sources side by side), ``(x_in, x_out)`` pairs for a
transcoder bench. The trainer keeps SAELens's schedulers,
coefficient warm-ups, dead-latent bookkeeping and W&B logging; its evaluator adds the paper's recovery
scores (section 5: ``lrb/M_GT``, ``lrb/M_IP`` and their decoder-side ``lrb/M_GT_dec``, ``lrb/M_IP_dec``)
at SAELens's eval steps, so recovery over training shows up in W&B next to the losses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import wandb
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE

from sdl_anchor.feature_indices import check_feature_indices
from sdl_anchor.integrations.coder_hooks import coder_kind
from sdl_anchor.integrations.compat import quiet_trainer
from sdl_anchor.integrations.cross_layer_transcoder import CLTConfigFields
from sdl_anchor.integrations.l0_control import COEFFICIENT_NAMES, L0Controller, check_l0_target
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
from sdl_anchor.integrations.sparse_step import record_kernels
from sdl_anchor.integrations.wandb_env import wandb_env_settings
from sdl_anchor.lrb.bench import LinearRepresentationBench
from sdl_anchor.lrb.data import LRBDataset
from sdl_anchor.metrics import check_finite_weights, live_recovery, recovery
from sdl_anchor.resampling import ResamplingConfig


@dataclasses.dataclass
class LRBRecoveryEvaluator:
    """SAELens trainer evaluator: recovery of the bench's ground-truth features (``lrb/*`` keys)."""

    bench: LinearRepresentationBench
    tau: float = 0.95
    exclude: torch.Tensor | None = None  # the features left out; None: the coder's own anchored features

    def __call__(self, sae: Any, data_provider: Any, activation_scaler: Any) -> dict[str, float]:
        exclude = self.exclude if self.exclude is not None else anchored_features(sae)
        scores = recovery(sae, self.bench, tau=self.tau, exclude=exclude, mcc=False)
        return {f"lrb/{name}": value for name, value in scores.items()}


def anchored_features(sae: Any) -> torch.Tensor | None:
    """The features an anchored coder's anchors are (left out of its scores), or None."""
    return getattr(sae, "anchor_indices", None)


def _recovery_point(
    sae: Any, bench: LinearRepresentationBench, step: int, exclude: torch.Tensor | None
) -> dict[str, float]:
    """One point of a recovery curve: the step, the recovery scores (no MCC) and the live-latent ones
    (latents firing on 4,096 fresh samples), the ``exclude`` features left out."""
    return {
        "step": float(step),
        **recovery(sae, bench, mcc=False, exclude=exclude),
        **live_recovery(sae, bench, n_samples=4096, exclude=exclude),
    }


def _recording_recovery(
    batches: Iterator[Any],
    sae: Any,
    bench: LinearRepresentationBench,
    every: int,
    curve: list[dict[str, float]],
    exclude: torch.Tensor | None,
) -> Iterator[Any]:
    """Yield ``batches`` unchanged; before every ``every``-th batch, append the recovery scores (``exclude``
    left out) to ``curve``."""
    for step, batch in enumerate(batches):
        if step % every == 0:
            curve.append(_recovery_point(sae, bench, step, exclude))
        yield batch


def _excluded_features(
    sae: Any, bench: LinearRepresentationBench, exclude: torch.Tensor | list[int] | None
) -> torch.Tensor | None:
    """The features ``train_on_bench`` leaves out of its scores: ``exclude`` (checked against the bench's
    features) or, when None, the coder's own anchored features."""
    if exclude is None:
        return anchored_features(sae)
    return check_feature_indices(exclude, "exclude", bench.n_features).flatten()


def check_coder_kind(sae: TrainingSAE[Any], bench: LinearRepresentationBench) -> None:
    """Raise ValueError unless ``sae`` is the kind of coder ``bench`` generates data for."""
    kind = "clt" if isinstance(sae.cfg, CLTConfigFields) else coder_kind(sae)
    if kind != bench.kind:
        need = {
            "sae": "an SAE (e.g. topk or anchored_topk)",
            "transcoder": "a transcoder (e.g. topk_transcoder)",
            "crosscoder": "a crosscoder (e.g. topk_crosscoder)",
            "clt": "a cross-layer transcoder (e.g. topk_clt)",
        }[bench.kind]
        raise ValueError(f"a {bench.kind!r} bench needs {need}; got {type(sae).__name__}, a {kind}")
    if kind == "crosscoder" and sae.cfg.n_sources != bench.config.n_sources:
        raise ValueError(
            f"the crosscoder has n_sources={sae.cfg.n_sources} but the bench has {bench.config.n_sources} sources"
        )
    if kind == "clt" and sae.cfg.n_layers != bench.n_layers:
        raise ValueError(f"the CLT has n_layers={sae.cfg.n_layers} but the bench has {bench.n_layers} layers")


def _attach_l0_controller(trainer: PairedSAETrainer, l0_target: float) -> L0Controller:
    """An L0 controller on the SAE's sparsity coefficient (``l1`` for ReLU, ``l0`` for JumpReLU), attached to
    ``trainer``; a coder without one (TopK family: its L0 is its k) is refused."""
    names = [name for name in COEFFICIENT_NAMES.values() if name in trainer.coefficient_schedulers]
    if not names:
        raise ValueError(
            f"l0_target steers a ReLU (l1) or JumpReLU (l0) SAE's sparsity coefficient; "
            f"{type(trainer.sae).__name__} has none (a TopK-family coder keeps k latents per input: set its k)"
        )
    controller = L0Controller(target=l0_target, coefficient=names[0])
    trainer.step_callbacks.append(controller)
    return controller


def train_on_bench(
    sae: TrainingSAE[Any],
    bench: LinearRepresentationBench,
    n_steps: int = 5000,
    batch_size: int = 4096,
    lr: float = 3e-4,
    *,
    dataset: LRBDataset | None = None,
    lr_warm_up_steps: int = 0,
    lr_decay_steps: int | None = None,
    dead_feature_window: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    logger: LoggingConfig | None = None,
    autocast: bool = False,
    show_progress: bool = True,
    resampling: ResamplingConfig | None = None,
    recovery_every: int | None = None,
    exclude: torch.Tensor | list[int] | None = None,
    l0_target: float | None = None,
) -> TrainingSAE[Any]:
    """Train ``sae`` for ``n_steps`` batches of LRB data and return it.

    Data comes from ``dataset`` (shuffled epochs, the paper's finite-N setting) or, when it is
    None, from a fresh stream seeded with ``seed``. ``lr_decay_steps`` defaults to the last 20% of
    training (SAELens's linear decay to ``lr / 10``). With ``resampling`` the trainer is
    :class:`~sdl_anchor.integrations.resampling_trainer.ResamplingSAETrainer`; its schedule scales with
    ``n_steps``, and the events are recorded in ``sae.cfg.metadata.resampling``. With ``recovery_every``
    the bench's recovery scores (:func:`~sdl_anchor.metrics.recovery` without MCC, and
    :func:`~sdl_anchor.metrics.live_recovery`) are measured before every that-many steps and at the end,
    and kept in ``sae.cfg.metadata.recovery_curve`` as ``[{"step": ..., "M_GT": ..., "M_GT_live": ...,
    "n_live": ..., ...}, ...]``. The curve and the evaluator's ``lrb/*`` scores leave out the ``exclude``
    features (default: the coder's own anchored features); pass the anchors' indices to score a plain coder
    on the same features as an anchored one beside it. With ``l0_target`` (ReLU and JumpReLU SAEs, whose
    sparsity is a coefficient, not a k) an :class:`~sdl_anchor.integrations.l0_control.L0Controller` steers
    that coefficient toward ``l0_target`` active latents per input, and ``sae.cfg.metadata.l0_control``
    records the target, the coefficient's start and end and the last step's batch L0.
    """
    if not hasattr(sae, "cfg") or not hasattr(sae, "training_forward_pass"):
        raise ValueError("sae must be a SAELens TrainingSAE (e.g. TopKTrainingSAE(cfg))")
    check_coder_kind(sae, bench)
    paired = bench.kind in ("transcoder", "clt")
    layers = bench.n_layers  # a CLT's widths are per layer
    if sae.cfg.d_in * layers != bench.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but the bench's inputs have width {bench.d_in}")
    if paired and sae.cfg.d_out * layers != bench.d_out:
        raise ValueError(
            f"the transcoder has d_out={sae.cfg.d_out} but the bench's targets have width {bench.d_out}"
        )
    if recovery_every is not None and (
        isinstance(recovery_every, bool) or not isinstance(recovery_every, int) or recovery_every < 1
    ):
        raise ValueError(f"recovery_every must be a positive integer or None, got {recovery_every!r}")
    for name, value in (("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if l0_target is not None:
        l0_target = check_l0_target(l0_target)
    if dataset is not None and dataset.bench is not bench:
        raise ValueError("dataset was drawn from a different bench")
    device = str(device if device is not None else bench.device)
    if lr_decay_steps is None:
        lr_decay_steps = n_steps // 5
    provider = (
        bench.stream(batch_size, seed=seed, with_targets=paired)
        if dataset is None
        else dataset.loader(batch_size, shuffle=True, seed=seed, with_targets=paired)
    )
    scored_without = _excluded_features(sae, bench, exclude)
    curve: list[dict[str, float]] = []
    if recovery_every is not None:
        provider = _recording_recovery(provider, sae, bench, recovery_every, curve, scored_without)
    trainer_config = SAETrainerConfig(
        total_training_samples=n_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_warm_up_steps=lr_warm_up_steps,
        lr_decay_steps=lr_decay_steps,
        device=device,
        autocast=autocast,
        dead_feature_window=dead_feature_window,
        feature_sampling_window=max(1, min(2000, n_steps)),
        logger=logger if logger is not None else LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
    )
    sae.to(device)
    evaluator = LRBRecoveryEvaluator(bench, exclude=scored_without)
    if bench.kind == "clt":
        from sdl_anchor.integrations.clt_resampling import CLTResamplingTrainer
        from sdl_anchor.integrations.clt_training import CLTTrainer

        plain_class, resampling_class = CLTTrainer, CLTResamplingTrainer
    else:
        plain_class, resampling_class = PairedSAETrainer, ResamplingSAETrainer
    if resampling is None:
        trainer: PairedSAETrainer = plain_class(
            cfg=trainer_config, sae=sae, data_provider=provider, evaluator=evaluator
        )
    else:
        trainer = resampling_class(
            cfg=trainer_config, sae=sae, data_provider=provider, evaluator=evaluator, resampling=resampling
        )
    controller = None if l0_target is None else _attach_l0_controller(trainer, l0_target)
    own_run = trainer_config.logger.log_to_wandb and wandb.run is None
    if own_run:
        wandb.init(
            project=trainer_config.logger.wandb_project,
            entity=trainer_config.logger.wandb_entity,
            name=trainer_config.logger.run_name,
            id=trainer_config.logger.wandb_id,
            config={"sae": sae.cfg.to_dict(), "bench": bench.config.to_json(), "n_steps": n_steps},
            **wandb_env_settings(),
        )
    try:
        if show_progress:
            trained = trainer.fit()
        else:
            with quiet_trainer():
                trained = trainer.fit()
    finally:
        if own_run:
            wandb.finish()
    check_finite_weights(trained, "scores")  # the loss checks miss a last update that diverged
    if recovery_every is not None:
        curve.append(_recovery_point(trained, bench, n_steps, scored_without))
        trained.cfg.metadata.recovery_curve = curve
    if controller is not None:
        trained.cfg.metadata.l0_control = {
            "target": l0_target,
            "coefficient": controller.coefficient,
            "initial_value": controller.initial,
            "final_value": controller.last[2],
            "final_batch_l0": controller.last[1],
        }
    if isinstance(trainer, ResamplingSAETrainer):
        trained.cfg.metadata.resampling = {
            "strategy": trainer.resampling.strategy,
            "events": trainer.resample_log,
        }
    record_kernels(trained, batch_size)
    return trained
