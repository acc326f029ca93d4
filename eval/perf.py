"""The performance suite behind ``sdl-anchor bench perf`` (issue 8).

Every figure is a ratio against a baseline measured in the same process on the same data, after a
warm-up, as a median of repeats (CUDA-synchronised on a GPU), because these machines are noisy:

1. ``anchor``: an ``anchored_<activation>`` training step against SAELens's stock ``<activation>`` step,
   after a noise-floor row timing a stock SAE against an identical copy (this machine's error bar); both
   take the dense step, so the row shows what the anchor loss costs.
   ``sparse``: the TopK family's sparse-backward step against SAELens's dense step (one trainer and one
   optimiser, torch's fused Adam, for both), and our TopK step against EleutherAI sparsify's
   ``SparseCoder`` step as its ``Trainer`` runs it (when installed; its bare forward, backward and update
   beside it).
   ``transcoder_set``: a transcoder set of L layers against L single-layer runs (model forward passes, wall
   time).
   ``clt``: a cross-layer transcoder's training step against the per-layer transcoder set's at the same
   per-layer widths (time per analytic matmul FLOP; its decoder does (L + 1) / 2 times the set's work), and
   its parameter + Adam memory, computed from the shapes at the paper's width and measured where it fits,
   and (TopK family) its sparse-backward step against its dense step, same batches, same process
   (``eval/clt_step_time.py``).
2. ``coder``: transcoder and crosscoder steps against a stock SAELens SAE with the same latent count.
3. ``sampling`` / ``feed``: LRB sampling against SAELens's ``ActivationGenerator`` + ``FeatureDictionary``
   (higher is better), and drawing one LRB batch against the SAE training step it feeds.
   ``synth_sampling``: our SynthSAEBench sampler against SAELens's ``SyntheticModel.sample`` on
   SynthSAEBench-16k (built once and cached; higher is better).
4. ``resampling``: one resampling event against one training step at ``d_sae = 16,384``, and the default
   schedule's events amortised over a run.
5. ``absorption``: our first-letter audit against SAEBench's on the same model and SAE (needs a Python with
   ``sae-bench==0.6.0``: ``--saebench-python``; otherwise the row is listed under ``skipped``).
6. ``hardware``: the achieved FLOP rate of a TopK SAE training step against the device's measured matmul
   rate at the encoder's shape, per dtype (bf16 through SAELens's autocast); plus, on the GPU preset, the
   bf16-autocast step against the fp32 step and a ``torch.compile``-d anchored step against the eager one.

``ratio`` is ours / baseline where ``better == "lower"`` and baseline / ours (or achieved / peak) where
``better == "higher"``; ``ok`` compares it with ``target``. Results go to ``perf.json`` (DESIGN.md).
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class

from sdl_anchor.eval.anchor_step_time import random_batches
from sdl_anchor.eval.lrb_throughput import median_seconds
from sdl_anchor.eval.step_timing import median_step_seconds, trainer_for_timing
from sdl_anchor.kernel_choice import (
    KERNELS_ENV,
    choices_made,
    cpu_model,
    dense_product_candidates,
    kernel_override,
)

SECTIONS = (
    "anchor",
    "sparse",
    "coder",
    "transcoder_set",
    "clt",
    "sampling",
    "synth_sampling",
    "feed",
    "resampling",
    "absorption",
    "hardware",
    "autocast",
    "compile",
)

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "anchor": {"d_in": 256, "d_sae": 4096, "batch_size": 1024, "k": 100, "steps": 30},
        "sparse": {"d_in": 768, "d_sae": 16_384, "k": 32, "batch_size": 1024, "steps": 6},
        "coder": {"d": 256, "d_sae": 4096, "batch_size": 1024, "steps": 10, "n_sources": 2},
        "transcoder_set": {
            "n_layers": 4, "d_model": 128, "n_ctx": 64, "d_sae": 512, "k": 16, "training_tokens": 32_768, "repeats": 3,
        },
        "clt": {
            "activation": "batchtopk", "n_layers": 4, "d": 128, "d_sae": 2048, "k": 32, "batch_size": 512, "steps": 6,
            "memory_n_layers": 2,
        },
        "sampling": {"n_features": 16_384, "d": 768, "sparsity": 0.99, "batch_size": 4096, "repeats": 5},
        "synth_sampling": {"num_features": 16_384, "hidden_dim": 768, "batch_size": 1024, "repeats": 5},
        "feed": {"n_features": 4096, "d": 256, "d_sae": 4096, "batch_size": 1024, "steps": 5},
        "resampling": {"d_in": 256, "d_sae": 16_384, "batch_size": 4096, "steps": 3, "total_steps": 10_000},
        "absorption": {"preset": "realistic"},
        "hardware": {"d_in": 256, "d_sae": 4096, "batch_size": 1024, "steps": 10, "dtypes": ["float32"]},
    },
    "gpu": {
        "anchor": {"d_in": 768, "d_sae": 16_384, "batch_size": 4096, "k": 100, "steps": 50},
        "sparse": {"d_in": 768, "d_sae": 16_384, "k": 32, "batch_size": 4096, "steps": 30},
        "coder": {"d": 768, "d_sae": 16_384, "batch_size": 4096, "steps": 50, "n_sources": 2},
        "clt": {
            "activation": "batchtopk", "n_layers": 12, "d": 768, "d_sae": 16_384, "k": 32, "batch_size": 1024,
            "steps": 20, "memory_n_layers": 12,
        },
        "sampling": {"n_features": 16_384, "d": 768, "sparsity": 0.99, "batch_size": 4096, "repeats": 20},
        "synth_sampling": {"num_features": 16_384, "hidden_dim": 768, "batch_size": 1024, "repeats": 20},
        "feed": {"n_features": 16_384, "d": 768, "d_sae": 16_384, "batch_size": 4096, "steps": 20},
        "resampling": {"d_in": 768, "d_sae": 16_384, "batch_size": 4096, "steps": 20, "total_steps": 10_000},
        "absorption": {"preset": "realistic"},
        "hardware": {
            "d_in": 768, "d_sae": 16_384, "batch_size": 4096, "steps": 50, "dtypes": ["bfloat16", "float32"],
        },
        "autocast": {"d_in": 768, "d_sae": 16_384, "batch_size": 4096, "steps": 50},
        "compile": {"d_in": 768, "d_sae": 16_384, "batch_size": 4096, "k": 100, "steps": 50, "backend": "inductor"},
    },
}  # fmt: skip

TARGETS = {
    "anchor": 1.03,  # the anchor loss must cost nothing noticeable
    "sparse": 1.0,  # the sparse-backward step must beat SAELens's dense step, and sparsify's
    "transcoder": 1.05,  # same matmul FLOPs as the stock SAE: only the paired data path may cost
    "transcoder_set_time": 0.6,  # a set of L layers: well under the wall time of L single-layer runs
    "crosscoder_per_flop": 1.05,  # n_sources times the FLOPs: at most that many times the time
    "clt_per_flop": 1.1,  # a CLT step: at most the set's time per matmul FLOP, give or take this machine's noise
    "clt_sparse": 1.0,  # a TopK-family CLT's sparse-backward step must beat its dense step
    "clt_memory": 1.01,  # the CLT holds what its shapes say (parameters + Adam's moments), nothing more
    "sampling": 5.0,
    "synth_sampling": 10.0,  # issue 33: at least 10x SAELens's generator on the same model
    "feed": 0.10,
    "resampling_amortised": 0.01,
    "absorption": 5.0,
    "hardware": 0.5,
    "autocast": 1.0,
    "compile": 1.0,
}


def _row(name: str, section: str, ratio: float, target: float, better: str, **details: Any) -> dict[str, Any]:
    ok = ratio <= target if better == "lower" else ratio >= target
    return {
        "name": name,
        "section": section,
        "ratio": ratio,
        "target": target,
        "ok": bool(ok),
        "better": better,
        **details,
    }


def device_name(device: str) -> str:
    """A human-readable name of the device the suite ran on (on the CPU, its model name)."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    return (
        f"cpu {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads of {os.cpu_count()} cores "
        f"(torch {torch.__version__})"
    )


