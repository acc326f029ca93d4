"""Trains a coder on fixed LRB batches, in one process or as one rank of a torchrun job (then on its
rows of every batch). ``tests/test_distributed.py`` compares the two.

``torchrun --nproc_per_node 2 tests/ddp_worker.py ARCHITECTURE OUT_DIR [--resampling S] [--batch B]
[--config-seed N] [--resume-at S]``: every rank saves its final weights and resampling log to ``OUT_DIR/rank<r>.pt``.
``ARCHITECTURE`` may list several runs, ``ARCH[:RESAMPLING],...`` (one launch trains each in turn): then each
rank saves ``OUT_DIR/<ARCH>.<RESAMPLING>.rank<r>.pt``. A cross-layer transcoder (``..._clt``) spans 2 layers
of ``D / 2``. ``<transcoder>_set`` trains a transcoder set of 2 such transcoders in lockstep
(``MultiCoderTrainer``; layer 1 maps the bench's ``x_out`` back to its ``x_in``)."""

import argparse
import sys
from pathlib import Path

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class

import sdl_anchor as sa
from sdl_anchor.integrations.clt_resampling import CLTResamplingTrainer, DistributedCLTResamplingTrainer
from sdl_anchor.integrations.clt_training import CLTTrainer, DistributedCLTTrainer
from sdl_anchor.integrations.distributed import (
    DistributedPairedSAETrainer,
    DistributedResamplingSAETrainer,
    check_same_config,
    init_distributed,
    local_batch_size,
)
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
from sdl_anchor.integrations.transcoder_set import DistributedMultiCoderTrainer, MultiCoderTrainer
from sdl_anchor.resampling import ResamplingConfig

STEPS = 12
D, D_SAE = 32, 128
CLT_LAYERS = 2  # a CLT reads x_in as 2 layers of D / 2 and writes x_out as 2 layers of D / 2


def batches(kind: str, batch_size: int) -> list:
    """The run's global batches: ``x_in``, or ``(x_in, x_out)`` for a transcoder."""
    bench_kind = {"transcoder": "transcoder", "crosscoder": "crosscoder"}.get(kind, "sae")
    bench = sa.LinearRepresentationBench(
        kind=bench_kind, n_features=64, d_in=D, d_out=D, sparsity=0.9, max_interference=0.5, seed=0
    )
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        b = bench.sample(batch_size, generator)
        x_in, x_out = b.x_in.double(), b.x_out.double()
        out.append((x_in, x_out) if kind == "transcoder" else x_in)
    return out


def build(architecture: str):
    sae_class, config_class = get_sae_training_class(architecture)
    fields = {"d_sae": D_SAE, "dtype": "float64"}
    if architecture.endswith("_clt"):
        fields.update(
            d_in=D // CLT_LAYERS, d_out=D // CLT_LAYERS, n_layers=CLT_LAYERS, d_sae=D_SAE // CLT_LAYERS
        )
    elif "crosscoder" in architecture:
        fields.update(d_in=2 * D, n_sources=2)
    elif "transcoder" in architecture:
        fields.update(d_in=D, d_out=D)
    else:
        fields.update(d_in=D)
    if "topk" in architecture:
        fields["k"] = 4
    if "matryoshka" in architecture:
        fields["matryoshka_widths"] = [32, D_SAE]
    torch.manual_seed(0)
    sae = sae_class(config_class(**fields))
    if architecture.startswith("anchored_"):
        sae.set_anchors(sa.AnchorSet(torch.randn(4, D, generator=torch.Generator().manual_seed(2))))
    return sae


def trainer_config(batch_size: int, checkpoint_path: str | None) -> SAETrainerConfig:
    """The trainer settings every run here shares: STEPS steps of ``batch_size``, a short dead window."""
    return SAETrainerConfig(
        total_training_samples=STEPS * batch_size,
        train_batch_size_samples=batch_size,
        lr=3e-3,
        lr_end=3e-3,
        device="cpu",
        dead_feature_window=4,
        checkpoint_path=checkpoint_path,
        logger=LoggingConfig(log_to_wandb=False),
    )


