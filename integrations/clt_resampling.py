"""Dead-latent resampling for cross-layer transcoders: :class:`CLTResamplingTrainer`.

Our :class:`~sdl_anchor.integrations.resampling_trainer.ResamplingSAETrainer` (its schedule, dead-latent
counts, input pool, learning-rate re-warm-up, checkpointed state and W&B records), with each event run
layer by layer on the CLT's own view of that layer. A latent of layer ``l`` reads layer ``l``'s input and
writes to layers ``l, l + 1, ...``, so for its layer the resampling strategy
(:func:`~sdl_anchor.resampling.theory_resample` or :func:`~sdl_anchor.resampling.anthropic_resample`, unchanged)
sees:

* encoder inputs: layer ``l``'s inputs in the pool, ``[P, d_in]``;
* targets: the outputs of layers ``l ..`` minus their ``b_dec``, concatenated, ``[P, (n_layers - l) * d_out]``,
  the space ``W_dec[l]`` (flattened to ``[d_sae, (n_layers - l) * d_out]``) writes to;
* loss: each input's squared error over layers ``l ..``; the latents owning an input: layer ``l``'s latents
  within ``DOMINANCE`` of its largest, as for other coders;
* weights: ``W_enc[l]``, ``b_enc[l]`` and the flattened ``W_dec[l]``.

Only layer ``l``'s slices of ``W_enc``, ``b_enc``, ``threshold`` and its own ``W_dec[l]`` are written, and
Adam's moments are zeroed for exactly those slices; the decoder keeps its block lower-triangular shape. An
anchored CLT's anchored latents (the first ``k_l`` of each layer ``l``) are never resampled, nor split by the
theory strategy (``frozen``), as for the other coders. Not supported: ``duplicate_cosine`` (merging co-firing
copies).

Under torchrun, :class:`DistributedCLTResamplingTrainer` decides each event on rank 0 from every rank's pool
rows and broadcasts the per-layer updates, as :mod:`~sdl_anchor.integrations.distributed` does for the other
coders.
"""

from __future__ import annotations

from typing import Any

import torch

from sdl_anchor.integrations.clt_training import CLTTrainer
from sdl_anchor.integrations.distributed import DistributedResamplingSAETrainer
from sdl_anchor.integrations.resampling_trainer import DOMINANCE, LOSS_SAMPLE, ResamplingSAETrainer
from sdl_anchor.resampling import (
    ResamplePool,
    ResampleUpdate,
    anthropic_resample_weights,
    reset_adam_state,
    theory_resample,
)