def describe_kernel_choice(choice: dict[str, Any]) -> str:
    """One line for a kernel choice (:mod:`sdl_anchor.kernel_choice`): what, for which shape, and why."""
    shape = choice["key"].rsplit("|", 1)[-1].replace(",", ", ").replace("=", " ~")
    line = f"{choice['kernel']} ({shape}): {choice['choice']}, {choice['source']}"
    if choice["seconds"]:
        timed = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in choice["seconds"].items())
        line += f" (medians {timed}; calibration took {choice['calibration_seconds']:.2f} s)"
    return line


def anchor_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.anchor_step_time import measure_activation, measure_noise_floor
    from sdl_anchor.integrations.registry import ANCHORED_ACTIVATIONS

    null = measure_noise_floor(preset, device)
    rows = [_row(null["name"], "anchor", null["ratio"], TARGETS["anchor"], "lower")]
    for activation in ANCHORED_ACTIVATIONS:
        row = measure_activation(activation, preset, device)
        details = {k: v for k, v in row.items() if k not in ("name", "ratio", "target", "ok", "better")}
        rows.append(_row(row["name"], "anchor", row["ratio"], TARGETS["anchor"], "lower", **details))
    return rows


def sparse_rows(preset: dict[str, Any], device: str) -> tuple[list[dict[str, Any]], str | None]:
    """The sparse-backward step against SAELens's dense step, and against sparsify's (when installed); on
    the CPU, first its dense product on the calibrated kernel against the other candidate."""
    from sdl_anchor.eval.sparse_step_time import (
        SPARSE_ARCHITECTURES,
        measure_against_dense,
        measure_against_sparsify,
        measure_dense_product,
        sparsify_missing,
    )

    rows = []
    if len(dense_product_candidates(torch.float32, torch.device(device).type)) > 1:  # else addmm alone
        row = measure_dense_product(preset, device)
        note = (
            f"{row['chosen']} ({row['choice_source']}) against {row['other']}; noise floor {row['noise_floor']:.3f} "
            f"(the chosen kernel against itself, same rounds)"
        )
        if row["within_noise"] and row["ratio"] > TARGETS["sparse"]:
            note += ": the ratio is within it, so the two kernels tie here and either choice is right"
        product = _row(
            row.pop("name"), "sparse", row.pop("ratio"), TARGETS["sparse"], "lower", note=note, **row
        )
        product["ok"] = product["ok"] or product["within_noise"]
        rows.append(product)
    for architecture in SPARSE_ARCHITECTURES:
        row = measure_against_dense(architecture, preset, device)
        rows.append(_row(row.pop("name"), "sparse", row.pop("ratio"), TARGETS["sparse"], "lower", **row))
    reason = sparsify_missing()
    if reason is None:
        row = measure_against_sparsify(preset, device)
        note = (
            f"ours {1e3 * row['ours_seconds']:.1f} ms, sparsify's trainer step {1e3 * row['sparsify_seconds']:.1f} "
            f"ms (decoder normalisation and gradient projection included, as its Trainer runs them); against "
            f"sparsify's forward, backward and update alone ({1e3 * row['sparsify_bare_seconds']:.1f} ms): "
            f"{row['bare_ratio']:.3f}"
        )
        rows.append(
            _row(row.pop("name"), "sparse", row.pop("ratio"), TARGETS["sparse"], "lower", note=note, **row)
        )
    return rows, reason


