"""A cross-layer transcoder's training step against the per-layer transcoder set's, and its memory (issue 36).

Both train ``n_layers`` layers at the same per-layer widths (``d_in = d_out = d``, ``d_sae`` latents per
layer) on the same batches: the CLT (``<activation>_clt``, :class:`~sdl_anchor.integrations.clt_training.CLTTrainer`)
takes every layer's ``(x_in, x_out)`` concatenated, the set takes one ``<activation>_transcoder`` step per
layer on that layer's slice (as SAELens's ``MultiSAETrainer`` steps a set, one trainer per layer). Both take
the dense step (the TopK family's sparse-backward step is switched off on both sides, so the two count the same
kind of work). Steps alternate over identical batches after a warm-up (``eval/step_timing.py``); the time ratio
is the median over rounds of CLT / set.

The TopK family's sparse-backward CLT step (:mod:`~sdl_anchor.integrations.clt_sparse_step`) against the dense
CLT step (:func:`measure_sparse_step`): the same CLT weights, each side under its own ``CLTTrainer`` (torch's
fused Adam), stepped alternately on the same batches in the same process; the ratio is the median over rounds of
sparse / dense.

FLOPs are counted analytically from the shapes: matmul work of the encoder (forward and weight gradient; the
inputs need no gradient) and the decoder (forward, weight and latent gradients), per token
``4 d_in d_sae`` per layer for every encoder and ``6 d_sae d_out`` per (source layer, target layer) pair
for every decoder; the set has ``n_layers`` decoder blocks, the CLT ``n_layers (n_layers + 1) / 2``, so its
decoder does ``(n_layers + 1) / 2`` times the set's work (``decoder_flop_ratio``). Elementwise work, the
activation's selection and the AuxK loss are not counted.

Memory: parameters and Adam's two moments (what the trainer holds between steps) and the gradients (held
during a step), computed from the shapes for the paper's width (GPT-2 small's 12 layers, ``d_model = 768``,
16,384 latents per layer, float32) and, where it fits, measured at ``memory_n_layers`` layers of that width:
the bytes of the CLT's parameters and of its optimiser's state after one step (tensor sizes, not the
process's resident memory), against the computed figure for that shape.

``python -m sdl_anchor.eval.clt_step_time`` prints both.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig

from sdl_anchor.eval.step_timing import paired_ratio, step_seconds, trainer_for_timing

FLOAT_BYTES = 4
PAPER_SHAPE = {"n_layers": 12, "d": 768, "d_sae": 16_384}  # GPT-2 small, the paper's 16k width per layer
SIZES = {
    "activation": "batchtopk", "n_layers": 4, "d": 128, "d_sae": 2048, "k": 32, "batch_size": 512, "steps": 6,
    "memory_n_layers": 2,
}  # fmt: skip


def matmul_flops_per_token(n_layers: int, d_in: int, d_sae: int, d_out: int, cross_layer: bool) -> int:
    """Analytic matmul FLOPs of one training step per token (module docstring): a CLT (``cross_layer``)
    or a set of ``n_layers`` per-layer transcoders."""
    decoder_blocks = n_layers * (n_layers + 1) // 2 if cross_layer else n_layers
    return 4 * n_layers * d_in * d_sae + 6 * decoder_blocks * d_sae * d_out


def parameter_count(n_layers: int, d_in: int, d_sae: int, d_out: int, cross_layer: bool) -> int:
    """Parameters of a CLT or of a per-layer transcoder set: encoders, decoders and biases."""
    decoder_blocks = n_layers * (n_layers + 1) // 2 if cross_layer else n_layers
    return n_layers * (d_in * d_sae + d_sae + d_out) + decoder_blocks * d_sae * d_out


def memory_bytes(n_layers: int, d: int, d_sae: int, cross_layer: bool) -> dict[str, int]:
    """Computed float32 bytes: parameters, Adam's moments, gradients, and their sums (``between_steps`` =
    parameters + moments; ``peak`` adds the gradients)."""
    params = parameter_count(n_layers, d, d_sae, d, cross_layer) * FLOAT_BYTES
    return {
        "parameters": params,
        "adam_moments": 2 * params,
        "gradients": params,
        "between_steps": 3 * params,
        "peak": 4 * params,
    }


def _clt(
    activation: str, n_layers: int, d: int, d_sae: int, k: int, device: str, sparse_backward: bool = False
) -> Any:
    """An ``<activation>_clt`` (seeded); the TopK family's takes the sparse step only with ``sparse_backward``."""
    from sae_lens.registry import get_sae_training_class

    sae_class, config_class = get_sae_training_class(f"{activation}_clt")
    extra: dict[str, Any] = {"k": k} if "topk" in activation else {}
    if "sparse_backward" in config_class.__dataclass_fields__:
        extra["sparse_backward"] = sparse_backward
    elif sparse_backward:
        raise ValueError(
            f"{activation}_clt has no sparse-backward step (the TopK family's: {SPARSE_ACTIVATIONS})"
        )
    torch.manual_seed(0)
    return sae_class(config_class(d_in=d, d_out=d, d_sae=d_sae, n_layers=n_layers, device=device, **extra))


