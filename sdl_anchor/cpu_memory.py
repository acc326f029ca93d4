"""Keep freed CPU memory for the next training step instead of taking fresh pages (glibc's malloc).

glibc serves every allocation above its mmap threshold (at most 32 MiB unless set) with a fresh ``mmap`` and
returns it with ``munmap`` on free. At the paper's size a training step's large tensors are all above it
(the ``[768, 16000]`` gradients 49 MB, the ``[1024, 16000]`` pre-activations 66 MB), so every step writes
them into untouched pages that the kernel must fault in and zero first: on 2 CPU cores, ``enc * 2.0`` on a
``[768, 16000]`` tensor took 11.6 ms on fresh pages and 4.1 ms on reused ones. Raising the mmap threshold,
and the trim threshold so that freed memory is not handed back at once, lets each step reuse the last one's
pages. ``python -m sdl_anchor.eval.cpu_memory_step_time`` measures the training step both ways.

The ``sdl-anchor`` command turns this on when it starts (``SDL_ANCHOR_KEEP_FREED_MEMORY=0`` leaves glibc's
settings alone); from Python, call :func:`keep_freed_memory`. The cost: up to ``KEPT_SETTINGS``'s trim
threshold (1 GiB) of freed memory stays with the process.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

KEPT_SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
# glibc's own settings once its dynamic thresholds have grown to their limits (the 64-bit defaults)
GLIBC_SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_TOP_PAD: 128 << 10}

OPT_OUT_VARIABLE = "SDL_ANCHOR_KEEP_FREED_MEMORY"


def keep_freed_memory(enabled: bool = True) -> str | None:
    """Set glibc's malloc to keep freed large blocks (``enabled``) or back to its own limits (module
    docstring). Returns None when set, else why not (not Linux with glibc, or glibc refused a value)."""
    if not sys.platform.startswith("linux"):
        return f"only glibc's malloc (Linux) is tuned; this is {sys.platform}"
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return "the C library has no mallopt (not glibc)"
    settings = KEPT_SETTINGS if enabled else GLIBC_SETTINGS
    refused = [parameter for parameter, value in settings.items() if mallopt(parameter, value) != 1]
    if refused:
        return f"glibc refused mallopt parameters {refused}"
    return None


def keep_freed_memory_unless_opted_out() -> str | None:
    """:func:`keep_freed_memory`, unless ``SDL_ANCHOR_KEEP_FREED_MEMORY=0`` (what ``sdl-anchor`` runs first)."""
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        return f"{OPT_OUT_VARIABLE}=0"
    return keep_freed_memory()