def transcoder_set_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """A transcoder set of L layers against L single-layer runs: model forward passes (at most 1/L) and wall
    time (on the CPU: the set's own section, whatever the preset's device)."""
    from sdl_anchor.eval.transcoder_set_time import measure_set_against_single_runs

    row = measure_set_against_single_runs(preset)
    n = row["n_layers"]
    details = {k: v for k, v in row.items() if not k.endswith("_ratio")}
    rounds = ", ".join(f"{r:.3f}" for r in row["seconds_ratio_rounds"])
    wall_note = (
        f"median of {row['repeats']} rounds ({rounds}); noise floor {row['noise_floor']:.3f} "
        "(spread of the identical single runs over their median)"
    )
    return [
        _row(f"transcoder set of {n} layers / {n} single-layer runs: model forward passes", "transcoder_set",
             row["passes_ratio"], 1 / n, "lower", **details),
        _row(f"transcoder set of {n} layers / {n} single-layer runs: wall time", "transcoder_set",
             row["seconds_ratio"], TARGETS["transcoder_set_time"], "lower", note=wall_note, **details),
    ]  # fmt: skip


def clt_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """A CLT's training step against the per-layer set's (time per analytic matmul FLOP), its sparse-backward
    step against its dense step (TopK family), and its parameter + Adam memory: computed at the paper's width,
    measured against the computed figure where it fits."""
    from sdl_anchor.eval.clt_step_time import (
        SPARSE_ACTIVATIONS,
        measure_memory,
        measure_sparse_step,
        measure_step,
    )

    step = measure_step(preset, device)
    n, name = step["n_layers"], f"{step['activation']}_clt"
    rows = [
        _row(f"{name} / transcoder set of {n} layers: step time per matmul FLOP", "clt",
             step["time_per_flop_ratio"], TARGETS["clt_per_flop"], "lower",
             note=(f"time ratio {step['time_ratio']:.3f} (median of {step['steps']} rounds, "
                   f"{min(step['time_ratio_rounds']):.3f} to {max(step['time_ratio_rounds']):.3f}), FLOP ratio "
                   f"{step['flop_ratio']:.3f} (analytic; decoder {step['decoder_flop_ratio']:.2f}x the set's), "
                   f"d={step['d']}, d_sae={step['d_sae']} per layer, batch {step['batch_size']}"),
             **step),
    ]  # fmt: skip
    if step["activation"] in SPARSE_ACTIVATIONS:
        sparse = measure_sparse_step(preset, device)
        rounds = sparse["ratio_rounds"]
        note = (
            f"sparse {1000 * sparse['sparse_seconds']:.1f} ms, dense {1000 * sparse['dense_seconds']:.1f} ms "
            f"(medians; ratio the median of {sparse['steps']} rounds, {min(rounds):.3f} to {max(rounds):.3f}), "
            f"d={sparse['d']}, d_sae={sparse['d_sae']} per layer, k={sparse['k']}, batch {sparse['batch_size']}"
        )
        sparse_name, ratio = sparse.pop("name"), sparse.pop("ratio")
        rows.append(_row(sparse_name, "clt", ratio, TARGETS["clt_sparse"], "lower", note=note, **sparse))
    memory = measure_memory(preset, device)
    paper, shape = memory["paper_clt_bytes"], memory["paper_shape"]
    paper_note = (
        f"computed from shapes at the paper's width ({shape['n_layers']} layers, d={shape['d']}, "
        f"{shape['d_sae']} per layer, float32): parameters {paper['parameters'] / 1e9:.2f} GB, with Adam's "
        f"moments {paper['between_steps'] / 1e9:.2f} GB, with gradients {paper['peak'] / 1e9:.2f} GB, "
        f"{memory['paper_clt_over_set']:.2f}x the set's"
    )
    if "measured_bytes" in memory:
        measured = memory["measured_bytes"]["between_steps"]
        rows.append(
            _row(f"{name} parameter + Adam memory: measured / computed from shapes", "clt",
                 memory["measured_over_computed"], TARGETS["clt_memory"], "lower",
                 note=(f"measured {measured / 1e9:.2f} GB at {memory['measured_n_layers']} layers "
                       f"(d={memory['measured_d']}, d_sae={memory['measured_d_sae']}); {paper_note}"),
                 **memory)
        )  # fmt: skip
    else:
        rows[0]["note"] += f"; memory not measured, {paper_note}"
        rows[0]["memory"] = memory
    return rows


