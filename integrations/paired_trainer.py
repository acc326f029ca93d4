"""``PairedSAETrainer``: SAELens's ``SAETrainer``, extended so that a batch can carry a target.

A data provider may yield ``x`` (SAEs) or ``(x_in, x_out)`` pairs (transcoders). For a pair the trainer
hands ``x_out`` to the coder (``set_training_target``) and runs SAELens's own step on ``x_in``; logging,
schedulers, coefficient warm-ups, dead-latent counts, checkpoints and W&B are SAELens's, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer


class PairedSAETrainer(SAETrainer[Any, Any]):
    """``SAETrainer`` whose ``step`` also accepts ``(x_in, x_out)`` batches."""

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
            return super().step(x_in)
        return super().step(batch)
