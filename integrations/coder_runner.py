"""Train SAEs, transcoders and crosscoders on a TransformerLens model, configured like SAELens.

``CoderRunnerConfig`` is SAELens's ``LanguageModelSAERunnerConfig`` plus ``hook_names``: the input and
output hooks of a transcoder, or a crosscoder's source hooks (an SAE may keep using ``hook_name``).
``CoderTrainingRunner`` is SAELens's ``LanguageModelSAETrainingRunner`` with these changes:

* activations come from SAELens's multi-hook ``ActivationsStore`` (one model pass fills every hook, one
  shared shuffle keeps tokens aligned) as ``(x_in, x_out)`` pairs or concatenated sources;
* the trainer is :class:`~sdl_anchor.integrations.paired_trainer.PairedSAETrainer`;
* its evaluator splices the coder into the model (:func:`~sdl_anchor.integrations.splice.evaluate_spliced`);
* ``resampling=ResamplingConfig(...)`` swaps in
  :class:`~sdl_anchor.integrations.resampling_trainer.ResamplingSAETrainer` (dead-latent resampling);
* under ``torchrun`` it trains data-parallel (:mod:`~sdl_anchor.integrations.distributed`): every rank
  checks it got the same config, reads its own shard of the dataset and ``train_batch_size_tokens /
  world_size`` rows per step; rank 0 alone logs and writes.

Unlike SAELens's runner it seeds torch with ``cfg.seed`` first, so one seed gives one coder, however many
runs came before it in the process. Like SAELens's runner it takes ``override_model`` /
``override_dataset`` / ``override_sae``, checkpoints, saves the final coder (``save_inference_model``) with its hooks in ``cfg.metadata.hook_names``, and logs to
W&B. Hooks and widths are checked against the model before any forward pass (``check_coder_hooks``).
Cached activations and prefetching (single-hook features of SAELens) are not supported here.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import wandb
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset
from datasets.distributed import split_dataset_by_node
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.load_model import load_model
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.util import get_special_token_ids
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookedRootModule

from sdl_anchor.integrations.coder_hooks import check_coder_hooks, coder_kind
from sdl_anchor.integrations.compat import compile_llm_if_needed, compile_sae_if_needed, set_sae_metadata
from sdl_anchor.integrations.distributed import (
    DistributedPairedSAETrainer,
    DistributedResamplingSAETrainer,
    DistributedTrainerMixin,
    check_same_config,
    init_distributed,
    local_batch_size,
)
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer, TrainingInterrupted
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
from sdl_anchor.integrations.sparse_step import record_kernels
from sdl_anchor.integrations.splice import evaluate_spliced
from sdl_anchor.integrations.wandb_env import wandb_env_settings
from sdl_anchor.resampling import ResamplingConfig

HfDataset = Dataset | DatasetDict | IterableDataset | IterableDatasetDict


@dataclasses.dataclass
class CoderRunnerConfig(LanguageModelSAERunnerConfig[Any]):
    """SAELens's runner config plus ``hook_names`` (``[input, output]`` for a transcoder, the sources for a
    crosscoder, ``[hook_name]`` by default)."""

    hook_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.hook_names:
            self.hook_names = [self.hook_name]
        self.hook_names = list(self.hook_names)
        self.hook_name = self.hook_names[0]
        if self.use_cached_activations:
            raise ValueError(
                "CoderRunnerConfig reads activations from the model; set use_cached_activations=False"
            )
        if self.prefetch_llm_batches:
            raise ValueError("CoderRunnerConfig does not prefetch; set prefetch_llm_batches=False")
        super().__post_init__()


def coder_batches(store: ActivationsStore, hook_names: list[str], kind: str) -> Iterator[Any]:
    """The trainer's data: ``(x_in, x_out)`` for a transcoder, concatenated sources for a crosscoder."""
    for batch in store.get_multi_hook_data_loader():
        if kind == "transcoder":
            yield batch[hook_names[0]], batch[hook_names[1]]
        elif kind == "crosscoder":
            yield torch.cat([batch[name] for name in hook_names], dim=-1)
        else:
            yield batch[hook_names[0]]


@dataclasses.dataclass
class SplicedCoderEvaluator:
    """The trainer's evaluator: ``evaluate_spliced`` on fresh token batches from the store."""

    model: Any
    activations_store: ActivationsStore
    hook_names: list[str]
    n_eval_batches: int
    eval_batch_size_prompts: int | None
    progress: str | None = None  # a progress bar's label (the final summary shows one; in-training evals not)

    def __call__(self, sae: Any, data_provider: Any, activation_scaler: Any) -> dict[str, Any]:
        size = self.eval_batch_size_prompts or self.activations_store.store_batch_size_prompts
        batches: Any = (self.activations_store.get_batch_tokens(size) for _ in range(self.n_eval_batches))
        if self.progress is not None:
            batches = tqdm(batches, total=self.n_eval_batches, desc=self.progress, unit="batch")
        return evaluate_spliced(
            sae, self.model, batches, self.hook_names, activation_scaler=activation_scaler
        )


