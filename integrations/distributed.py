"""Data-parallel training on ``torch.distributed`` (launch with ``torchrun --nproc_per_node N``).

Every rank holds the whole coder and trains it on its own shard of each global batch:

* gradients are averaged by ``DistributedDataParallel`` (SAELens's trainer calls
  ``sae.training_forward_pass``, so that call is routed through a DDP-wrapped module; DDP also broadcasts
  rank 0's weights and buffers, anchors included, at the start);
* the dead-latent statistics (``n_forward_passes_since_fired``) and firing counts (``act_freq_scores``)
  are all-reduced after every step (one collective of ``2 x d_sae``), so every rank sees the global ones;
* a resampling event gathers the ranks' pools on rank 0, which decides and applies the update and
  broadcasts it; every rank applies the same update and the same Adam reset;
* only rank 0 logs to W&B, checkpoints and writes files.

With the global batch ``B`` split as ``B / world_size`` rows per rank, the result matches a single process
training on batches of ``B`` (the same data, the same seed) up to float reduction order: the loss is a
mean over rows, DDP averages the ranks' gradients, and the trainer counts samples and steps globally.
BatchTopK's batch-level selection (and its threshold) sees the rank's rows only, as BatchNorm does under
DDP without synchronisation; the ranks keep rank 0's threshold (DDP broadcasts buffers before each forward,
and ``fit`` once more at the end).

Cross-layer transcoders use the same classes (:class:`~sdl_anchor.integrations.clt_training.
DistributedCLTTrainer`, :class:`~sdl_anchor.integrations.clt_resampling.DistributedCLTResamplingTrainer`):
their statistics cover all ``n_layers * d_sae`` latents, and a resampling event's update is a list of
per-layer updates (``_update_to`` / ``_apply_decided``). A transcoder set drives one of these trainers per
layer in lockstep (:class:`~sdl_anchor.integrations.transcoder_set.DistributedMultiCoderTrainer`), each with
its own DDP wrapper, statistics and events.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

from sdl_anchor.integrations.paired_trainer import FINITE_CHECK_EVERY, PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import InputPool, ResamplingSAETrainer
from sdl_anchor.io import read_json, read_safetensors, write_json, write_safetensors
from sdl_anchor.resampling import ResampleUpdate
from sdl_anchor.sparse_topk import latents_fired


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """``cuda:<local_rank>`` for a CUDA run (one GPU per rank), else ``requested``."""
        return f"cuda:{self.local_rank}" if torch.device(requested).type == "cuda" else requested


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "cpu") -> DistributedContext | None:
    """Join the process group torchrun describes (``nccl`` for CUDA, ``gloo`` otherwise); ``None`` when
    this is a single-process run."""
    if not launched_by_torchrun():
        return None
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return context


def config_hash(config: Any) -> str:
    """A SHA-256 of the config's canonical JSON (``default=str`` for paths, dtypes and the like)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(config: Any, context: DistributedContext) -> None:
    """Raise the same ``ValueError`` on every rank when the ranks' configs differ (one all-gather, so no
    rank is left waiting)."""
    hashes: list[str | None] = [None] * context.world_size
    dist.all_gather_object(hashes, config_hash(config))
    if len(set(hashes)) > 1:
        groups: dict[str, list[int]] = {}
        for rank, value in enumerate(hashes):
            groups.setdefault(str(value), []).append(rank)
        described = "; ".join(f"ranks {ranks}: {value[:12]}" for value, ranks in groups.items())
        raise ValueError(
            f"the ranks were launched with different configs ({described}); every rank must get the same "
            "arguments"
        )


def local_batch_size(global_batch_size: int, world_size: int) -> int:
    """The rows each rank trains on per step; raises (on every rank alike) unless they divide evenly."""
    if global_batch_size % world_size:
        raise ValueError(
            f"the batch of {global_batch_size} does not split over {world_size} ranks; use a batch size "
            f"divisible by {world_size} (e.g. {world_size * max(1, global_batch_size // world_size)})"
        )
    return global_batch_size // world_size


def check_normalization(sae: Any) -> None:
    """Refuse ``covariance_whitening`` (its statistics are not averaged over the ranks)."""
    if sae.cfg.normalize_activations == "covariance_whitening":
        raise ValueError("covariance_whitening is not supported under torchrun; use expected_average_only_in")


def average_scaling_factor(scaler: Any, context: DistributedContext) -> None:
    """Replace the scaler's factor, estimated from this rank's rows, by the ranks' mean (on every rank)."""
    factor = torch.tensor([float(scaler.scaling_factor)], dtype=torch.float64)
    dist.all_reduce(factor)
    scaler.scaling_factor = float(factor) / context.world_size