class CLTResamplingTrainer(CLTTrainer, ResamplingSAETrainer):
    """Resamples a CLT's dead latents layer by layer (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.resampling.duplicate_cosine is not None:
            raise ValueError(
                "duplicate_cosine (merging co-firing copies) is not supported for CLTs; leave it unset"
            )
        n = self.sae.n_latents
        self.tokens_since_fired = torch.zeros(n, device=self.cfg.device, dtype=torch.long)
        self.parked = torch.zeros(n, device=self.cfg.device, dtype=torch.bool)

    @property
    def anchored_latents(self) -> int:
        """0: a CLT's anchored latents are the first ``k_l`` of each layer, left out by :meth:`dead_latents`
        and frozen per layer, not the first ``k`` of the flat latent list."""
        return 0

    def dead_latents(self) -> torch.Tensor:
        """The base's dead latents (flat, layer-major) without each layer's anchored ones."""
        dead = super().dead_latents()
        ks = torch.tensor(self.sae.anchor_ks, device=dead.device)
        d_sae = self.sae.cfg.d_sae
        return dead[(dead % d_sae) >= ks[dead // d_sae]]

    @torch.no_grad()
    def _clt_pass(
        self, x_in: torch.Tensor, target: torch.Tensor, chunk: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents [P, n_layers, d_sae], squared error [P, n_layers])`` over the pool, in chunks."""
        sae, L = self.sae, self.sae.n_layers
        acts, errors = [], []
        for start in range(0, x_in.shape[0], chunk):
            x = sae.split_layers(x_in[start : start + chunk], sae.cfg.d_in, "inputs")
            t = sae.split_layers(target[start : start + chunk], sae.cfg.d_out, "targets")
            a = sae.encode_layers(x)
            acts.append(a)
            errors.append((t - sae.decode_layers(a)).pow(2).sum(dim=-1))
        return torch.cat(acts).view(-1, L, sae.cfg.d_sae), torch.cat(errors)

    def _pool_loss(self, x_in: torch.Tensor, target: torch.Tensor) -> float:
        return float(self._clt_pass(x_in, target)[1].sum(dim=-1).mean())

    @torch.no_grad()
    def _resample_on(  # type: ignore[override]
        self, x_in: torch.Tensor, target: torch.Tensor
    ) -> tuple[dict[str, float], list[tuple[int, ResampleUpdate]]]:
        """Each layer's dead latents resampled from that layer's view of the pool (module docstring); returns
        the record and the ``(layer, update)`` pairs applied."""
        sae, d_sae = self.sae, self.sae.cfg.d_sae
        dead = self.dead_latents()
        record = {
            "resample/events": float(len(self.resample_log) + 1),
            "resample/dead_before": float(dead.numel()),
        }
        n_scored = min(LOSS_SAMPLE, x_in.shape[0])
        record["resample/loss_before"] = self._pool_loss(x_in[:n_scored], target[:n_scored])
        counts = {"latents": 0, "split": 0, "fallback": 0}
        applied: list[tuple[int, ResampleUpdate]] = []
        if dead.numel():
            acts, errors = self._clt_pass(x_in, target)
            inputs = sae.split_layers(x_in, sae.cfg.d_in, "inputs")
            targets = sae.split_layers(target, sae.cfg.d_out, "targets") - sae.b_dec.detach()
            for layer in range(sae.n_layers):
                layer_dead = dead[dead // d_sae == layer] % d_sae
                if not layer_dead.numel():
                    continue
                layer_acts = acts[:, layer]
                owner = (layer_acts > 0) & (layer_acts >= DOMINANCE * layer_acts.amax(dim=-1, keepdim=True))
                rows, latents = torch.nonzero(owner, as_tuple=True)
                pool = ResamplePool.from_pairs(
                    inputs[:, layer], targets[:, layer:].flatten(1), errors[:, layer:].sum(dim=-1), rows, latents,
                    d_sae,
                )  # fmt: skip
                update = self._layer_update(layer, layer_dead, pool)
                if update.latents.numel():
                    self._apply_layer(layer, update)
                    applied.append((layer, update))
                counts["latents"] += update.n_dead_resampled
                counts["split"] += update.n_split
                counts["fallback"] += update.n_fallback
            record["resample/loss_after"] = self._pool_loss(x_in[:n_scored], target[:n_scored])
        else:
            record["resample/loss_after"] = record["resample/loss_before"]
        record["resample/latents"] = float(counts["latents"])
        record["resample/split"] = float(counts["split"])
        record["resample/fallback"] = float(counts["fallback"])
        return record, applied

    def _layer_update(self, layer: int, dead: torch.Tensor, pool: ResamplePool) -> ResampleUpdate:
        """The configured strategy on layer ``layer``'s weights and pool."""
        config, sae = self.resampling, self.sae
        W_enc, b_enc = sae.W_enc[layer].detach(), sae.b_enc[layer].detach()
        W_dec = sae.W_dec[layer].detach().flatten(1)
        if config.strategy == "theory":
            return theory_resample(
                dead, pool, W_enc, b_enc, W_dec, n_clusters=config.n_clusters, merge_cosine=config.merge_cosine,
                min_cluster_fraction=config.min_cluster_fraction, encoder_scale=config.encoder_scale,
                generator=self._generator, frozen=self.sae.anchor_ks[layer],
            )  # fmt: skip
        return anthropic_resample_weights(dead, pool, W_enc, W_dec, config.encoder_scale, self._generator)

    @torch.no_grad()
    def _apply_layer(self, layer: int, update: ResampleUpdate) -> None:
        """Write layer ``layer``'s slices, zero Adam's moments of exactly those slices, reset the counters."""
        sae = self.sae
        latents = update.latents.to(sae.W_enc.device)
        sae.W_enc[layer][:, latents] = update.encoder.to(sae.W_enc.dtype)
        sae.b_enc[layer][latents] = update.encoder_bias.to(sae.b_enc.dtype)
        sae.W_dec[layer][latents] = update.decoder.to(sae.W_dec[layer].dtype).view(
            latents.numel(), -1, sae.cfg.d_out
        )
        threshold = getattr(sae, "threshold", None)
        if isinstance(threshold, torch.nn.Parameter):
            threshold[layer][latents[update.fresh().to(latents.device)]] = float(
                sae.cfg.jumprelu_init_threshold
            )
        # per-layer parameters: the moments of this layer's slice only ([layer] then the latent dimension)
        stacked = [(sae.W_enc, 1), (sae.b_enc, 0)]
        if isinstance(threshold, torch.nn.Parameter):
            stacked.append((threshold, 0))
        reset_adam_state(self.optimizer, stacked, latents, layer=layer)
        reset_adam_state(self.optimizer, [(sae.W_dec[layer], 0)], latents)
        flat = layer * sae.cfg.d_sae + latents
        self.n_forward_passes_since_fired[flat] = 0
        self.tokens_since_fired[flat] = 0


class DistributedCLTResamplingTrainer(DistributedResamplingSAETrainer, CLTResamplingTrainer):
    """:class:`CLTResamplingTrainer` under torchrun (:mod:`~sdl_anchor.integrations.distributed`): rank 0
    decides each event from every rank's pool, layer by layer, and broadcasts the ``(layer, update)`` pairs;
    every other rank applies them to the same slices, with the same Adam resets."""

    def _update_to(self, update: Any, device: torch.device) -> Any:
        one_layer = super()._update_to  # a ResampleUpdate to device
        return [(layer, one_layer(layer_update, device)) for layer, layer_update in update]

    def _apply_decided(self, update: Any) -> None:
        for layer, layer_update in update:
            self._apply_layer(layer, layer_update)