def train(
    architecture: str, batch_size: int, resampling: str, context=None, resume_at=None, out=None, nan_at=None
):
    """Returns the trained coder and the trainer. With ``resume_at``, trains that many steps, saves a
    checkpoint under ``out``, and finishes in a fresh trainer resumed from it. A ``..._set`` returns
    ``{"layer_0": coder, "layer_1": coder}`` and its ``MultiCoderTrainer`` (no resuming)."""
    if architecture.endswith("_set"):
        return train_set(architecture.removesuffix("_set"), batch_size, resampling, context)
    kind = (
        "transcoder"
        if "transcoder" in architecture or architecture.endswith("_clt")
        else "crosscoder"
        if "crosscoder" in architecture
        else "sae"
    )
    rows = batch_size if context is None else local_batch_size(batch_size, context.world_size)
    start = 0 if context is None else context.rank * rows

    def shard(batch):
        if isinstance(batch, tuple):
            return tuple(t[start : start + rows] for t in batch)
        return batch[start : start + rows]

    sae = build(architecture)
    config = trainer_config(batch_size, None if out is None else str(out / "checkpoints"))
    data = [shard(b) for b in batches(kind, batch_size)]
    if nan_at is not None and (context is None or context.rank == context.world_size - 1):
        data[nan_at - 1] = data[nan_at - 1].clone()
        data[nan_at - 1][0, 0] = float("nan")  # the last rank's rows only
    kwargs = {"cfg": config, "sae": sae, "data_provider": iter(data)}
    if resampling != "none":
        kwargs["resampling"] = ResamplingConfig(
            strategy=resampling, every_n_steps=6, dead_steps=3, pool_size=4 * batch_size, max_events=1
        )
    trainer_classes = {  # (one process, under torchrun), by (CLT, resampling)
        (False, False): (PairedSAETrainer, DistributedPairedSAETrainer),
        (False, True): (ResamplingSAETrainer, DistributedResamplingSAETrainer),
        (True, False): (CLTTrainer, DistributedCLTTrainer),
        (True, True): (CLTResamplingTrainer, DistributedCLTResamplingTrainer),
    }
    single, distributed = trainer_classes[architecture.endswith("_clt"), resampling != "none"]
    if context is None:
        trainer = single(**kwargs)
    else:
        trainer = distributed(**kwargs, context=context)
    if resume_at is None:
        trainer.fit()
        return sae, trainer
    run_steps(trainer, data[:resume_at])
    trainer.save_checkpoint("paused")
    fresh = build(architecture)
    extra = {} if context is None else {"context": context}
    trainer = type(trainer)(**{**kwargs, "sae": fresh}, **extra)
    trainer.load_trainer_state(out / "checkpoints" / "paused")
    fresh.load_weights_from_checkpoint(out / "checkpoints" / "paused")
    run_steps(trainer, data[resume_at:])
    return fresh, trainer


def train_set(architecture: str, batch_size: int, resampling: str, context=None):
    rows = batch_size if context is None else local_batch_size(batch_size, context.world_size)
    start = 0 if context is None else context.rank * rows
    data = [
        {"layer_0": (x_in[start : start + rows], x_out[start : start + rows]),
         "layer_1": (x_out[start : start + rows], x_in[start : start + rows])}
        for x_in, x_out in batches("transcoder", batch_size)
    ]  # fmt: skip
    saes = {"layer_0": build(architecture), "layer_1": build(architecture)}
    config = trainer_config(batch_size, None)
    kwargs = {"cfg": config, "saes": saes, "hook_names": {n: n for n in saes}, "data_provider": iter(data)}
    if resampling != "none":
        kwargs["resampling"] = ResamplingConfig(
            strategy=resampling, every_n_steps=6, dead_steps=3, pool_size=4 * batch_size, max_events=1
        )
    if context is None:
        trainer = MultiCoderTrainer(**kwargs)
    else:
        trainer = DistributedMultiCoderTrainer(**kwargs, context=context)
    trainer.fit()
    return saes, trainer


def outcome(sae, trainer) -> dict:
    """What a rank saves: the weights, resampling log, dead-latent statistics and sample count; a set's
    weights keyed ``layer_L.<name>``, its logs and statistics every layer's in turn."""
    if not isinstance(sae, dict):
        return {
            "state": {name: t.detach().clone() for name, t in sae.state_dict().items()},
            "resample_log": getattr(trainer, "resample_log", []),
            "passes_since_fired": trainer.n_forward_passes_since_fired,
            "act_freq_scores": trainer.act_freq_scores,
            "n_training_samples": trainer.n_training_samples,
        }
    names = sorted(sae)
    layers = [outcome(sae[name], trainer.trainers[name]) for name in names]
    return {
        "state": {f"{names[i]}.{key}": t for i, o in enumerate(layers) for key, t in o["state"].items()},
        "resample_log": [event for o in layers for event in o["resample_log"]],
        "passes_since_fired": torch.cat([o["passes_since_fired"] for o in layers]),
        "act_freq_scores": torch.cat([o["act_freq_scores"] for o in layers]),
        "n_training_samples": trainer.n_training_samples,
    }


def run_steps(trainer, data) -> None:
    """What ``SAETrainer.fit`` does around each step."""
    for batch in data:
        trainer.maybe_reset_sparsity()
        trainer.step(batch)
        trainer.n_training_steps += 1


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("architecture")
    parser.add_argument("out", type=Path)
    parser.add_argument("--resampling", default="none")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--config-seed", type=int, default=None, help="differs per rank when 'rank'")
    parser.add_argument("--resume-at", type=int, default=None, help="save after this many steps, then resume")
    parser.add_argument("--nan-at", type=int, default=None, help="a NaN in the last rank's rows at this step")
    args = parser.parse_args(argv)
    context = init_distributed("cpu")
    assert context is not None, "run me under torchrun"
    config = {"architecture": args.architecture, "batch": args.batch, "resampling": args.resampling}
    if args.config_seed is not None:
        config["seed"] = args.config_seed + context.rank
    check_same_config(config, context)
    runs = [spec.partition(":") for spec in args.architecture.split(",")]
    for architecture, _, resampling in runs:
        try:
            sae, trainer = train(
                architecture, args.batch, resampling or args.resampling, context, args.resume_at, args.out,
                args.nan_at,
            )  # fmt: skip
        except ValueError as err:
            print(f"rank {context.rank}: {err}", file=sys.stderr)
            sys.exit(3)
        name = f"rank{context.rank}.pt"
        if len(runs) > 1:
            name = f"{architecture}.{resampling or args.resampling}.{name}"
        torch.save(outcome(sae, trainer), args.out / name)


if __name__ == "__main__":
    main(sys.argv[1:])