def coder_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.coder_step_time import ACTIVATIONS, measure_coder

    rows = []
    for kind in ("transcoder", "crosscoder"):
        for activation in ACTIVATIONS:
            row = measure_coder(activation, kind, preset, device)
            details = {k: v for k, v in row.items() if k not in ("name", "ratio", "better")}
            if kind == "transcoder":
                rows.append(
                    _row(row["name"], "coder", row["ratio"], TARGETS["transcoder"], "lower", **details)
                )
            else:  # normalised by the FLOP ratio: time per unit of matmul work against the stock SAE's
                rows.append(
                    _row(
                        f"{row['name']} per FLOP",
                        "coder",
                        row["ratio"] / row["flop_ratio"],
                        TARGETS["crosscoder_per_flop"],
                        "lower",
                        time_ratio=row["ratio"],
                        **details,
                    )
                )
    return rows


def sampling_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.lrb_throughput import measure_sampling

    row = measure_sampling(**preset, device=device)
    name = f"LRB sampling vs SAELens generator (n={row['n_features']}, d={row['d']}, S={row['sparsity']})"
    details = {k: v for k, v in row.items() if k != "ratio"}
    return [_row(name, "sampling", row["ratio"], TARGETS["sampling"], "higher", **details)]


def synth_sampling_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.synth_throughput import measure_synth_generator

    row = measure_synth_generator(**preset, device=device)
    name = (
        f"SynthSAEBench generator: ours vs SAELens's (n={row['num_features']}, d={row['hidden_dim']}, "
        f"batch {row['batch_size']})"
    )
    details = {k: v for k, v in row.items() if k != "ratio"}
    return [_row(name, "synth_sampling", row["ratio"], TARGETS["synth_sampling"], "higher", **details)]