def broadcast_buffers(sae: torch.nn.Module) -> None:
    """Rank 0's buffers on every rank (e.g. BatchTopK's threshold, updated from each rank's rows)."""
    for buffer in sae.buffers():
        dist.broadcast(buffer, src=0)


class _TrainingForward(torch.nn.Module):
    """The module DDP wraps: its ``forward`` is the coder's ``training_forward_pass``."""

    def __init__(self, sae: torch.nn.Module) -> None:
        super().__init__()
        self.sae = sae
        self._training_forward_pass = sae.training_forward_pass

    def forward(self, step_input: TrainStepInput) -> TrainStepOutput:
        return self._training_forward_pass(step_input)


class DistributedTrainerMixin:
    """Makes a SAELens trainer data-parallel (module docstring). The trainer's ``cfg`` keeps the global
    ``train_batch_size_samples``, so step counts, schedules and sparsity windows are the single-process
    ones; each ``step`` gets this rank's rows."""

    sae: Any
    cfg: Any
    act_freq_scores: torch.Tensor
    n_forward_passes_since_fired: torch.Tensor
    n_training_samples: int

    def __init__(self, *args: Any, context: DistributedContext, **kwargs: Any) -> None:
        self.context = context
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        if context.rank != 0:  # only rank 0 logs and evaluates
            self.cfg = replace(self.cfg, logger=replace(self.cfg.logger, log_to_wandb=False))
            self.evaluator = None
            self.save_checkpoint_fn = None
        self._fired_anywhere: torch.Tensor | None = None
        module = _TrainingForward(self.sae)
        self.ddp = torch.nn.parallel.DistributedDataParallel(module, device_ids=None)
        self.sae.training_forward_pass = self.ddp.__call__  # what SAELens's trainer calls

    def unwrap_sae(self) -> Any:
        """The coder with its own ``training_forward_pass`` back (after training); returns it."""
        self.sae.training_forward_pass = self.ddp.module._training_forward_pass
        return self.sae

    def fit(self) -> Any:
        check_normalization(self.sae)
        if self.sae.cfg.normalize_activations == "expected_average_only_in":
            scaler = self.activation_scaler  # type: ignore[attr-defined]
            if scaler.scaling_factor is None:
                scaler.estimate_scaling_factor(
                    d_in=self.sae.cfg.d_in,
                    data_provider=self.data_provider,  # type: ignore[attr-defined]
                    n_batches_for_norm_estimate=self.cfg.n_batches_for_norm_estimate,
                )
            average_scaling_factor(scaler, self.context)
        sae = super().fit()  # type: ignore[misc]
        broadcast_buffers(self.sae)
        return sae

    def step(self, batch: Any) -> TrainStepOutput:
        rows = (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]
        output = super().step(batch)  # type: ignore[misc]
        self.n_training_samples += rows * (self.context.world_size - 1)  # SAELens counted this rank's
        return output

    def before_step(self) -> None:
        self._frequencies_before = self.act_freq_scores.clone()

    def after_step(self, output: TrainStepOutput) -> None:
        """All-reduce this step's firing counts and which latents fired, so every rank's dead-latent
        statistics are the single-process ones."""
        frequencies = self._frequencies_before
        with torch.no_grad():
            fired = latents_fired(output.feature_acts)
            bad = (~torch.isfinite(output.loss.detach())).to(frequencies.dtype).reshape(1)
            stop = bad.new_full((1,), float(self.stop_signal or 0))  # a signal this rank was sent
            shared = torch.cat([self.act_freq_scores - frequencies, fired.to(frequencies.dtype), stop, bad])
            dist.all_reduce(
                shared
            )  # one collective: the firing statistics, and whether any rank's loss broke
            d_sae = frequencies.shape[0]
            self.act_freq_scores = frequencies + shared[:d_sae]
            self._fired_anywhere = shared[d_sae : 2 * d_sae] > 0
            self.n_forward_passes_since_fired[self._fired_anywhere] = 0  # every rank added 1 already
            self._stop_votes = shared[-2]
        self.note_nonfinite(shared[-1] > 0)  # every rank sees the same flag, so all of them stop together

    def stop_agreed(self) -> bool:
        """Whether any rank was sent a stop signal, as of the last step's all-reduce: every rank reads the
        same value at the same step (on a GPU every ``FINITE_CHECK_EVERY`` steps, to keep the loop free of
        host round trips), so every rank stops at the same boundary and joins the checkpoint's collectives."""
        votes = getattr(self, "_stop_votes", None)
        if votes is None:
            return False
        if votes.device.type == "cuda" and self.n_training_steps % FINITE_CHECK_EVERY:
            return False
        if float(votes) > 0:
            self.request_stop(signal.SIGTERM)  # the signal went to another rank
            return True
        return False

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self.check_finite()  # on every rank: the flag is shared, so every rank stops together
        if self.context.is_main:
            super().save_checkpoint(*args, **kwargs)  # type: ignore[misc]


