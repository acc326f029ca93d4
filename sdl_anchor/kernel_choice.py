"""Which kernel the sparse-backward step's dense product runs on, chosen by measurement where it runs.

The sparse TopK-family step (:mod:`sdl_anchor.sparse_topk`) has one dense product, ``x W_enc + b_enc``,
and most of its time goes there. On the CPU in float32 two kernels compute it: oneDNN's matmul
(``torch.ops.mkldnn._linear_pointwise``, what torch's inductor compiles a CPU linear layer to) and
``torch.addmm`` (MKL's sgemm). Which is faster depends on the CPU: on two AMD EPYC cores oneDNN's took 0.63
to 0.72 of MKL's time at batch 1024, d_in 768, d_sae 16,384; on an Intel Xeon it took 1.08 (issue 37). So
the choice is not fixed: the first product of each *shape class* times both kernels on random tensors of
that shape (one warm-up each, then :data:`REPEATS` alternating rounds, medians), keeps the faster, and
caches the choice in ``cache_root()/kernels.json`` keyed by

    CPU model (family, model, stepping) | torch threads | torch version | dtype | device type |
    batch, d_in, d_sae (powers of two)

so later runs on the same machine reuse it without timing (a second process reads the file; within a
process the choice is kept in memory). The calibration's own cost (``calibration_seconds``, about 12
products: a few seconds at the paper's size on 2 cores, against thousands of steps of a training run) is
recorded with the choice.

Override with the environment variable ``SDL_ANCHOR_KERNELS`` or the ``override`` argument:
``onednn`` or ``addmm`` fixes the kernel, ``calibrate`` (the default) measures once and reuses the cache,
``recalibrate`` measures again (once per process and shape class) and replaces the cached choice, for a
choice first timed while something else loaded the machine. Elsewhere (float64, a GPU, a
torch built without oneDNN) ``torch.addmm`` is the only candidate and nothing is timed; an override naming
oneDNN there is ignored (the choice records ``source: "only candidate"``). The two kernels agree to float
round-off (relative 1e-6), so the choice changes a run's numbers in round-off only; it is recorded in the
coder's metadata (``cfg.metadata.kernels``) and in ``train.json``.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

KERNELS_ENV = "SDL_ANCHOR_KERNELS"
OVERRIDES = ("calibrate", "recalibrate", "onednn", "addmm")
DENSE_PRODUCTS = ("onednn", "addmm")
CACHE_FILE = "kernels.json"
CACHE_VERSION = 1
WARM_UP = 1
REPEATS = 5

# (candidates, (batch, d_in, d_sae), dtype, device type) -> {candidate: median seconds}
Measure = Callable[[tuple[str, ...], tuple[int, int, int], torch.dtype, str], dict[str, float]]


@dataclass(frozen=True)
class KernelChoice:
    """The kernel chosen for one shape class, and why."""

    kernel: str  # what was chosen for: "dense_product"
    choice: str  # "onednn" | "addmm"
    source: str  # "calibrated" | "cached" | "override" | "only candidate"
    key: str  # the cache key (machine, threads, torch, dtype, device, shape class)
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per candidate, when timed
    calibration_seconds: float = 0.0  # what the timing cost (0 when nothing was timed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_MEMORY: dict[str, KernelChoice] = {}


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's CPU linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def run_dense_product(kernel: str, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """``x @ W_enc + b_enc`` on ``kernel`` (``"onednn"``: CPU only; ``"addmm"``: anywhere)."""
    if kernel == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), W_enc.T, b_enc, "none", [], "")
    if kernel == "addmm":
        return torch.addmm(b_enc, x, W_enc)
    raise ValueError(f"unknown dense-product kernel {kernel!r}; choose one of {', '.join(DENSE_PRODUCTS)}")


# /proc/cpuinfo fields that tell CPU generations apart, beyond the model name
CPU_GENERATION_FIELDS = ("cpu family", "model", "stepping")


@functools.cache
def cpu_model() -> str:
    """This machine's CPU as :func:`describe_cpu` names it from ``/proc/cpuinfo`` (else what ``platform``
    says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            described = describe_cpu(cpuinfo.read())
    except OSError:
        described = None
    return described or platform.processor() or platform.machine() or "unknown CPU"


def describe_cpu(cpuinfo: str) -> str | None:
    """The first processor's model name in ``/proc/cpuinfo`` text, with its family, model and stepping
    numbers when present: virtual machines often report a bare vendor name ("AMD EPYC") for several CPU
    generations, whose kernel choices differ. None without a model name."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), " ".join(value.split()))
    if not fields.get("model name"):
        return None
    generation = [
        f"{field.split()[-1]} {fields[field]}" for field in CPU_GENERATION_FIELDS if fields.get(field)
    ]
    return f"{fields['model name']} ({', '.join(generation)})" if generation else fields["model name"]


def shape_class(n: int) -> int:
    """The power of two at or above ``n`` (sizes in one class share a choice)."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def dense_product_candidates(dtype: torch.dtype, device_type: str) -> tuple[str, ...]:
    """The kernels that can run the product: both on the CPU in float32 with oneDNN, else addmm alone."""
    if device_type == "cpu" and dtype == torch.float32 and onednn_linear_available():
        return DENSE_PRODUCTS
    return ("addmm",)