class CoderTrainingRunner(LanguageModelSAETrainingRunner):
    """SAELens's ``LanguageModelSAETrainingRunner`` for SAEs, transcoders and crosscoders (module docstring)."""

    cfg: CoderRunnerConfig

    def __init__(
        self,
        cfg: CoderRunnerConfig,
        override_dataset: HfDataset | None = None,
        override_model: HookedRootModule | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        resampling: ResamplingConfig | None = None,
    ) -> None:
        # SAELens's __init__ builds a single-hook ActivationsStore, so it is not called.
        self.resampling = resampling
        if not isinstance(cfg, CoderRunnerConfig):
            raise ValueError(
                "CoderTrainingRunner needs a CoderRunnerConfig (SAELens's config plus hook_names)"
            )
        if override_dataset is None and cfg.dataset_path == "":
            raise ValueError("give a dataset: set dataset_path in the config or pass override_dataset")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)  # the coder's initialisation and the store's shuffles follow --seed
        if override_sae is not None:
            self.sae = override_sae
        elif cfg.from_pretrained_path is not None:
            self.sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
        else:
            self.sae = TrainingSAE.from_dict(
                TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
            )
        self.kind = coder_kind(self.sae)
        self.model = self._load_model(override_model)
        hook_d_ins = check_coder_hooks(self.model, cfg.hook_names, self.sae.cfg, self.kind)
        compile_llm_if_needed(self)
        self.context = init_distributed(cfg.device)
        self.activations_store = self._activation_store(override_dataset, hook_d_ins)
        self.sae.to(cfg.device)
        self.evaluator = SplicedCoderEvaluator(  # type: ignore[assignment]
            model=self.model,
            activations_store=self.activations_store,
            hook_names=cfg.hook_names,
            n_eval_batches=cfg.n_eval_batches,
            eval_batch_size_prompts=cfg.eval_batch_size_prompts,
        )

    @property
    def is_main(self) -> bool:
        """Whether this process logs and saves: the only one, or rank 0 under torchrun."""
        return self.context is None or self.context.is_main

    def start_wandb(self, config: dict[str, Any]) -> bool:
        """Start this run's W&B run with ``config`` when ``cfg.logger`` logs to W&B, on the main process only;
        return whether one started (the caller finishes it with ``wandb.finish()``)."""
        if not (self.cfg.logger.log_to_wandb and self.is_main):
            return False
        wandb.init(
            project=self.cfg.logger.wandb_project,
            entity=self.cfg.logger.wandb_entity,
            config=config,
            name=self.cfg.logger.run_name,
            id=self.cfg.logger.wandb_id,
            **wandb_env_settings(),
        )
        return True

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        """``trainer.fit()``; SIGINT or SIGTERM stops it at the next step boundary and writes a resumable
        checkpoint ``interrupted_<samples>`` under ``cfg.checkpoint_path`` (weights, optimizer, scheduler,
        dead-latent, resampler and coder state, the data position and the runner config), then raises
        :class:`~sdl_anchor.integrations.paired_trainer.TrainingInterrupted` naming it. A second Ctrl-C
        stops at once and saves nothing. (SAELens's own handler saved only the data position, into a folder
        it never created.)"""
        main = self.is_main

        def stop_after_this_step(signal_number: int, frame: Any) -> None:
            if trainer.stop_signal is not None and signal_number == signal.SIGINT:
                raise KeyboardInterrupt
            trainer.request_stop(signal_number)
            if main:
                print(
                    "\nsdl-anchor: stopping after this step to save a checkpoint (Ctrl-C again stops at once, "
                    "saving nothing)",
                    file=sys.stderr,
                )

        previous = {}
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, stop_after_this_step)
        try:
            return trainer.fit()
        except TrainingInterrupted as stop:
            if self.cfg.checkpoint_path is not None:
                name = f"interrupted_{trainer.n_training_samples}"
                trainer.save_checkpoint(checkpoint_name=name)
                stop.checkpoint = Path(self.cfg.checkpoint_path) / name
            raise
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _load_model(self, override_model: HookedRootModule | None) -> Any:
        """The model: ``override_model``, or SAELens's ``load_model`` of the config's model."""
        if override_model is not None:
            return override_model
        cfg = self.cfg
        return load_model(
            cfg.model_class_name,
            cfg.model_name,
            device=cfg.llm_device,
            model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs,
            hook_names=cfg.hook_names,
        )

    def _activation_store(
        self, override_dataset: HfDataset | None, hook_d_ins: dict[str, int]
    ) -> ActivationsStore:
        """SAELens's multi-hook store over ``cfg.hook_names`` (one model pass fills every hook); under
        torchrun, this rank's shard and rows, after every rank checked it got the same config."""
        cfg = self.cfg
        store_batch_size = cfg.train_batch_size_tokens
        dataset: Any = override_dataset if override_dataset is not None else cfg.dataset_path
        if self.context is not None:
            # SAELens draws a random checkpoint folder per process: rank 0's is the run's
            shared = [cfg.checkpoint_path]
            dist.broadcast_object_list(shared, src=0)
            cfg.checkpoint_path = shared[0]
            check_same_config(
                {
                    "runner": cfg.to_dict(),
                    "resampling": self.resampling,
                    "world_size": self.context.world_size,
                },
                self.context,
            )
            store_batch_size = local_batch_size(cfg.train_batch_size_tokens, self.context.world_size)
            if isinstance(dataset, str):
                dataset = load_dataset(
                    dataset,
                    split="train",
                    streaming=cfg.streaming,
                    trust_remote_code=cfg.dataset_trust_remote_code,
                )
            dataset = split_dataset_by_node(dataset, self.context.rank, self.context.world_size)
        exclude = cfg.exclude_special_tokens
        if exclude is True:
            exclude = get_special_token_ids(self.model.tokenizer)  # type: ignore[arg-type]
        return ActivationsStore.from_config_multi_hook(
            self.model,
            dataset=dataset,
            hook_names=cfg.hook_names,
            hook_d_ins=hook_d_ins,
            streaming=cfg.streaming,
            context_size=cfg.context_size,
            n_batches_in_buffer=cfg.n_batches_in_buffer,
            total_training_tokens=cfg.training_tokens,
            store_batch_size_prompts=cfg.store_batch_size_prompts,
            train_batch_size_tokens=store_batch_size,
            prepend_bos=cfg.prepend_bos,
            device=cfg.act_store_device,
            dtype=cfg.dtype,
            model_kwargs=cfg.model_kwargs,
            autocast_lm=cfg.autocast_lm,
            dataset_trust_remote_code=cfg.dataset_trust_remote_code,
            seqpos_slice=cfg.seqpos_slice,
            exclude_special_tokens=None if exclude is False else torch.tensor(exclude, dtype=torch.long),
            disable_concat_sequences=cfg.disable_concat_sequences,
            sequence_separator_token=cfg.sequence_separator_token,
            activations_mixing_fraction=cfg.activations_mixing_fraction,
            use_chat_formatting=cfg.use_chat_formatting,
        )

    def run(self) -> TrainingSAE[Any]:
        """Train the coder (and save it to ``cfg.output_path`` when set); return it."""
        set_sae_metadata(self)
        self.sae.cfg.metadata.hook_names = list(self.cfg.hook_names)
        wandb_started = self.start_wandb(self.cfg.to_dict())
        trainer_kwargs = {
            "sae": self.sae,
            "data_provider": coder_batches(self.activations_store, self.cfg.hook_names, self.kind),
            "evaluator": self.evaluator,
            "save_checkpoint_fn": self.save_checkpoint,
            "cfg": self.cfg.to_sae_trainer_config(),
        }
        trainer: PairedSAETrainer
        if self.context is not None:
            if self.resampling is None:
                trainer = DistributedPairedSAETrainer(**trainer_kwargs, context=self.context)
            else:
                trainer = DistributedResamplingSAETrainer(
                    **trainer_kwargs, resampling=self.resampling, context=self.context
                )
        elif self.resampling is None:
            trainer = PairedSAETrainer(**trainer_kwargs)
        else:
            trainer = ResamplingSAETrainer(**trainer_kwargs, resampling=self.resampling)
        if self.cfg.resume_from_checkpoint is not None:
            trainer.load_trainer_state(self.cfg.resume_from_checkpoint)
            self.sae.load_weights_from_checkpoint(self.cfg.resume_from_checkpoint)
            self.activations_store.load_from_checkpoint(self.cfg.resume_from_checkpoint)
        compile_sae_if_needed(self)
        sae = self.run_trainer_with_interruption_handling(trainer)
        if isinstance(trainer, ResamplingSAETrainer):
            sae.cfg.metadata.resampling = {
                "strategy": trainer.resampling.strategy,
                "events": trainer.resample_log,
            }
        if isinstance(trainer, DistributedTrainerMixin):
            trainer.unwrap_sae()
        record_kernels(sae, self.cfg.train_batch_size_tokens)
        if self.cfg.output_path is not None and self.is_main:
            self.save_final_sae(sae, self.cfg.output_path, log_feature_sparsity=trainer.log_feature_sparsity)
        if wandb_started:
            wandb.finish()
        if self.context is not None:
            dist.barrier()  # no rank leaves before rank 0 has written the coder
        return sae
