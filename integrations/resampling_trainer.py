"""``ResamplingSAETrainer``: ``PairedSAETrainer`` that resamples dead latents on a schedule.

SAELens's trainer has no hook for resampling (SAELens dropped it in 2024). This subclass keeps every
SAELens behaviour and, after the steps named by :class:`~sdl_anchor.resampling.ResamplingConfig`'s
schedule:

1. finds dead latents: no firing for ``dead_steps`` steps (SAELens's own per-latent counter) or, with
   ``dead_tokens``, for that many tokens (counted here);
2. runs the configured strategy (:mod:`sdl_anchor.resampling.strategies`) on a pool of the last
   ``pool_size`` training inputs, writes the new encoder columns, encoder biases and decoder rows (and
   resets the JumpReLU threshold of the latents that start afresh; a split latent that stays live keeps its own), and zeroes Adam's moments for exactly those latents;
3. optionally ramps the learning rate back up over ``rewarm_steps``;
4. logs ``resample/events``, ``resample/latents``, ``resample/dead_before``, ``resample/split``,
   ``resample/fallback``, ``resample/loss_before``, ``resample/loss_after`` (pool MSE around the event) and
   ``resample/seconds`` to W&B through SAELens's logger settings, and keeps them in ``self.resample_log``.

Works for SAEs, transcoders and crosscoders of every registered architecture: it only touches the
latent-indexed parameters (``W_enc`` columns, ``b_enc``, ``W_dec`` rows, ``threshold``). An anchored
coder's anchored latents are never resampled or split: their directions belong to the anchors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepOutput
from typing_extensions import override

from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.sparse_step import SparseTopKStepMixin, dense_step_reason, sparse_forward
from sdl_anchor.io import read_json, read_safetensors, write_json, write_safetensors
from sdl_anchor.resampling import (
    ResamplePool,
    ResampleUpdate,
    ResamplingConfig,
    anthropic_resample_weights,
    reset_adam_state,
    theory_resample,
)
from sdl_anchor.resampling.duplicates import FiringStats, duplicate_pairs, merge_duplicates, parked_weights
from sdl_anchor.sparse_topk import latents_fired

RESAMPLING_STATE_TENSORS = "resampling_state.safetensors"
RESAMPLING_STATE_JSON = "resampling_state.json"

# parameter name -> the dimension that indexes latents
LATENT_DIMS = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "threshold": 0}


class InputPool:
    """The last ``capacity`` training inputs (and targets), in preallocated ring buffers on the device."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.size = 0
        self.position = 0

    @torch.no_grad()
    def add(self, x_in: torch.Tensor, target: torch.Tensor | None) -> None:
        if self.inputs is None:
            self.inputs = x_in.new_empty(self.capacity, x_in.shape[-1])
            if target is not None:
                self.targets = target.new_empty(self.capacity, target.shape[-1])
        x_in = x_in[-self.capacity :]
        rows = (self.position + torch.arange(x_in.shape[0], device=x_in.device)) % self.capacity
        self.inputs[rows] = x_in.detach().to(self.inputs.dtype)
        if self.targets is not None and target is not None:
            self.targets[rows] = target[-self.capacity :].detach().to(self.targets.dtype)
        self.position = (self.position + x_in.shape[0]) % self.capacity
        self.size = min(self.capacity, self.size + x_in.shape[0])

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """``(tensors, counters)`` that :meth:`load_state` restores exactly (ring order included)."""
        tensors = {} if self.inputs is None else {"pool_inputs": self.inputs}
        if self.targets is not None:
            tensors["pool_targets"] = self.targets
        return tensors, {
            "pool_size": self.size,
            "pool_position": self.position,
            "pool_capacity": self.capacity,
        }

    def load_state(self, tensors: dict[str, torch.Tensor], counters: dict[str, int], device: Any) -> None:
        if counters["pool_capacity"] != self.capacity:
            raise ValueError(
                f"the checkpoint's resampling pool holds {counters['pool_capacity']} rows but this run's "
                f"pool_size is {self.capacity}; resume with the same ResamplingConfig"
            )
        self.inputs = tensors["pool_inputs"].to(device) if "pool_inputs" in tensors else None
        self.targets = tensors["pool_targets"].to(device) if "pool_targets" in tensors else None
        self.size, self.position = counters["pool_size"], counters["pool_position"]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inputs is None:
            raise ValueError("the resampling pool is empty: no training step has run yet")
        inputs = self.inputs[: self.size]
        return inputs, inputs if self.targets is None else self.targets[: self.size]


