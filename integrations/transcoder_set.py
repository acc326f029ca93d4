"""Transcoders for every layer of a model, trained in one run from the same forward passes.

Circuit tracing (circuit-tracer's attribution graphs and replacement models) needs a transcoder at every
layer. ``TranscoderSetRunner`` trains one per chosen layer, by default ``blocks.{L}.ln2.hook_normalized ->
blocks.{L}.hook_mlp_out``, with every activation, anchoring and resampling our single-coder runner offers:

* SAELens's multi-hook ``ActivationsStore`` reads every layer's input and output hook in *one* model pass per
  batch of tokens (a run of L layers makes 1/L of the forward passes of L separate runs);
* SAELens's ``MultiSAETrainer`` drives one of our trainers per layer (paired batches, fused Adam, NaN stops,
  resampling), in lockstep, with its checkpoint layout;
* the evaluator splices every layer's transcoder in at once, and each on its own, and reports the CE loss
  recovered for the whole set and per layer (:func:`evaluate_spliced_set`).

A set saves as a folder of SAELens-format transcoders, ``layer_{L}/``, plus ``manifest.json`` (layers, hooks,
architecture, widths), written to a temporary folder and renamed when complete (:class:`TranscoderSet`).

Under ``torchrun`` the runner trains data-parallel as :class:`~sdl_anchor.integrations.coder_runner.
CoderTrainingRunner` does (:mod:`~sdl_anchor.integrations.distributed`): every rank checks it got the same
config, reads its own shard of the dataset and ``train_batch_size_tokens / world_size`` rows per step, and
drives one distributed trainer per layer (:class:`DistributedMultiCoderTrainer`): each layer's gradients are
averaged by its own DDP wrapper, its dead-latent statistics all-reduced every step, its resampling events
decided on rank 0 and broadcast; BatchTopK chooses within each rank's rows and the ranks keep rank 0's
thresholds. Rank 0 alone logs to W&B, evaluates and saves the set.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens.saes.sae import SAE, TrainingSAE, TrainingSAEConfig
from sae_lens.training.multi_sae_trainer import MultiSAETrainer

from sdl_anchor.integrations.coder_hooks import check_coder_hooks, coder_kind
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig, CoderTrainingRunner, HfDataset
from sdl_anchor.integrations.compat import set_sae_metadata
from sdl_anchor.integrations.distributed import (
    DistributedContext,
    DistributedPairedSAETrainer,
    DistributedResamplingSAETrainer,
    DistributedTrainerMixin,
    average_scaling_factor,
    broadcast_buffers,
    check_normalization,
    init_distributed,
)
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
from sdl_anchor.integrations.sparse_step import record_kernels
from sdl_anchor.integrations.splice import coder_output, evaluate_spliced_layers
from sdl_anchor.io import read_json, write_json
from sdl_anchor.resampling import ResamplingConfig

DEFAULT_LAYER_HOOKS = ("ln2.hook_normalized", "hook_mlp_out")
MANIFEST = "manifest.json"
SET_FORMAT_VERSION = 1


def resolve_layers(layers: str | Sequence[int], n_layers: int) -> list[int]:
    """``"all"``, ``"0,2,5"`` or a list of ints -> sorted layers, each checked against the model's
    ``n_layers``."""
    if isinstance(layers, str):
        if layers.strip() == "all":
            return list(range(n_layers))
        try:
            layers = [int(part) for part in layers.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"layers must be 'all' or comma-separated integers, got {layers!r}") from None
    chosen = sorted(set(int(layer) for layer in layers))
    if not chosen:
        raise ValueError("no layers chosen; give 'all' or a list such as 0,1,2")
    missing = [layer for layer in chosen if not 0 <= layer < n_layers]
    if missing:
        raise ValueError(f"the model has layers 0..{n_layers - 1}, not {missing}; choose among those")
    return chosen


def layer_hooks(layer: int, hooks: Sequence[str] = DEFAULT_LAYER_HOOKS) -> list[str]:
    """``[blocks.{layer}.{input}, blocks.{layer}.{output}]``."""
    return [f"blocks.{layer}.{hook}" for hook in hooks]


@dataclasses.dataclass
class TranscoderSet:
    """One transcoder per layer, with the hooks each reads and writes (relative to ``blocks.{L}``)."""

    transcoders: dict[int, Any]
    hooks: tuple[str, str] = DEFAULT_LAYER_HOOKS

    @property
    def layers(self) -> list[int]:
        return sorted(self.transcoders)

    def save(self, folder: str | Path) -> Path:
        """``folder/layer_{L}/`` (SAELens's inference format) and ``folder/manifest.json``, written to a
        temporary folder beside ``folder`` and renamed into place only when complete."""
        folder = Path(folder)
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            for layer, coder in self.transcoders.items():
                saver = getattr(coder, "save_inference_model", coder.save_model)
                saver(str(partial / f"layer_{layer}"))
            write_json(partial / MANIFEST, self.manifest())
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return folder

    def manifest(self) -> dict[str, Any]:
        first = self.transcoders[self.layers[0]]
        return {
            "format": "sdl-anchor transcoder set",
            "version": SET_FORMAT_VERSION,
            "layers": self.layers,
            "input_hook": self.hooks[0],
            "output_hook": self.hooks[1],
            "architecture": first.cfg.architecture(),
            "d_in": first.cfg.d_in,
            "d_out": int(first.W_dec.shape[1]),
            "d_sae": first.cfg.d_sae,
            "model_name": first.cfg.metadata.model_name,
        }

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TranscoderSet:
        """A saved set (``SAE.load_from_disk`` per layer); errors name a missing manifest or layer."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"transcoder set {folder} does not exist")
        manifest = check_manifest(read_json(folder / MANIFEST, "transcoder set manifest"), folder / MANIFEST)
        missing = [
            layer for layer in manifest["layers"] if not (folder / f"layer_{layer}" / "cfg.json").is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"transcoder set {folder} lists layers {manifest['layers']} but has no saved transcoder for "
                f"{missing} (layer_<L>/cfg.json); train or copy them there"
            )
        import sdl_anchor  # noqa: F401  (registers topk_transcoder and the crosscoder classes)

        transcoders = {
            layer: SAE.load_from_disk(str(folder / f"layer_{layer}"), device=device)
            for layer in manifest["layers"]
        }
        return cls(transcoders, (manifest["input_hook"], manifest["output_hook"]))


def check_manifest(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """``manifest`` if it is a transcoder set's (``TranscoderSet.manifest``): ``layers`` a non-empty list of
    distinct layer numbers, ``input_hook`` / ``output_hook`` strings; else a ValueError naming ``path`` and the
    key that is wrong."""
    problem = None
    layers = manifest.get("layers")
    if "format" in manifest and manifest["format"] != "sdl-anchor transcoder set":
        problem = f"its format is {manifest['format']!r}, not 'sdl-anchor transcoder set'"
    elif not isinstance(layers, list) or not layers:
        problem = f"'layers' must be a non-empty list of layer numbers, got {layers!r}"
    elif not all(isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in layers):
        problem = f"'layers' must hold non-negative integers, got {layers!r}"
    elif len(set(layers)) != len(layers):
        problem = f"'layers' names a layer twice: {layers!r}"
    else:
        for key in ("input_hook", "output_hook"):
            if not isinstance(manifest.get(key), str) or not manifest[key]:
                problem = (
                    f"{key!r} must be a hook name such as 'ln2.hook_normalized', got {manifest.get(key)!r}"
                )
                break
    if problem is not None:
        raise ValueError(
            f"transcoder set manifest: {path} is malformed: {problem}. It is written by `sdl-anchor train "
            "--layers`; train the set again or restore the file"
        )
    return manifest


class MultiCoderTrainer(MultiSAETrainer):
    """SAELens's ``MultiSAETrainer`` with one of our trainers per coder (paired batches, fused Adam, NaN
    stops, resampling). The data provider yields ``{name: (x_in, x_out)}`` and each coder's "hook" is its own
    name, so SAELens's routing hands every trainer its pair."""

    def __init__(self, *args: Any, resampling: ResamplingConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = next(iter(self.trainers.values())).cfg
        self.trainers = {
            name: self._coder_trainer(config, sae, resampling) for name, sae in self.saes.items()
        }

    def _coder_trainer(self, config: Any, sae: Any, resampling: ResamplingConfig | None) -> PairedSAETrainer:
        if resampling is None:
            return PairedSAETrainer(cfg=config, sae=sae, data_provider=iter(()))
        return ResamplingSAETrainer(cfg=config, sae=sae, data_provider=iter(()), resampling=resampling)


class DistributedMultiCoderTrainer(MultiCoderTrainer):
    """:class:`MultiCoderTrainer` under torchrun: one distributed trainer per coder (each with its own DDP
    wrapper, its statistics all-reduced, its resampling events decided on rank 0), driven in lockstep on every
    rank, so each collective is entered in the same order everywhere. Rank 0 alone logs, evaluates and writes
    checkpoints; the scaling factors are the ranks' mean, and the ranks keep rank 0's buffers at the end."""

    def __init__(self, *args: Any, context: DistributedContext, **kwargs: Any) -> None:
        self.context = context
        super().__init__(*args, **kwargs)
        self._main_logs = self.cfg.logger.log_to_wandb  # rank 0's choice (every rank got the same config)
        if not context.is_main:
            self.cfg = replace(self.cfg, logger=replace(self.cfg.logger, log_to_wandb=False))
            self.evaluator = None

    def _coder_trainer(self, config: Any, sae: Any, resampling: ResamplingConfig | None) -> PairedSAETrainer:
        kwargs = {"cfg": config, "sae": sae, "data_provider": iter(()), "context": self.context}
        if resampling is None:
            return DistributedPairedSAETrainer(**kwargs)
        return DistributedResamplingSAETrainer(**kwargs, resampling=resampling)

    def fit(self) -> dict[str, Any]:
        for sae in self.saes.values():
            check_normalization(sae)
        saes = super().fit()
        for sae in self.saes.values():
            broadcast_buffers(sae)
        return saes

    @torch.no_grad()
    def _estimate_scaling_factors(self) -> None:
        super()._estimate_scaling_factors()  # from this rank's rows
        for name, trainer in self.trainers.items():
            if self.saes[name].cfg.normalize_activations == "expected_average_only_in":
                average_scaling_factor(trainer.activation_scaler, self.context)

    def save_checkpoint(self, checkpoint_name: str, wandb_aliases: list[str] | None = None) -> None:
        if self.context.is_main or self.cfg.checkpoint_path is not None or not self._main_logs:
            super().save_checkpoint(checkpoint_name, wandb_aliases)
            return
        # rank 0 saves into a temporary folder for W&B: join its per-coder trainers' collectives
        for name, trainer in self.trainers.items():
            trainer.save_checkpoint(checkpoint_name=name, base_path=None, wandb_aliases=wandb_aliases)

    def unwrap_saes(self) -> None:
        """Every coder with its own ``training_forward_pass`` back (after training)."""
        for trainer in self.trainers.values():
            assert isinstance(trainer, DistributedTrainerMixin)
            trainer.unwrap_sae()


def set_batches(store: Any, layers: Sequence[int], hooks: Sequence[str]) -> Iterator[dict[str, Any]]:
    """``{"layer_L": (x_in, x_out)}`` per batch, every layer from the same model pass."""
    for batch in store.get_multi_hook_data_loader():
        yield {f"layer_{layer}": tuple(batch[name] for name in layer_hooks(layer, hooks)) for layer in layers}


@torch.no_grad()
def evaluate_spliced_set(
    transcoders: dict[int, Any],
    model: Any,
    token_batches: torch.Tensor | Iterable[torch.Tensor],
    hooks: Sequence[str] = DEFAULT_LAYER_HOOKS,
) -> dict[str, Any]:
    """CE loss recovered with every layer's transcoder spliced in at once (``"set"``), and with each on its
    own (``"layers"``), against zero-ablating the same MLP outputs; explained variance per layer."""
    layers = sorted(transcoders)

    def reconstructions(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = []
        for layer in layers:
            x_in, x_out = (cache[name] for name in layer_hooks(layer, hooks))
            output, _ = coder_output(transcoders[layer], x_in.to(transcoders[layer].device))
            pairs.append((output.to(x_out), x_out))
        return pairs

    return evaluate_spliced_layers(
        model,
        token_batches,
        layers=layers,
        cached_hooks=[n for layer in layers for n in layer_hooks(layer, hooks)],
        output_hooks=[layer_hooks(layer, hooks)[1] for layer in layers],
        splice_hooks=lambda positions: [
            h for p in positions for h in _splice(transcoders[layers[p]], layers[p], hooks)
        ],
        reconstructions=reconstructions,
        name="set",
        layer_loss_key="ce_loss_with_transcoder",
    )


@torch.no_grad()
def spliced_logits(transcoder_set: TranscoderSet, model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits with every layer's output hook replaced by that layer's transcoder (the replacement
    model circuit-tracer builds, without error terms)."""
    hooks = [
        h
        for layer in transcoder_set.layers
        for h in _splice(transcoder_set.transcoders[layer], layer, transcoder_set.hooks)
    ]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def _splice(coder: Any, layer: int, hooks: Sequence[str]) -> list[tuple[str, Any]]:
    """Hooks that replace the layer's output by the transcoder's, computed from its input in the same pass."""
    seen: dict[str, torch.Tensor] = {}
    input_hook, output_hook = layer_hooks(layer, hooks)

    def read(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["x"] = activation
        return activation

    def write(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        output, _ = coder_output(coder, seen["x"].to(coder.device))
        return output.to(activation.device, activation.dtype).reshape(activation.shape)

    return [(input_hook, read), (output_hook, write)]


@dataclasses.dataclass
class LayerSpliceEvaluator:
    """What the per-layer spliced evaluators (:class:`TranscoderSetEvaluator`, the CLT's
    :class:`~sdl_anchor.integrations.clt_training.SplicedCLTEvaluator`) share: fresh token batches from the
    store, and the result flattened to ``<name>/...`` and ``layer_L/...`` keys."""

    model: Any
    activations_store: Any
    layers: list[int]
    hooks: tuple[str, str]
    n_eval_batches: int
    eval_batch_size_prompts: int | None

    def token_batches(self) -> list[torch.Tensor]:
        size = self.eval_batch_size_prompts or self.activations_store.store_batch_size_prompts
        return [self.activations_store.get_batch_tokens(size) for _ in range(self.n_eval_batches)]

    @staticmethod
    def flatten(result: dict[str, Any], name: str) -> dict[str, Any]:
        flat = {f"{name}/{k}": v for k, v in result[name].items()}
        for layer, values in result["layers"].items():
            flat.update({f"layer_{layer}/{k}": v for k, v in values.items()})
        return flat


@dataclasses.dataclass
class TranscoderSetEvaluator(LayerSpliceEvaluator):
    """``MultiSAETrainer``'s evaluator: :func:`evaluate_spliced_set` on fresh token batches, flattened to
    ``set/...`` and ``layer_L/...`` keys."""

    def __call__(
        self, saes: dict[str, Any], data_provider: Any, scalers: Any, hook_names: Any
    ) -> dict[str, Any]:
        batches = self.token_batches()
        transcoders = {layer: saes[f"layer_{layer}"] for layer in self.layers}
        return self.flatten(evaluate_spliced_set(transcoders, self.model, batches, self.hooks), "set")


class TranscoderSetRunner(CoderTrainingRunner):
    """Trains a :class:`TranscoderSet` (module docstring): ``cfg.sae`` is every layer's transcoder config,
    ``layers`` the layers ("all" or a list), ``hooks`` the input and output hook inside each block."""

    def __init__(
        self,
        cfg: CoderRunnerConfig,
        layers: str | Sequence[int] = "all",
        hooks: Sequence[str] = DEFAULT_LAYER_HOOKS,
        override_dataset: HfDataset | None = None,
        override_model: Any = None,
        resampling: ResamplingConfig | None = None,
    ) -> None:
        if override_dataset is None and cfg.dataset_path == "":
            raise ValueError("give a dataset: set dataset_path in the config or pass override_dataset")
        self.cfg = cfg
        self.resampling = resampling
        self.hooks = (str(hooks[0]), str(hooks[1]))
        template = TrainingSAE.from_dict(
            TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
        )
        if coder_kind(template) != "transcoder":
            raise ValueError(
                f"a transcoder set needs a transcoder architecture (e.g. topk_transcoder), got "
                f"{template.cfg.architecture()}"
            )
        cfg.hook_names = [cfg.hook_name]  # resolved below, once the model's layers are known
        self.model = self._load_model(override_model)
        self.layers = resolve_layers(layers, self.model.cfg.n_layers)
        cfg.hook_names = [name for layer in self.layers for name in layer_hooks(layer, self.hooks)]
        cfg.hook_name = cfg.hook_names[0]
        hook_d_ins: dict[str, int] = {}
        for layer in self.layers:
            hook_d_ins |= check_coder_hooks(
                self.model, layer_hooks(layer, self.hooks), template.cfg, "transcoder"
            )
        self.context = init_distributed(cfg.device)
        self.activations_store = self._activation_store(override_dataset, hook_d_ins)
        self.saes: dict[str, Any] = {}
        for layer in self.layers:
            torch.manual_seed(cfg.seed + layer)
            coder = TrainingSAE.from_dict(
                TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
            )
            self.saes[f"layer_{layer}"] = coder.to(cfg.device)
        self.set_evaluator = TranscoderSetEvaluator(
            self.model, self.activations_store, self.layers, self.hooks, cfg.n_eval_batches,
            cfg.eval_batch_size_prompts,
        )  # fmt: skip

    def run(self) -> TranscoderSet:  # type: ignore[override]
        """Train every layer's transcoder (and save the set to ``cfg.output_path`` when set); return it."""
        for layer in self.layers:
            self.sae = self.saes[f"layer_{layer}"]
            set_sae_metadata(self)
            self.sae.cfg.metadata.hook_names = layer_hooks(layer, self.hooks)
            self.sae.cfg.metadata.hook_name = layer_hooks(layer, self.hooks)[0]
        wandb_started = self.start_wandb({**self.cfg.to_dict(), "layers": self.layers})
        kwargs: dict[str, Any] = {
            "cfg": self.cfg.to_sae_trainer_config(),
            "saes": self.saes,
            "hook_names": {name: name for name in self.saes},
            "data_provider": set_batches(self.activations_store, self.layers, self.hooks),
            "evaluator": self.set_evaluator,
            "resampling": self.resampling,
        }
        trainer: MultiCoderTrainer
        if self.context is None:
            trainer = MultiCoderTrainer(**kwargs)
        else:
            trainer = DistributedMultiCoderTrainer(**kwargs, context=self.context)
        try:
            trainer.fit()
        finally:
            if wandb_started:
                wandb.finish()
        if isinstance(trainer, DistributedMultiCoderTrainer):
            trainer.unwrap_saes()
        for name, layer_trainer in trainer.trainers.items():
            layer_trainer.check_finite()
            record_kernels(self.saes[name], self.cfg.train_batch_size_tokens)
            if isinstance(layer_trainer, ResamplingSAETrainer):
                self.saes[name].cfg.metadata.resampling = {
                    "strategy": layer_trainer.resampling.strategy,
                    "events": layer_trainer.resample_log,
                }
        transcoder_set = TranscoderSet(
            {layer: self.saes[f"layer_{layer}"] for layer in self.layers}, self.hooks
        )
        if self.cfg.output_path is not None and self.is_main:
            transcoder_set.save(self.cfg.output_path)
        if self.context is not None:
            torch.distributed.barrier()  # no rank leaves before rank 0 has written the set
        return transcoder_set
