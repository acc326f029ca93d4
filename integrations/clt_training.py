"""Train, save, load and splice cross-layer transcoders (:mod:`~sdl_anchor.integrations.cross_layer_transcoder`)
on a TransformerLens model, as transcoder sets are trained (:mod:`~sdl_anchor.integrations.transcoder_set`).

* :class:`CrossLayerTranscoderRunner` reads every chosen layer's input and output hook (by default
  ``blocks.{L}.ln2.hook_normalized -> blocks.{L}.hook_mlp_out``) from SAELens's multi-hook
  ``ActivationsStore``, one model pass per batch, and hands the trainer ``(x_in, x_out)`` pairs, each the
  layers' activations concatenated in layer order (:func:`clt_batches`);
* :class:`CLTTrainer` is our ``PairedSAETrainer`` (SAELens's trainer: Adam, schedules, coefficient warm-ups,
  NaN stops, W&B) with its dead-latent counters sized for all ``n_layers * d_sae`` latents;
* :func:`evaluate_spliced_clt` replaces every layer's MLP output by the CLT's reconstruction in one forward
  pass (each layer's latents computed from that pass's own input at that layer, so later layers see the
  replaced outputs: circuit-tracer's replacement model without error terms) and reports the CE loss
  recovered against zero-ablating the same outputs, and each layer on its own, with explained variance;
* :class:`CLTBundle` saves a trained CLT as one SAELens-format folder (``cfg.json``,
  ``sae_weights.safetensors``, architecture ``cross_layer_transcoder``) plus ``manifest.json`` (layers, hooks,
  widths), written to a temporary folder and renamed when complete, and loads it back.

With ``resampling=ResamplingConfig(...)`` dead latents are resampled layer by layer
(:class:`~sdl_anchor.integrations.clt_resampling.CLTResamplingTrainer`).

Under ``torchrun`` the runner trains data-parallel as :class:`~sdl_anchor.integrations.coder_runner.
CoderTrainingRunner` does (:mod:`~sdl_anchor.integrations.distributed`): every rank checks it got the same
config, reads its own shard of the dataset and ``train_batch_size_tokens / world_size`` rows per step;
gradients are averaged by DDP, the dead-latent statistics of all ``n_layers * d_sae`` latents all-reduced
every step, a resampling event decided on rank 0 from every rank's pool and broadcast
(:class:`DistributedCLTTrainer`, :class:`~sdl_anchor.integrations.clt_resampling.
DistributedCLTResamplingTrainer`); BatchTopK chooses its latents within each rank's rows and the ranks keep
rank 0's thresholds (so ``metadata.train_batch_size_tokens``, the batch a BatchTopK CLT's conversion to
per-latent thresholds assumes, records the per-rank batch). Rank 0 alone logs to W&B and saves the CLT.

Not supported yet (refused with an error): merging duplicate latents (``duplicate_cosine``) and resuming.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens.saes.sae import SAE, TrainingSAE, TrainingSAEConfig
from typing_extensions import override

from sdl_anchor.anchoring.clt_anchors import CLTAnchors
from sdl_anchor.integrations.coder_hooks import check_coder_hooks
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig, CoderTrainingRunner, HfDataset
from sdl_anchor.integrations.compat import set_sae_metadata
from sdl_anchor.integrations.cross_layer_transcoder import CLT_INFERENCE_ARCHITECTURE, CLTConfigFields
from sdl_anchor.integrations.distributed import DistributedTrainerMixin, init_distributed, local_batch_size
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.sparse_step import record_kernels
from sdl_anchor.integrations.splice import evaluate_spliced_layers
from sdl_anchor.integrations.transcoder_set import (
    DEFAULT_LAYER_HOOKS,
    LayerSpliceEvaluator,
    layer_hooks,
    resolve_layers,
)
from sdl_anchor.io import read_json, write_json
from sdl_anchor.resampling import ResamplingConfig

MANIFEST = "manifest.json"
ANCHORS_FILE = "clt_anchors.safetensors"
CLT_FORMAT = "sdl-anchor cross-layer transcoder"
CLT_FORMAT_VERSION = 1


def clt_batches(
    store: Any, layers: Sequence[int], hooks: Sequence[str]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x_in, x_out)`` per batch: every layer's input hook, and every layer's output hook, concatenated in
    layer order (``[batch, n_layers * d]``), all from the same model pass."""
    for batch in store.get_multi_hook_data_loader():
        names = [layer_hooks(layer, hooks) for layer in layers]
        yield (
            torch.cat([batch[input_hook] for input_hook, _ in names], dim=-1),
            torch.cat([batch[output_hook] for _, output_hook in names], dim=-1),
        )