def dense_product_key(batch: int, d_in: int, d_sae: int, dtype: torch.dtype, device_type: str) -> str:
    """The cache key of a product's shape class on this machine."""
    machine = cpu_model() if device_type == "cpu" else device_type
    return (
        f"{machine}|threads={torch.get_num_threads()}|torch={torch.__version__}|{dtype}|{device_type}"
        f"|batch={shape_class(batch)},d_in={shape_class(d_in)},d_sae={shape_class(d_sae)}"
    )


def kernel_override(override: str | None = None) -> str:
    """``override``, else ``$SDL_ANCHOR_KERNELS``, else ``"calibrate"``; a ValueError for anything else."""
    where = "override" if override is not None else KERNELS_ENV
    value = override if override is not None else os.environ.get(KERNELS_ENV, "")
    value = value.strip().lower() or "calibrate"
    if value not in OVERRIDES:
        raise ValueError(
            f"{where} must be one of {', '.join(OVERRIDES)} (or unset, which calibrates), got {value!r}"
        )
    return value


def measure_dense_products(
    candidates: tuple[str, ...],
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    device_type: str,
    warm_up: int = WARM_UP,
    repeats: int = REPEATS,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each candidate on random tensors of ``shape = (batch, d_in, d_sae)``: ``warm_up``
    untimed runs each, then ``repeats`` rounds in which the candidates take turns (the order reversing every
    round). Its own generator: the global random state is untouched."""
    batch, d_in, d_sae = shape
    generator = torch.Generator(device=device_type).manual_seed(0)
    x = torch.randn(batch, d_in, generator=generator, device=device_type).to(dtype)
    W_enc = torch.randn(d_in, d_sae, generator=generator, device=device_type).to(dtype)
    b_enc = torch.randn(d_sae, generator=generator, device=device_type).to(dtype)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.no_grad():
        for _ in range(warm_up):
            for name in candidates:
                run_dense_product(name, x, W_enc, b_enc)
        for i in range(repeats):
            for name in candidates if i % 2 == 0 else candidates[::-1]:
                if device_type == "cuda":
                    torch.cuda.synchronize()
                started = timer()
                run_dense_product(name, x, W_enc, b_enc)
                if device_type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(timer() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def cache_path() -> Path:
    from sdl_anchor.io import cache_root

    return cache_root() / CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    """The cached choices (``{key: entry}``); empty when the file is missing, unreadable or not ours."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    choices = data.get("choices")
    return choices if isinstance(choices, dict) else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` under ``key`` (re-reading the file first, so other processes' entries are kept)."""
    from sdl_anchor.io import write_json

    choices = _read_cache(path)
    choices[key] = entry
    try:
        write_json(path, {"version": CACHE_VERSION, "choices": choices})
    except OSError:  # a read-only cache: the choice still holds for this process
        pass


def choose_dense_product(
    batch: int,
    d_in: int,
    d_sae: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    override: str | None = None,
    measure: Measure | None = None,
    cache_file: str | Path | None = None,
) -> KernelChoice:
    """The dense product's kernel for ``[batch, d_in] @ [d_in, d_sae]`` (module docstring): from memory,
    else the cache file, else measured (``measure``, default :func:`measure_dense_products`) and cached.
    ``override`` (else ``$SDL_ANCHOR_KERNELS``) is ``calibrate``, ``recalibrate``, ``onednn`` or ``addmm``."""
    wanted = kernel_override(override)
    device_type = torch.device(device).type
    key = dense_product_key(batch, d_in, d_sae, dtype, device_type)
    candidates = dense_product_candidates(dtype, device_type)
    if len(candidates) == 1:
        return KernelChoice("dense_product", candidates[0], "only candidate", key)
    if wanted in candidates:
        return KernelChoice("dense_product", wanted, "override", key)
    path = Path(cache_file) if cache_file is not None else cache_path()
    memory_key = f"{path}|{key}|{wanted}"
    if memory_key in _MEMORY:
        return _MEMORY[memory_key]
    entry = _read_cache(path).get(key) if wanted == "calibrate" else None
    if isinstance(entry, dict) and entry.get("choice") in candidates:
        choice = KernelChoice(
            "dense_product",
            entry["choice"],
            "cached",
            key,
            {k: float(v) for k, v in (entry.get("seconds") or {}).items()},
            float(entry.get("calibration_seconds", 0.0)),
        )
    else:
        started = time.perf_counter()
        seconds = (measure or measure_dense_products)(candidates, (batch, d_in, d_sae), dtype, device_type)
        cost = time.perf_counter() - started
        best = min(candidates, key=lambda name: seconds[name])
        choice = KernelChoice("dense_product", best, "calibrated", key, dict(seconds), cost)
        _write_cache(
            path,
            key,
            {
                "choice": best,
                "seconds": choice.seconds,
                "calibration_seconds": cost,
                "shape": [batch, d_in, d_sae],
                "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    _MEMORY[memory_key] = choice
    return choice


def choices_made() -> list[dict[str, Any]]:
    """Every choice this process has calibrated or read from the cache, as dicts (for reports)."""
    return [choice.as_dict() for choice in _MEMORY.values()]


def forget_choices() -> None:
    """Drop the choices kept in memory (the cache file stays)."""
    _MEMORY.clear()