def _transcoder(activation: str, d: int, d_sae: int, k: int, device: str) -> Any:
    """One layer of the set: ``<activation>_transcoder``, dense step."""
    from sae_lens.registry import get_sae_training_class

    sae_class, config_class = get_sae_training_class(f"{activation}_transcoder")
    extra: dict[str, Any] = {"k": k} if "topk" in activation else {}
    if "sparse_backward" in config_class.__dataclass_fields__:
        extra["sparse_backward"] = False
    return sae_class(config_class(d_in=d, d_out=d, d_sae=d_sae, device=device, **extra))


def _clt_trainer(sae: Any, batch_size: int, device: str) -> Any:
    from sdl_anchor.integrations.clt_training import CLTTrainer

    config = SAETrainerConfig(
        total_training_samples=10**9,
        train_batch_size_samples=batch_size,
        lr_end=3e-5,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return CLTTrainer(cfg=config, sae=sae, data_provider=iter(()))


class _SetStep:
    """One step of a per-layer transcoder set: each layer's trainer on its layer's slice of the batch."""

    def __init__(self, trainers: list[Any], d: int) -> None:
        self.trainers = trainers
        self.d = d

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x_in, x_out = batch
        for layer, trainer in enumerate(self.trainers):
            cut = slice(layer * self.d, (layer + 1) * self.d)
            trainer.step((x_in[:, cut], x_out[:, cut]))


def _batches(n_layers: int, d: int, batch_size: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four seeded ``(x_in, x_out)`` batches of every layer's activations, concatenated."""
    generator = torch.Generator(device=device).manual_seed(0)
    return [
        (
            torch.randn(batch_size, n_layers * d, generator=generator, device=device),
            torch.randn(batch_size, n_layers * d, generator=generator, device=device),
        )
        for _ in range(4)
    ]


def measure_step(sizes: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Median step seconds of an ``<activation>_clt`` and of the per-layer set at the same widths, the time
    ratio (median of per-round ratios) and the analytic FLOP ratios."""
    activation, n_layers, d, d_sae = sizes["activation"], sizes["n_layers"], sizes["d"], sizes["d_sae"]
    k, batch_size = sizes.get("k", 32), sizes["batch_size"]
    batches = _batches(n_layers, d, batch_size, device)
    clt = _clt(activation, n_layers, d, d_sae, k, device)
    torch.manual_seed(0)
    layer_trainers = [
        trainer_for_timing(_transcoder(activation, d, d_sae, k, device), batch_size, device)
        for _ in range(n_layers)
    ]
    times = step_seconds(
        {
            "set": (_SetStep(layer_trainers, d), batches),  # type: ignore[dict-item]
            "clt": (_clt_trainer(clt, batch_size, device), batches),
        },
        sizes["steps"],
        device,
    )
    clt_flops = matmul_flops_per_token(n_layers, d, d_sae, d, cross_layer=True) * batch_size
    set_flops = matmul_flops_per_token(n_layers, d, d_sae, d, cross_layer=False) * batch_size
    clt_seconds, set_seconds = statistics.median(times["clt"]), statistics.median(times["set"])
    time_ratio = paired_ratio(times, "clt", "set")
    return {
        "activation": activation,
        "n_layers": n_layers,
        "d": d,
        "d_sae": d_sae,
        "batch_size": batch_size,
        "steps": sizes["steps"],
        "clt_seconds": clt_seconds,
        "set_seconds": set_seconds,
        "time_ratio": time_ratio,
        "time_ratio_rounds": [a / b for a, b in zip(times["clt"], times["set"], strict=True)],
        "clt_flops": clt_flops,
        "set_flops": set_flops,
        "flop_ratio": clt_flops / set_flops,
        "decoder_flop_ratio": (n_layers + 1) / 2,
        "clt_flops_per_second": clt_flops / clt_seconds,
        "set_flops_per_second": set_flops / set_seconds,
        "time_per_flop_ratio": time_ratio / (clt_flops / set_flops),
    }


SPARSE_ACTIVATIONS = ("topk", "batchtopk")  # the CLT activations with a sparse-backward step


def sparse_step_name(activation: str) -> str:
    """The sparse-against-dense row's name: what it times."""
    return f"{activation}_clt sparse step / dense step (same CLT trainer, fused Adam)"


def measure_sparse_step(sizes: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Median step seconds of an ``<activation>_clt`` (TopK or BatchTopK) taking the sparse-backward step and
    of the same CLT, from the same weights, taking the dense step, each under its own ``CLTTrainer`` (fused
    Adam), alternating on the same batches; ``ratio`` is the median of the per-round ratios sparse / dense."""
    activation, n_layers, d, d_sae = sizes["activation"], sizes["n_layers"], sizes["d"], sizes["d_sae"]
    k, batch_size = sizes.get("k", 32), sizes["batch_size"]
    if activation not in SPARSE_ACTIVATIONS:
        raise ValueError(
            f"the sparse-backward CLT step is the TopK family's {SPARSE_ACTIVATIONS}, not {activation!r}"
        )
    batches = _batches(n_layers, d, batch_size, device)
    sparse = _clt(activation, n_layers, d, d_sae, k, device, sparse_backward=True)
    dense = _clt(activation, n_layers, d, d_sae, k, device, sparse_backward=False)
    dense.load_state_dict(sparse.state_dict())
    times = step_seconds(
        {
            "dense": (_clt_trainer(dense, batch_size, device), batches),
            "sparse": (_clt_trainer(sparse, batch_size, device), batches),
        },
        sizes["steps"],
        device,
    )
    return {
        "name": sparse_step_name(activation),
        "ratio": paired_ratio(times, "sparse", "dense"),
        "ratio_rounds": [a / b for a, b in zip(times["sparse"], times["dense"], strict=True)],
        "sparse_seconds": statistics.median(times["sparse"]),
        "dense_seconds": statistics.median(times["dense"]),
        "activation": activation,
        "n_layers": n_layers,
        "d": d,
        "d_sae": d_sae,
        "k": k,
        "batch_size": batch_size,
        "steps": sizes["steps"],
        "optimizer": "torch fused Adam, both steps",
    }


def measured_training_bytes(sae: Any, trainer: Any) -> dict[str, int]:
    """Bytes of the parameters and of the optimiser's state tensors (Adam's moments and step counters), read
    from the tensors themselves."""
    params = sum(p.numel() * p.element_size() for p in sae.parameters())
    state = sum(
        value.numel() * value.element_size()
        for per_param in trainer.optimizer.state.values()
        for value in per_param.values()
        if isinstance(value, torch.Tensor)
    )
    return {"parameters": params, "optimizer_state": state, "between_steps": params + state}


def measure_memory(sizes: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Computed memory at the paper's shape (CLT and set), and the CLT's measured bytes after one step at
    ``memory_n_layers`` layers of the paper's widths (``memory_n_layers = 0``: not measured; ``memory_d`` and
    ``memory_d_sae`` override the widths, for tests)."""
    activation, k = sizes["activation"], sizes.get("k", 32)
    d, d_sae, paper_layers = PAPER_SHAPE["d"], PAPER_SHAPE["d_sae"], PAPER_SHAPE["n_layers"]
    paper_clt = memory_bytes(paper_layers, d, d_sae, cross_layer=True)
    paper_set = memory_bytes(paper_layers, d, d_sae, cross_layer=False)
    result: dict[str, Any] = {
        "activation": activation,
        "paper_shape": dict(PAPER_SHAPE),
        "paper_clt_bytes": paper_clt,
        "paper_set_bytes": paper_set,
        "paper_clt_over_set": paper_clt["between_steps"] / paper_set["between_steps"],
        "computed": "from the shapes, float32",
    }
    n_layers = sizes.get("memory_n_layers", 0)
    d, d_sae = sizes.get("memory_d", d), sizes.get("memory_d_sae", d_sae)  # smaller in tests only
    if n_layers:
        sae = _clt(activation, n_layers, d, d_sae, k, device)
        trainer = _clt_trainer(sae, 64, device)
        generator = torch.Generator(device=device).manual_seed(0)
        x_in, x_out = (torch.randn(64, n_layers * d, generator=generator, device=device) for _ in range(2))
        trainer.step((x_in, x_out))
        measured = measured_training_bytes(sae, trainer)
        computed = memory_bytes(n_layers, d, d_sae, cross_layer=True)
        result |= {
            "measured_n_layers": n_layers,
            "measured_d": d,
            "measured_d_sae": d_sae,
            "measured_bytes": measured,
            "computed_bytes_at_measured_shape": computed,
            "measured_over_computed": measured["between_steps"] / computed["between_steps"],
        }
        del trainer, sae
    return result


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-n-layers", type=int, default=SIZES["memory_n_layers"])
    args = parser.parse_args(argv)
    sizes = {**SIZES, "memory_n_layers": args.memory_n_layers}
    row = measure_step(sizes, args.device)
    print(
        f"{row['activation']}_clt vs a set of {row['n_layers']} {row['activation']}_transcoders "
        f"(d={row['d']}, d_sae={row['d_sae']} per layer, batch {row['batch_size']}): "
        f"CLT {1000 * row['clt_seconds']:.1f} ms, set {1000 * row['set_seconds']:.1f} ms, time ratio "
        f"{row['time_ratio']:.3f}; FLOP ratio {row['flop_ratio']:.3f} (decoder {row['decoder_flop_ratio']:.2f}); "
        f"time per FLOP {row['time_per_flop_ratio']:.3f}"
    )
    if row["activation"] in SPARSE_ACTIVATIONS:
        sparse = measure_sparse_step(sizes, args.device)
        print(
            f"{sparse['name']}: sparse {1000 * sparse['sparse_seconds']:.1f} ms, dense "
            f"{1000 * sparse['dense_seconds']:.1f} ms, ratio {sparse['ratio']:.3f}"
        )
    memory = measure_memory(sizes, args.device)
    clt, shape = memory["paper_clt_bytes"], memory["paper_shape"]
    print(
        f"paper width ({shape['n_layers']} layers, d={shape['d']}, {shape['d_sae']} per layer), computed: "
        f"parameters {_gb(clt['parameters'])}, with Adam's moments {_gb(clt['between_steps'])}, with gradients "
        f"{_gb(clt['peak'])}; {memory['paper_clt_over_set']:.2f}x the set's"
    )
    if "measured_bytes" in memory:
        print(
            f"measured at {memory['measured_n_layers']} layers: {_gb(memory['measured_bytes']['between_steps'])} "
            f"(computed {_gb(memory['computed_bytes_at_measured_shape']['between_steps'])})"
        )


if __name__ == "__main__":
    main()