# pool rows on which an event's loss before and after is reported
LOSS_SAMPLE = 4096

# a latent "owns" an input when its activation is at least this fraction of the input's largest
DOMINANCE = 0.5


def _coder_chunks(sae: Any, x_in: torch.Tensor, target: torch.Tensor, chunk: int) -> Any:
    """``(start, x, t, feature_acts, squared error)`` of the coder over the pool, ``chunk`` rows at a time
    (a TopK-family coder that takes the sparse step decodes its selected latents only)."""
    sparse = isinstance(sae, SparseTopKStepMixin) and dense_step_reason(sae) is None
    for start in range(0, x_in.shape[0], chunk):
        x, t = x_in[start : start + chunk], target[start : start + chunk]
        if sparse:
            acts, output = sparse_forward(sae, x)
        else:
            acts = sae.encode(x)
            output = sae.transcode(x, acts) if hasattr(sae, "transcode") else sae.decode(acts)
        yield start, x, t, acts, (t - output).pow(2).sum(dim=-1)


@torch.no_grad()
def pool_loss(sae: Any, x_in: torch.Tensor, target: torch.Tensor, chunk: int = 4096) -> float:
    """The coder's mean squared error over the pool."""
    return float(torch.cat([loss for *_, loss in _coder_chunks(sae, x_in, target, chunk)]).mean())


@torch.no_grad()
def pool_statistics(
    sae: Any, x_in: torch.Tensor, target: torch.Tensor, chunk: int = 4096, firing: FiringStats | None = None
) -> ResamplePool:
    """Run the coder over the pool in chunks: encoder inputs, targets minus ``b_dec``, errors, and the
    latents that own each input (activation >= ``DOMINANCE`` x the input's largest): with TopK every input
    fires k latents, and a latent's clusters are read from the inputs it answers for, not those where it is
    a distant runner-up. ``firing`` also counts every latent's firing on the same pass."""
    encoder_inputs, targets, losses, rows, latents = [], [], [], [], []
    for start, x, t, acts, loss in _coder_chunks(sae, x_in, target, chunk):
        if firing is not None:
            firing.add(acts)
        encoder_inputs.append(sae.process_sae_in(x))
        targets.append(t - sae.b_dec)
        losses.append(loss)
        dominant = (acts > 0) & (acts >= DOMINANCE * acts.amax(dim=-1, keepdim=True))
        chunk_rows, chunk_latents = torch.nonzero(dominant, as_tuple=True)
        rows.append(chunk_rows + start)
        latents.append(chunk_latents)
    return ResamplePool.from_pairs(
        torch.cat(encoder_inputs),
        torch.cat(targets),
        torch.cat(losses),
        torch.cat(rows),
        torch.cat(latents),
        sae.cfg.d_sae,
    )