def feed_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.lrb_throughput import measure_feed

    row = measure_feed(**preset, device=device)
    name = f"LRB batch / the TopK step it feeds (n={row['n_features']}, d_sae={row['d_sae']})"
    details = {k: v for k, v in row.items() if k != "ratio"}
    return [_row(name, "feed", row["ratio"], TARGETS["feed"], "lower", **details)]


def resampling_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.resampling_experiments import cost_experiment

    cost = cost_experiment(device=device, **preset)
    rows = []
    for strategy in ("anthropic", "theory"):
        r = cost[strategy]
        rows.append(
            _row(
                f"{strategy} resampling, {cost['events']} events / {cost['total_steps']} steps (d_sae={cost['d_sae']})",
                "resampling",
                r["amortised_overhead"],
                TARGETS["resampling_amortised"],
                "lower",
                event_seconds=r["event_seconds"],
                event_over_step=r["event_over_step"],
                step_seconds=cost["step_seconds"],
                latents=r["latents"],
                d_in=cost["d_in"],
                d_sae=cost["d_sae"],
                batch_size=cost["batch_size"],
            )
        )
    return rows


def absorption_rows(preset: dict[str, Any], saebench_python: str) -> list[dict[str, Any]]:
    from sdl_anchor.eval.absorption_vs_saebench import compare

    _, results = compare(preset["preset"], saebench_python)
    rows = []
    for sae, result in results.items():
        ours, theirs = result["ours"], result["saebench"]
        rows.append(
            _row(
                f"absorption audit: SAEBench / ours ({preset['preset']} model, {sae} SAE)",
                "absorption",
                theirs["seconds"] / ours["seconds"],
                TARGETS["absorption"],
                "higher",
                ours=ours,
                saebench=theirs,
                truth_mean_absorption=result["truth_mean_absorption"],
            )
        )
    return rows


