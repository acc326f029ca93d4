"""``PairedSAETrainer``: SAELens's ``SAETrainer``, extended so that a batch can carry a target.

A data provider may yield ``x`` (SAEs) or ``(x_in, x_out)`` pairs (transcoders). For a pair the trainer
hands ``x_out`` to the coder (``set_training_target``) and runs SAELens's own step on ``x_in``; logging,
schedulers, coefficient warm-ups, dead-latent counts, checkpoints and W&B are SAELens's, unchanged.
After each step an ``aligned_encoder`` coder re-ties its encoder to its decoder
(:meth:`~sdl_anchor.integrations.anchor_mixin.AnchoredMixin.align_encoder_`), and each of
``step_callbacks`` is called with the trainer and the step's output (e.g. the L0 controller of
:mod:`sdl_anchor.integrations.l0_control`). Two additions: SAELens's
Adam runs as torch's fused Adam (the same update, in one kernel), and a NaN or
infinite loss stops training with :class:`NonFiniteLossError`, naming the step and the last checkpoint
written before it (checked after every step on the CPU; on a GPU a device-side flag is read every
``FINITE_CHECK_EVERY`` steps, before every checkpoint and at the end, so the hot loop stays free of host
round trips; no checkpoint is ever written after the loss went bad). A stop requested by a signal
(:meth:`PairedSAETrainer.request_stop`, the runner's SIGINT / SIGTERM handler) raises :class:`TrainingInterrupted`
at the next step boundary, where the weights, optimizer, scheduler, dead-latent and resampler state all
belong to one step, so the checkpoint written then resumes exactly. Checkpoints also hold the coder's
non-weight training state (:data:`CODER_STATE_FILE`: the mean firing inputs of
``self_anchor_target="inputs"``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from typing_extensions import override

from sdl_anchor.io import read_safetensors, write_safetensors

FUSED_ADAM_DEVICES = ("cpu", "cuda")
FINITE_CHECK_EVERY = 50  # steps between reads of the non-finite-loss flag on a GPU
CODER_STATE_FILE = "coder_training_state.safetensors"


def check_training_target(target: torch.Tensor, width: int, expected: str) -> torch.Tensor:
    """``target`` if it is ``[batch, width]`` (a coder's ``set_training_target`` check); else the error
    ``"<expected>, got <shape>"``."""
    if target.ndim != 2 or target.shape[-1] != width:
        raise ValueError(f"{expected}, got {tuple(target.shape)}")
    return target


def take_training_target(coder: Any, step_input: Any, missing: str) -> torch.Tensor:
    """The target ``coder.set_training_target`` stored for this step, cleared (each step needs its own), its
    batch checked against the step's input; ``missing`` is the error when none was set."""
    target = coder._training_target
    if target is None:
        raise ValueError(missing)
    coder._training_target = None
    if target.shape[0] != step_input.sae_in.shape[0]:
        raise ValueError(f"target batch {target.shape[0]} != input batch {step_input.sae_in.shape[0]}")
    return target


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss (the message names the step and the last checkpoint)."""


class TrainingInterrupted(Exception):
    """A signal asked training to stop; raised at a step boundary. ``checkpoint`` is where the runner saved
    the run (None where it could not)."""

    def __init__(self, signal_number: int, steps_done: int, total_steps: int) -> None:
        super().__init__(f"interrupted by signal {signal_number} after step {steps_done} of {total_steps}")
        self.signal_number = signal_number
        self.steps_done = steps_done
        self.total_steps = total_steps
        self.checkpoint: Path | None = None


def use_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Switch SAELens's ``Adam`` to torch's fused implementation where every parameter allows it (floating
    point, on a CPU or CUDA device): the same update rule, in one kernel instead of a Python loop over
    parameters and several passes over each (about 8x faster on 2 CPU cores at d_sae 16,384). Returns
    whether it switched."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(optimizer, torch.optim.Adam) or not all(
        p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params
    ):
        return False
    if len({p.device for p in params}) > 1 or optimizer.state:  # a fresh optimizer on one device only
        return False
    optimizer.defaults.update(fused=True, foreach=False)
    for group in optimizer.param_groups:
        group.update(fused=True, foreach=False)
    return True


class PairedSAETrainer(SAETrainer[Any, Any]):
    """``SAETrainer`` whose ``step`` also accepts ``(x_in, x_out)`` batches, with torch's fused Adam."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        use_fused_adam(self.optimizer)
        self._first_nonfinite_step = torch.zeros((), dtype=torch.long, device=self.cfg.device)
        self.last_checkpoint: Path | None = None
        self.step_callbacks: list[Callable[[PairedSAETrainer, TrainStepOutput], None]] = []
        self.stop_signal: int | None = None

    def request_stop(self, signal_number: int) -> None:
        """Stop at the next step boundary (called from a signal handler: it only records the request)."""
        if self.stop_signal is None:
            self.stop_signal = signal_number

    def stop_agreed(self) -> bool:
        """Whether to stop now (under torchrun, whether any rank was asked to; every rank agrees)."""
        return self.stop_signal is not None

    @override
    def maybe_reset_sparsity(self) -> Any:
        # SAETrainer.fit calls this first in every step: the step before has finished, counters included
        if self.stop_agreed():
            assert self.stop_signal is not None  # stop_agreed records the signal it agrees on
            raise TrainingInterrupted(self.stop_signal, self.n_training_steps, self.cfg.total_training_steps)
        return super().maybe_reset_sparsity()

    def step(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> TrainStepOutput:
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"a paired batch is (x_in, x_out); got {len(batch)} tensors")
            x_in, target = batch
            if not hasattr(self.sae, "set_training_target"):
                raise ValueError(
                    f"{type(self.sae).__name__} reconstructs its input; (x_in, x_out) batches need a "
                    "transcoder (e.g. topk_transcoder)"
                )
            self.sae.set_training_target(target.to(self.sae.device))
            batch = x_in
        self.before_step()
        output = super().step(batch)
        self.after_step(output)
        if getattr(self.sae.cfg, "aligned_encoder", False):
            self.sae.align_encoder_()  # the aligned-encoder baseline's hard tie, after the optimizer's step
        for callback in self.step_callbacks:
            callback(self, output)
        return output

    def before_step(self) -> None:
        """Called before each step (the distributed trainer records its firing counts here)."""

    def after_step(self, output: TrainStepOutput) -> None:
        """Called after each step, before any subclass looks at ``output`` (the distributed trainer
        all-reduces the step's firing statistics here): notes a non-finite loss."""
        self.note_nonfinite(~torch.isfinite(output.loss.detach()))

    def note_nonfinite(self, bad: torch.Tensor) -> None:
        """Record this step as the first with a bad loss if ``bad`` (a device bool), and check when due."""
        step = self.n_training_steps + 1
        first = self._first_nonfinite_step
        self._first_nonfinite_step = torch.where(bad & (first == 0), step, first)
        if self._first_nonfinite_step.device.type != "cuda" or step % FINITE_CHECK_EVERY == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if any step so far had a NaN or infinite loss."""
        first = int(self._first_nonfinite_step)
        if first:
            kept = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint
                else ("no checkpoint was written before it")
            )
            raise NonFiniteLossError(
                f"training stopped: the loss was NaN or infinite at step {first} (of "
                f"{self.cfg.total_training_steps}); {kept}. Lower the learning rate, or check the inputs for "
                "NaN or infinite values"
            )

    @override
    def save_checkpoint(self, checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
        self.check_finite()  # never write weights trained on a bad loss
        super().save_checkpoint(checkpoint_name, *args, **kwargs)
        base = kwargs.get("base_path", args[0] if args else None) or self.cfg.checkpoint_path
        if base is not None:
            self.last_checkpoint = Path(base) / checkpoint_name

    @override
    def _update_pbar(self, step_output: TrainStepOutput, pbar: Any, update_interval: int = 100) -> None:
        """The bar advances every step (SAELens's advances every 100, so a 40-step run on a real model sat at
        0% throughout); the losses in its description still refresh every ``update_interval`` steps, so the
        loop reads no device value more often than SAELens's does."""
        pbar.update(self.cfg.train_batch_size_samples)
        if self.n_training_steps % update_interval == 0:
            losses = " | ".join(
                f"{name}: {float(value.detach() if torch.is_tensor(value) else value):.5f}"
                for name, value in step_output.losses.items()
            )
            pbar.set_description(f"{self.n_training_steps}| {losses}")

    @override
    def save_trainer_state(self, checkpoint_path: Path) -> None:
        """SAELens's trainer state, plus the coder's non-weight training state (:data:`CODER_STATE_FILE`)."""
        super().save_trainer_state(checkpoint_path)
        state = self.sae.training_state() if hasattr(self.sae, "training_state") else {}
        if state:
            write_safetensors(Path(checkpoint_path) / CODER_STATE_FILE, state)

    @override
    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        path = Path(checkpoint_path) / CODER_STATE_FILE
        if path.exists():
            self.sae.load_training_state(read_safetensors(path, "coder training state", self.sae.device))
        elif getattr(self.sae, "anchors_to_firing_inputs", False) and self.n_training_steps > 0:
            raise FileNotFoundError(
                f"{Path(checkpoint_path)} has no {CODER_STATE_FILE}, which a coder with self_anchor_target="
                "'inputs' needs (its mean firing inputs); it was written by another coder, or before sdl-anchor "
                "saved them: resume from a checkpoint of this coder, or train afresh"
            )

    @override
    def fit(self) -> Any:
        sae = super().fit()
        self.check_finite()
        return sae