class CLTTrainer(PairedSAETrainer):
    """``PairedSAETrainer`` whose firing counters cover all ``n_layers * d_sae`` latents of a CLT (SAELens
    sizes them by ``cfg.d_sae``, which is per layer for a CLT)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sae.cfg, CLTConfigFields):
            raise ValueError(f"CLTTrainer trains cross-layer transcoders, not {self.sae.cfg.architecture()}")
        self.act_freq_scores = torch.zeros(self.sae.n_latents, device=self.cfg.device)
        self.n_forward_passes_since_fired = torch.zeros(self.sae.n_latents, device=self.cfg.device)

    @override
    @torch.no_grad()
    def _reset_running_sparsity_stats(self) -> None:
        self.act_freq_scores = torch.zeros(self.sae.n_latents, device=self.cfg.device)
        self.n_frac_active_samples = 0


class DistributedCLTTrainer(DistributedTrainerMixin, CLTTrainer):
    """:class:`CLTTrainer` under torchrun (:mod:`~sdl_anchor.integrations.distributed`)."""


@dataclasses.dataclass
class CLTBundle:
    """A CLT with the model layers its positions stand for and the hooks (inside each block) it reads and
    writes."""

    coder: Any
    layers: list[int]
    hooks: tuple[str, str] = DEFAULT_LAYER_HOOKS
    anchors: CLTAnchors | None = None  # the anchors it was trained with (saved beside it, ANCHORS_FILE)

    def __post_init__(self) -> None:
        if self.anchors is None:
            self.anchors = getattr(self.coder, "anchors", None)
        if self.anchors is not None:
            cfg = self.coder.cfg
            self.anchors.check_fits(cfg.n_layers, cfg.d_in, cfg.d_out, cfg.d_sae)
        self._check_layers()

    def _check_layers(self) -> None:
        if len(self.layers) != self.coder.cfg.n_layers:
            raise ValueError(
                f"{len(self.layers)} layers given for a CLT over {self.coder.cfg.n_layers} layers"
            )

    def manifest(self) -> dict[str, Any]:
        cfg = self.coder.cfg
        training = cfg.metadata.training_architecture if cfg.metadata else None
        return {
            "format": CLT_FORMAT,
            "version": CLT_FORMAT_VERSION,
            "layers": list(self.layers),
            "input_hook": self.hooks[0],
            "output_hook": self.hooks[1],
            "architecture": training or cfg.architecture(),
            "activation": getattr(cfg, "activation", None) or cfg.get_inference_sae_cfg_dict()["activation"],
            "n_layers": cfg.n_layers,
            "d_in": cfg.d_in,
            "d_out": cfg.d_out,
            "d_sae": cfg.d_sae,
            "model_name": cfg.metadata.model_name if cfg.metadata else None,
            "anchors": None if self.anchors is None else ANCHORS_FILE,
        }

    def save(self, folder: str | Path) -> Path:
        """``folder/cfg.json`` + ``sae_weights.safetensors`` (SAELens's format, inference architecture
        ``cross_layer_transcoder``) and ``folder/manifest.json``, written beside ``folder`` and renamed into
        place only when complete."""
        folder = Path(folder)
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            saver = getattr(self.coder, "save_inference_model", self.coder.save_model)
            saver(str(partial))
            if self.anchors is not None:
                self.anchors.save(partial / ANCHORS_FILE)
            write_json(partial / MANIFEST, self.manifest())
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> CLTBundle:
        """A saved CLT (``SAE.load_from_disk``) and its manifest; errors name what is missing or malformed."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"cross-layer transcoder {folder} does not exist")
        manifest = check_clt_manifest(
            read_json(folder / MANIFEST, "cross-layer transcoder manifest"), folder / MANIFEST
        )
        if not (folder / "cfg.json").is_file():
            raise FileNotFoundError(
                f"cross-layer transcoder {folder} has a manifest but no cfg.json; train it again"
            )
        import sdl_anchor  # noqa: F401  (registers cross_layer_transcoder)

        coder = SAE.load_from_disk(str(folder), device=device)
        if coder.cfg.architecture() != CLT_INFERENCE_ARCHITECTURE or coder.cfg.n_layers != len(
            manifest["layers"]
        ):
            raise ValueError(
                f"{folder}: cfg.json holds a {coder.cfg.architecture()} over {getattr(coder.cfg, 'n_layers', '?')} "
                f"layers, but the manifest lists layers {manifest['layers']}; the folder is inconsistent"
            )
        anchors = None
        if manifest.get("anchors") is not None:
            if manifest["anchors"] != ANCHORS_FILE or not (folder / ANCHORS_FILE).is_file():
                raise ValueError(
                    f"{folder}: the manifest names anchors {manifest['anchors']!r}, but {ANCHORS_FILE} is not "
                    "there; restore it or save the CLT again"
                )
            anchors = CLTAnchors.load(folder / ANCHORS_FILE, device)
        return cls(
            coder, list(manifest["layers"]), (manifest["input_hook"], manifest["output_hook"]), anchors
        )