def matmul_flops_per_second(
    m: int, k: int, n: int, dtype: torch.dtype, device: str, repeats: int = 10
) -> float:
    """The device's measured rate for ``[m, k] @ [k, n]`` in ``dtype`` (2 m k n FLOPs per product)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, k, generator=generator, device=device).to(dtype)
    b = torch.randn(k, n, generator=generator, device=device).to(dtype)
    return 2 * m * k * n / median_seconds(lambda: a @ b, repeats, torch.device(device))


def _topk_sae(d_in: int, d_sae: int, device: str) -> Any:
    sae_class, config_class = get_sae_training_class("topk")
    torch.manual_seed(0)
    return sae_class(config_class(d_in=d_in, d_sae=d_sae, k=32, device=device))


def hardware_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """A TopK step does 5 matmuls of ``2 B d_in d_sae`` FLOPs (encode, decode; the decoder's two gradients
    and the encoder's weight gradient): its achieved rate, against a lone matmul of the encoder's shape."""
    b, d_in, d_sae = preset["batch_size"], preset["d_in"], preset["d_sae"]
    step_flops = 5 * 2 * b * d_in * d_sae
    rows = []
    for dtype_name in preset["dtypes"]:
        dtype = getattr(torch, dtype_name)
        autocast = dtype != torch.float32
        trainer = trainer_for_timing(_topk_sae(d_in, d_sae, device), b, device, autocast=autocast)
        step = median_step_seconds(
            {"step": (trainer, random_batches(preset, device))}, preset["steps"], device
        )["step"]
        peak = matmul_flops_per_second(b, d_in, d_sae, dtype, device)
        achieved = step_flops / step
        rows.append(
            _row(
                f"TopK step {dtype_name} TFLOP/s / {dtype_name} matmul (d_in={d_in}, d_sae={d_sae}, B={b})",
                "hardware",
                achieved / peak,
                TARGETS["hardware"],
                "higher",
                step_seconds=step,
                achieved_tflops=achieved / 1e12,
                matmul_tflops=peak / 1e12,
            )
        )
    return rows


def autocast_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """SAELens's bf16 autocast against fp32, same TopK SAE and batches."""
    b, d_in, d_sae = preset["batch_size"], preset["d_in"], preset["d_sae"]
    sae = _topk_sae(d_in, d_sae, device)
    batches = random_batches(preset, device)
    seconds = median_step_seconds(
        {
            "fp32": (trainer_for_timing(sae, b, device), batches),
            "bf16": (trainer_for_timing(copy.deepcopy(sae), b, device, autocast=True), batches),
        },
        preset["steps"],
        device,
    )
    return [
        _row(
            "TopK step, bf16 autocast / fp32",
            "autocast",
            seconds["bf16"] / seconds["fp32"],
            TARGETS["autocast"],
            "lower",
            fp32_seconds=seconds["fp32"],
            bf16_seconds=seconds["bf16"],
        )
    ]


def compile_rows(preset: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """``torch.compile`` of an anchored TopK SAE's ``training_forward_pass``, as SAELens's ``compile_sae``
    does, against the eager step."""
    from sdl_anchor.anchoring.anchor_set import AnchorSet

    b, d_in, d_sae = preset["batch_size"], preset["d_in"], preset["d_sae"]
    sae_class, config_class = get_sae_training_class("anchored_topk")
    torch.manual_seed(0)
    eager = sae_class(config_class(d_in=d_in, d_sae=d_sae, k=32, device=device))
    eager.set_anchors(AnchorSet(torch.randn(preset["k"], d_in)))
    compiled = copy.deepcopy(eager)
    compiled.training_forward_pass = torch.compile(compiled.training_forward_pass, backend=preset["backend"])
    seconds = median_step_seconds(
        {
            "eager": (trainer_for_timing(eager, b, device), random_batches(preset, device)),
            "compiled": (trainer_for_timing(compiled, b, device), random_batches(preset, device)),
        },
        preset["steps"],
        device,
    )
    return [
        _row(
            f"anchored_topk step, torch.compile ({preset['backend']}) / eager",
            "compile",
            seconds["compiled"] / seconds["eager"],
            TARGETS["compile"],
            "lower",
            eager_seconds=seconds["eager"],
            compiled_seconds=seconds["compiled"],
        )
    ]


def run_perf(
    preset: str | dict[str, Any],
    device: str = "cpu",
    saebench_python: str | None = None,
    sections: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the suite; ``preset`` is ``"cpu"``, ``"gpu"`` or a dict of per-section sizes like them.

    Returns ``{"rows": [...], "device": str, "preset": ..., "skipped": [{"section", "reason"}]}``.
    """
    sizes = PRESETS[preset] if isinstance(preset, str) else preset
    kernel_setting = kernel_override()  # a bad $SDL_ANCHOR_KERNELS is refused before anything runs
    wanted = [s for s in SECTIONS if s in sizes and (sections is None or s in sections)]
    measure = {
        "anchor": anchor_rows,
        "coder": coder_rows,
        "transcoder_set": transcoder_set_rows,
        "clt": clt_rows,
        "sampling": sampling_rows,
        "synth_sampling": synth_sampling_rows,
        "feed": feed_rows,
        "resampling": resampling_rows,
        "hardware": hardware_rows,
        "autocast": autocast_rows,
        "compile": compile_rows,
    }
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for section in wanted:
        started = time.perf_counter()
        if section == "sparse":
            new, reason = sparse_rows(sizes[section], device)
            if reason is not None:
                skipped.append({"section": "sparse (sparsify row)", "reason": reason})
        elif section == "absorption":
            if saebench_python is None:
                skipped.append(
                    {
                        "section": section,
                        "reason": "needs a Python with sae-bench==0.6.0: pass --saebench-python",
                    }
                )
                continue
            new = absorption_rows(sizes[section], saebench_python)
        else:
            new = measure[section](sizes[section], device)
        rows.extend(new)
        if progress is not None:
            progress(f"{section}: {len(new)} rows in {time.perf_counter() - started:.1f} s")
    return {
        "rows": rows,
        "device": device_name(device),
        "cpu_model": cpu_model(),
        "kernel_setting": kernel_setting,  # $SDL_ANCHOR_KERNELS, or "calibrate"
        "kernels": choices_made(),  # what the sparse step ran on, per shape class
        "preset": preset if isinstance(preset, str) else "custom",
        "sizes": sizes,
        "skipped": skipped,
    }


def format_table(results: dict[str, Any]) -> str:
    """The rows as an aligned text table."""
    lines = [f"performance suite ({results['preset']} preset) on {results['device']}"]
    width = max([len(r["name"]) for r in results["rows"]] + [4])
    lines.append(f"{'name':<{width}}  {'ratio':>8}  {'target':>9}  ok")
    for r in results["rows"]:
        sign = "<=" if r["better"] == "lower" else ">="
        lines.append(
            f"{r['name']:<{width}}  {r['ratio']:>8.3f}  {sign} {r['target']:>6.3g}  {'yes' if r['ok'] else 'NO'}"
        )
    for r in results["rows"]:
        if r.get("note"):
            lines.append(f"{r['name']}: {r['note']}")
    for s in results["skipped"]:
        lines.append(f"skipped {s['section']}: {s['reason']}")
    setting = results.get("kernel_setting", "calibrate")
    how = (
        "calibrated, cached per machine and shape class"
        if setting == "calibrate"
        else f"{KERNELS_ENV}={setting}"
    )
    lines.append(f"kernel choices on {results.get('cpu_model', results['device'])} ({how}):")
    for choice in results.get("kernels", []):
        lines.append(f"  {describe_kernel_choice(choice)}")
    if not results.get("kernels"):
        lines.append("  none made (no sparse step ran on the CPU in float32, or the kernels were fixed)")
    return "\n".join(lines)