class ResamplingSAETrainer(PairedSAETrainer):
    """SAELens's trainer (paired batches allowed) that resamples dead latents (module docstring)."""

    def __init__(
        self,
        cfg: SAETrainerConfig,
        sae: Any,
        data_provider: Any,
        evaluator: Any = None,
        save_checkpoint_fn: Any = None,
        resampling: ResamplingConfig | None = None,
    ) -> None:
        super().__init__(
            cfg=cfg,
            sae=sae,
            data_provider=data_provider,
            evaluator=evaluator,
            save_checkpoint_fn=save_checkpoint_fn,
        )
        self.resampling = resampling if resampling is not None else ResamplingConfig()
        self.schedule = self.resampling.schedule(cfg.total_training_steps)
        self.pool = InputPool(self.resampling.pool_size)
        self.tokens_since_fired = torch.zeros(sae.cfg.d_sae, device=cfg.device, dtype=torch.long)
        # latents merged away as copies and not yet given a split (duplicate_cosine): silent, not dead
        self.parked = torch.zeros(sae.cfg.d_sae, device=cfg.device, dtype=torch.bool)
        self.resample_log: list[dict[str, float]] = []
        self._last_event_step: int | None = None
        self._generator = torch.Generator().manual_seed(self.resampling.seed)

    @override
    def save_trainer_state(self, checkpoint_path: Path) -> None:
        """SAELens's trainer state, plus the resampler's: dead-latent token counters, events so far, the last
        event's step, the generator and the input pool (``resampling_state.*``), so a resumed run continues
        exactly as an uninterrupted one."""
        super().save_trainer_state(checkpoint_path)
        tensors, counters = self.pool.state()
        tensors = {**tensors, "tokens_since_fired": self.tokens_since_fired, "parked": self.parked,
                   "generator_state": self._generator.get_state()}  # fmt: skip
        write_safetensors(Path(checkpoint_path) / RESAMPLING_STATE_TENSORS, tensors)
        meta = {**counters, "last_event_step": self._last_event_step, "resample_log": self.resample_log}
        write_json(Path(checkpoint_path) / RESAMPLING_STATE_JSON, meta)

    @override
    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        folder = Path(checkpoint_path)
        if not (folder / RESAMPLING_STATE_JSON).exists():
            raise FileNotFoundError(
                f"{folder} has no {RESAMPLING_STATE_JSON}: it was not written by a resampling trainer, so the "
                "resampler's state cannot be restored; resume without resampling, or from a resampling run"
            )
        meta = read_json(folder / RESAMPLING_STATE_JSON, "resampling state")
        tensors = read_safetensors(folder / RESAMPLING_STATE_TENSORS, "resampling state")
        self.pool.load_state(tensors, meta, self.sae.device)
        self.tokens_since_fired = tensors["tokens_since_fired"].to(self.tokens_since_fired.device)
        if "parked" in tensors:  # checkpoints from before duplicate merging have none
            self.parked = tensors["parked"].to(self.parked.device)
        self._generator.set_state(tensors["generator_state"].cpu())
        self._last_event_step = meta["last_event_step"]
        self.resample_log = list(meta["resample_log"])

    def step(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> TrainStepOutput:
        output = super().step(batch)
        # the step's own (device-resident, scaled) tensors: output.sae_in is the input, or a transcoder's target
        if isinstance(batch, (tuple, list)):
            x_in, target = batch[0].to(self.sae.device), output.sae_in
        else:
            x_in, target = output.sae_in, None
        self.pool.add(x_in, target)
        fired = self._latents_fired(output)
        self.tokens_since_fired = torch.where(fired, 0, self.tokens_since_fired + self._step_rows(x_in))
        completed = self.n_training_steps + 1
        if completed in self.schedule.event_steps:
            self.resample(completed)
        self._rewarm(completed)
        return output

    def _latents_fired(self, output: TrainStepOutput) -> torch.Tensor:
        """``[d_sae]``: which latents fired in this step."""
        return latents_fired(output.feature_acts)

    def _step_rows(self, x_in: torch.Tensor) -> int:
        """How many inputs this step trained on."""
        return x_in.shape[0]

    @property
    def anchored_latents(self) -> int:
        """How many leading latents are anchored (DESIGN.md section 5); resampling never touches them."""
        return int(getattr(self.sae, "anchor_k", 0))

    def dead_latents(self) -> torch.Tensor:
        """Indices of the unanchored latents that count as dead now (steps, or tokens with ``dead_tokens``);
        parked latents are silent on purpose and do not count."""
        if self.schedule.dead_tokens is not None:
            dead = self.tokens_since_fired >= self.schedule.dead_tokens
        else:
            dead = self.n_forward_passes_since_fired >= self.schedule.dead_steps
        dead[: self.anchored_latents] = False
        dead &= ~self.parked
        return torch.nonzero(dead).flatten()

    @torch.no_grad()
    def resample(self, step: int) -> dict[str, float]:
        """Run one resampling event now; return (and log) its record."""
        started = time.perf_counter()
        x_in, target = self.pool.tensors()
        record, _ = self._resample_on(x_in, target)
        return self._finish_event(record, step, started)

    @torch.no_grad()
    def _resample_on(
        self, x_in: torch.Tensor, target: torch.Tensor
    ) -> tuple[dict[str, float], ResampleUpdate | None]:
        """Decide the event from the pool ``(x_in, target)``, apply it, and return its record and update."""
        dead = self.dead_latents()
        record = {
            "resample/events": float(len(self.resample_log) + 1),
            "resample/dead_before": float(dead.numel()),
        }
        firing = self._duplicate_candidates(dead)
        # before / after on the same leading rows of the pool: a diagnostic, so a sample is enough
        n_scored = min(LOSS_SAMPLE, x_in.shape[0])
        update = None
        if firing is None and not dead.numel():  # nothing to merge or resample: skip the pool pass
            record["resample/loss_before"] = pool_loss(self.sae, x_in[:n_scored], target[:n_scored])
        else:
            pool = pool_statistics(self.sae, x_in, target, firing=firing)
            record["resample/loss_before"] = float(pool.loss[:n_scored].mean())
            if firing is not None:
                update = self._merge_and_split(dead, pool, firing, record)
            else:
                update = self._strategy_update(dead, pool)
        if update is not None and update.latents.numel():
            self._apply(update)
            record["resample/loss_after"] = pool_loss(self.sae, x_in[:n_scored], target[:n_scored])
        else:
            record["resample/loss_after"] = record["resample/loss_before"]
        record["resample/latents"] = float(0 if update is None else update.n_dead_resampled)
        record["resample/split"] = float(0 if update is None else update.n_split)
        record["resample/fallback"] = float(0 if update is None else update.n_fallback)
        return record, update

    def _finish_event(self, record: dict[str, float], step: int, started: float) -> dict[str, float]:
        record["resample/seconds"] = time.perf_counter() - started
        record["resample/step"] = float(step)
        self.resample_log.append(record)
        self._last_event_step = step
        if self.cfg.logger.log_to_wandb:
            wandb.log(record, step=self.n_training_steps)
        return record

    def _duplicate_candidates(self, dead: torch.Tensor) -> FiringStats | None:
        """With ``duplicate_cosine`` set: firing counters for the pairs of live, unanchored latents whose
        decoder rows are that close (the pool pass fills them)."""
        cosine = self.resampling.duplicate_cosine
        if cosine is None:
            return None
        eligible = torch.ones(self.sae.cfg.d_sae, dtype=torch.bool, device=self.sae.W_dec.device)
        eligible[dead] = False
        eligible[: self.anchored_latents] = False
        eligible[self.parked] = False
        pairs = duplicate_pairs(self.sae.W_dec.detach(), eligible, cosine)
        return FiringStats(pairs, self.sae.cfg.d_sae, self.sae.W_dec)

    def _merge_and_split(
        self, dead: torch.Tensor, pool: ResamplePool, firing: FiringStats, record: dict[str, float]
    ) -> ResampleUpdate:
        """Merge each feature's co-firing copies into one latent, split polysemantic latents into the dead
        latents, then the freed and earlier parked ones, and park every one of those no split took. Parked
        latents wait for a split at a later event: none gets the ``anthropic`` fallback, whose latents at
        k=128 die again or become new copies."""
        sae = self.sae
        W_enc, b_enc, W_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach()
        merge = merge_duplicates(
            firing,
            W_enc,
            b_enc,
            W_dec,
            self.resampling.duplicate_cofiring,
            pool.encoder_inputs,
            bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False)),
        )
        idle = torch.cat([merge.freed, torch.nonzero(self.parked).flatten()])
        split = self._strategy_update(dead, pool, spare=idle, protected=merge.keepers, fallback=False)
        free = torch.cat([dead, idle])
        unused = ~torch.isin(free, split.latents)
        newly_parked = free[unused & ~self.parked[free]]
        self.parked[free] = unused
        record["resample/merged"] = float(merge.freed.numel())
        record["resample/parked"] = float(self.parked.sum())
        largest_input_norm = float(pool.encoder_inputs.norm(dim=1).max())
        encoder, bias, decoder = parked_weights(
            newly_parked, W_enc, W_dec, largest_input_norm, self._generator
        )
        merged = ResampleUpdate(
            torch.cat([merge.keepers, newly_parked]),
            torch.cat([merge.encoder, encoder], dim=1),
            torch.cat([merge.encoder_bias, bias]),
            torch.cat([merge.decoder, decoder]),
            kept_live=torch.ones(
                merge.keepers.numel() + newly_parked.numel(), dtype=torch.bool, device=W_dec.device
            ),
        )
        # the counters add up over the parts: the merged part has none
        return ResampleUpdate.concat([merged, split], W_enc.shape[0], W_dec.shape[1], W_dec)

    def _strategy_update(
        self,
        dead: torch.Tensor,
        pool: ResamplePool,
        spare: torch.Tensor | None = None,
        protected: torch.Tensor | None = None,
        fallback: bool = True,
    ) -> ResampleUpdate:
        config = self.resampling
        W_enc, W_dec = self.sae.W_enc.detach(), self.sae.W_dec.detach()
        if config.strategy == "theory":
            return theory_resample(
                dead,
                pool,
                W_enc,
                self.sae.b_enc.detach(),
                W_dec,
                n_clusters=config.n_clusters,
                merge_cosine=config.merge_cosine,
                min_cluster_fraction=config.min_cluster_fraction,
                encoder_scale=config.encoder_scale,
                generator=self._generator,
                frozen=self.anchored_latents,
                spare=spare,
                protected=protected,
                fallback=fallback,
            )
        return anthropic_resample_weights(dead, pool, W_enc, W_dec, config.encoder_scale, self._generator)

    @torch.no_grad()
    def _apply(self, update: ResampleUpdate) -> None:
        sae, latents = self.sae, update.latents.to(self.sae.device)
        sae.W_enc[:, latents] = update.encoder.to(sae.W_enc.dtype)
        sae.b_enc[latents] = update.encoder_bias.to(sae.b_enc.dtype)
        sae.W_dec[latents] = update.decoder.to(sae.W_dec.dtype)
        threshold = getattr(sae, "threshold", None)
        if isinstance(threshold, torch.nn.Parameter) and threshold.shape == (sae.cfg.d_sae,):
            threshold[latents[update.fresh().to(latents.device)]] = float(sae.cfg.jumprelu_init_threshold)
        named = dict(sae.named_parameters())
        params = [(named[name], dim) for name, dim in LATENT_DIMS.items() if name in named]
        reset_adam_state(self.optimizer, params, latents)
        self.n_forward_passes_since_fired[latents] = 0
        self.tokens_since_fired[latents] = 0
        if hasattr(sae, "forget_latents"):
            sae.forget_latents(latents)  # a self-anchoring target from before the event would be stale

    def _rewarm(self, completed: int) -> None:
        """Scale the scheduler's learning rate by ``(steps since the event) / rewarm_steps`` for a while."""
        rewarm = self.schedule.rewarm_steps
        if rewarm == 0 or self._last_event_step is None:
            return
        since = completed - self._last_event_step
        if since >= rewarm:
            return
        factor = (since + 1) / rewarm
        for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr(), strict=True):
            group["lr"] = base * factor