def check_clt_manifest(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """``manifest`` if it is a CLT's (:meth:`CLTBundle.manifest`), else a ValueError naming ``path`` and the
    key that is wrong."""
    problem = None
    layers = manifest.get("layers")
    if manifest.get("format") != CLT_FORMAT:
        problem = f"its format is {manifest.get('format')!r}, not {CLT_FORMAT!r}"
    elif not isinstance(layers, list) or not layers:
        problem = f"'layers' must be a non-empty list of layer numbers, got {layers!r}"
    elif not all(isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in layers):
        problem = f"'layers' must hold non-negative integers, got {layers!r}"
    elif layers != sorted(set(layers)):
        problem = f"'layers' must be increasing and distinct, got {layers!r}"
    else:
        for key in ("input_hook", "output_hook"):
            if not isinstance(manifest.get(key), str) or not manifest[key]:
                problem = (
                    f"{key!r} must be a hook name such as 'ln2.hook_normalized', got {manifest.get(key)!r}"
                )
                break
    if problem is not None:
        raise ValueError(
            f"cross-layer transcoder manifest: {path} is malformed: {problem}. It is written by `sdl-anchor train "
            "--architecture ..._clt --layers ...`; train the CLT again or restore the file"
        )
    return manifest


@torch.no_grad()
def evaluate_spliced_clt(
    coder: Any,
    model: Any,
    token_batches: torch.Tensor | Iterable[torch.Tensor],
    layers: Sequence[int],
    hooks: Sequence[str] = DEFAULT_LAYER_HOOKS,
) -> dict[str, Any]:
    """CE loss recovered with every layer's output replaced by the CLT's reconstruction at once (``"clt"``),
    and with each layer alone replaced (``"layers"``; its reconstruction uses the latents of every layer up
    to it, from the same pass), against zero-ablating the same outputs; explained variance per layer on the
    clean pass's activations."""
    layers = list(layers)
    if len(layers) != coder.cfg.n_layers:
        raise ValueError(f"{len(layers)} layers given for a CLT over {coder.cfg.n_layers} layers")
    outputs = [layer_hooks(layer, hooks)[1] for layer in layers]

    def reconstructions(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x_in = torch.stack([cache[layer_hooks(layer, hooks)[0]] for layer in layers], dim=-2)
        x_out = torch.stack([cache[name] for name in outputs], dim=-2)
        recon = coder.decode_layers(coder.encode_layers(x_in.to(coder.device))).to(x_out)
        return [(recon[..., p, :], x_out[..., p, :]) for p in range(len(layers))]

    return evaluate_spliced_layers(
        model,
        token_batches,
        layers=layers,
        cached_hooks=[n for layer in layers for n in layer_hooks(layer, hooks)],
        output_hooks=outputs,
        splice_hooks=lambda positions: _splice_hooks(coder, layers, hooks, positions),
        reconstructions=reconstructions,
        name="clt",
        layer_loss_key="ce_loss_with_layer_spliced",
    )


def _splice_hooks(
    coder: Any, layers: Sequence[int], hooks: Sequence[str], replaced: Iterable[int]
) -> list[tuple[str, Any]]:
    """Hooks that, in one forward pass, encode each layer's input as the pass reaches it, add what its
    latents write to that layer and every later one, and replace the outputs of the layer positions in
    ``replaced`` by the sum written to them plus ``b_dec``."""
    written: dict[int, torch.Tensor] = {}
    replaced = set(replaced)

    def reader(p: int) -> Any:
        def read(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            if p == 0:
                written.clear()
            acts = coder.encode_layer(activation.to(coder.device), p)
            contribution = coder.layer_contribution(acts, p)  # [..., n_layers - p, d_out]
            for offset in range(contribution.shape[-2]):
                previous = written.get(p + offset)
                written[p + offset] = contribution[..., offset, :] + (0 if previous is None else previous)
            return activation

        return read

    def writer(p: int) -> Any:
        def write(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            output = written[p] + coder.b_dec[p]
            return output.to(activation.device, activation.dtype).reshape(activation.shape)

        return write

    result = []
    for p, layer in enumerate(layers):
        input_hook, output_hook = layer_hooks(layer, hooks)
        result.append((input_hook, reader(p)))
        if p in replaced:
            result.append((output_hook, writer(p)))
    return result


@dataclasses.dataclass
class SplicedCLTEvaluator(LayerSpliceEvaluator):
    """The trainer's evaluator: :func:`evaluate_spliced_clt` on fresh token batches from the store, flattened
    to ``clt/...`` and ``layer_L/...`` keys."""

    def __call__(self, sae: Any, data_provider: Any = None, activation_scaler: Any = None) -> dict[str, Any]:
        batches = self.token_batches()
        was_training = sae.training
        sae.eval()
        try:
            result = evaluate_spliced_clt(sae, self.model, batches, self.layers, self.hooks)
        finally:
            sae.train(was_training)
        return self.flatten(result, "clt")


class CrossLayerTranscoderRunner(CoderTrainingRunner):
    """Trains one CLT over ``layers`` ("all" or a list) of a model (module docstring); ``cfg.sae`` is a
    ``<activation>_clt`` config whose ``d_in`` / ``d_out`` / ``d_sae`` are per layer (``n_layers`` is set from
    the layers)."""

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
        for flag in ("resume_from_checkpoint", "from_pretrained_path"):
            if getattr(cfg, flag, None) is not None:
                raise ValueError(f"{flag} is not supported for cross-layer transcoders yet; train afresh")
        if len(hooks) != 2:
            raise ValueError(f"hooks must be (input hook, output hook) inside each block, got {list(hooks)}")
        if resampling is not None and resampling.duplicate_cosine is not None:
            raise ValueError("duplicate_cosine is not supported for cross-layer transcoders; leave it unset")
        self.cfg = cfg
        self.resampling = resampling
        self.hooks = (str(hooks[0]), str(hooks[1]))
        sae_dict = cfg.get_training_sae_cfg_dict()
        template = TrainingSAEConfig.from_dict(sae_dict)
        if not isinstance(template, CLTConfigFields):
            raise ValueError(
                f"CrossLayerTranscoderRunner trains a CLT architecture (e.g. batchtopk_clt), got {template.architecture()}"
            )
        cfg.hook_names = [cfg.hook_name]  # resolved below, once the model's layers are known
        self.model = self._load_model(override_model)
        self.layers = resolve_layers(layers, self.model.cfg.n_layers)
        if template.n_layers not in (1, len(self.layers)):
            raise ValueError(
                f"the CLT config has n_layers={template.n_layers} but {len(self.layers)} layers were chosen "
                f"({self.layers}); leave n_layers unset, the runner sets it from the layers"
            )
        cfg.hook_names = [name for layer in self.layers for name in layer_hooks(layer, self.hooks)]
        cfg.hook_name = cfg.hook_names[0]
        hook_d_ins: dict[str, int] = {}
        for layer in self.layers:
            hook_d_ins |= check_coder_hooks(
                self.model, layer_hooks(layer, self.hooks), template, "transcoder"
            )
        self.context = init_distributed(cfg.device)
        self.activations_store = self._activation_store(override_dataset, hook_d_ins)
        torch.manual_seed(cfg.seed)
        config = TrainingSAEConfig.from_dict({**sae_dict, "n_layers": len(self.layers)})
        self.sae = TrainingSAE.from_dict(config.to_dict()).to(cfg.device)
        self.evaluator = SplicedCLTEvaluator(  # type: ignore[assignment]
            self.model, self.activations_store, self.layers, self.hooks, cfg.n_eval_batches,
            cfg.eval_batch_size_prompts,
        )  # fmt: skip

    def run(self) -> CLTBundle:  # type: ignore[override]
        """Train the CLT (and save it to ``cfg.output_path`` when set); return it with its layers."""
        set_sae_metadata(self)
        self.sae.cfg.metadata.hook_names = list(self.cfg.hook_names)
        self.sae.cfg.metadata.clt_layers = list(self.layers)
        # what the circuit-tracer export reads: the model's layer count (a CLT must cover every layer) and
        # the batch BatchTopK chose its latents over (converting it to per-latent JumpReLU thresholds)
        self.sae.cfg.metadata.model_n_layers = int(self.model.cfg.n_layers)
        batch = self.cfg.train_batch_size_tokens
        if self.context is not None:  # BatchTopK chose within each rank's rows
            batch = local_batch_size(batch, self.context.world_size)
        self.sae.cfg.metadata.train_batch_size_tokens = int(batch)
        record_kernels(self.sae, batch)
        wandb_started = self.start_wandb({**self.cfg.to_dict(), "layers": self.layers})
        kwargs = {
            "cfg": self.cfg.to_sae_trainer_config(),
            "sae": self.sae,
            "data_provider": clt_batches(self.activations_store, self.layers, self.hooks),
            "evaluator": self.evaluator,
            "save_checkpoint_fn": self.save_checkpoint,
        }
        trainer: CLTTrainer
        if self.resampling is None:
            if self.context is None:
                trainer = CLTTrainer(**kwargs)
            else:
                trainer = DistributedCLTTrainer(**kwargs, context=self.context)
        else:
            from sdl_anchor.integrations.clt_resampling import (
                CLTResamplingTrainer,
                DistributedCLTResamplingTrainer,
            )

            if self.context is None:
                trainer = CLTResamplingTrainer(**kwargs, resampling=self.resampling)
            else:
                trainer = DistributedCLTResamplingTrainer(
                    **kwargs, resampling=self.resampling, context=self.context
                )
        try:
            self.run_trainer_with_interruption_handling(trainer)
        finally:
            if wandb_started:
                wandb.finish()
        if isinstance(trainer, DistributedTrainerMixin):
            trainer.unwrap_sae()
        if self.resampling is not None:
            self.sae.cfg.metadata.resampling = {
                "strategy": self.resampling.strategy,
                "events": trainer.resample_log,  # type: ignore[attr-defined]
            }
        bundle = CLTBundle(self.sae, self.layers, self.hooks)
        if self.cfg.output_path is not None and self.is_main:
            bundle.save(self.cfg.output_path)
        if self.context is not None:
            torch.distributed.barrier()  # no rank leaves before rank 0 has written the CLT
        return bundle