class DistributedPairedSAETrainer(DistributedTrainerMixin, PairedSAETrainer):
    """``PairedSAETrainer`` under torchrun."""


class DistributedResamplingSAETrainer(DistributedTrainerMixin, ResamplingSAETrainer):
    """``ResamplingSAETrainer`` under torchrun: the event is decided on rank 0 from every rank's pool.
    Each rank keeps ``pool_size / world_size`` recent rows, so the gathered pool has ``pool_size``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = InputPool(max(1, self.resampling.pool_size // self.context.world_size))

    def _latents_fired(self, output: TrainStepOutput) -> torch.Tensor:
        assert self._fired_anywhere is not None
        return self._fired_anywhere

    @override
    def save_checkpoint(self, checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
        """Rank 0 writes SAELens's checkpoint and the shared resampling state (its own pool rows among
        them); every other rank then adds its pool rows as ``resampling_pool.rank<r>.safetensors``."""
        super().save_checkpoint(checkpoint_name, *args, **kwargs)
        dist.barrier()
        base = kwargs.get("base_path", args[0] if args else None) or self.cfg.checkpoint_path
        if not self.context.is_main and base is not None:
            tensors, counters = self.pool.state()
            folder = Path(base) / checkpoint_name
            write_safetensors(folder / _rank_pool_file(self.context.rank), tensors)
            write_json(folder / _rank_pool_file(self.context.rank).replace(".safetensors", ".json"), counters)
        dist.barrier()

    @override
    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        if not self.context.is_main:
            folder = Path(checkpoint_path)
            pool_file = folder / _rank_pool_file(self.context.rank)
            counters = read_json(
                pool_file.with_suffix(".json"), f"rank {self.context.rank}'s resampling pool"
            )
            self.pool.load_state(read_safetensors(pool_file, "resampling pool"), counters, self.sae.device)

    def _step_rows(self, x_in: torch.Tensor) -> int:
        return x_in.shape[0] * self.context.world_size

    @torch.no_grad()
    def resample(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        gathered = gather_pool(self.pool, self.context, self.cfg.train_batch_size_samples)
        payload: list[Any] = [None]
        if self.context.is_main:
            record, update = self._resample_on(*gathered)
            payload = [(record, None if update is None else self._update_to(update, torch.device("cpu")))]
        dist.broadcast_object_list(payload, src=0)
        record, update = payload[0]
        if not self.context.is_main and update is not None:
            self._apply_decided(self._update_to(update, self.sae.W_enc.device))
        return self._finish_event(record, step, started)

    def _update_to(self, update: Any, device: torch.device) -> Any:
        """The update ``_resample_on`` returned, on ``device`` (to broadcast it, then to apply it)."""
        return _to_device(update, device)

    def _apply_decided(self, update: Any) -> None:
        """Apply, on a rank other than 0, the update rank 0 decided and applied."""
        if update.latents.numel():
            self._apply(update)


def _rank_pool_file(rank: int) -> str:
    return f"resampling_pool.rank{rank}.safetensors"


def _to_device(update: ResampleUpdate, device: torch.device) -> ResampleUpdate:
    return replace(
        update,
        latents=update.latents.to(device),
        encoder=update.encoder.to(device),
        encoder_bias=update.encoder_bias.to(device),
        decoder=update.decoder.to(device),
        kept_live=None if update.kept_live is None else update.kept_live.to(device),
    )


def gather_pool(
    pool: Any, context: DistributedContext, global_batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's pool rows, on every rank, in the order a single process training on the global
    batches would hold them (row blocks of one step, rank by rank) when the pool holds whole steps."""
    x_in, target = pool.tensors()
    paired = pool.targets is not None
    parts = [x_in, target] if paired else [x_in]
    gathered = []
    for tensor in parts:
        pieces = [torch.empty_like(tensor) for _ in range(context.world_size)]
        dist.all_gather(pieces, tensor.contiguous())
        gathered.append(_interleave(pieces, global_batch // context.world_size))
    return (gathered[0], gathered[1]) if paired else (gathered[0], gathered[0])


def _interleave(pieces: list[torch.Tensor], rows_per_step: int) -> torch.Tensor:
    n = pieces[0].shape[0]
    if n % rows_per_step:
        return torch.cat(pieces)
    stacked = torch.stack([p.view(n // rows_per_step, rows_per_step, -1) for p in pieces], dim=1)
    return stacked.reshape(n * len(pieces), -1)
