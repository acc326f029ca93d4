"""Helpers the subcommands share."""

from __future__ import annotations

import os
from pathlib import Path

EXIT_USAGE = 2
WANDB_HELP = "also log the results to this W&B project, as tables and images (offline without credentials)"


def csv_list(value: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def int_list(value: str) -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``, or an argparse error naming what is not an integer."""
    import argparse

    try:
        return tuple(int(part) for part in csv_list(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be made: a file in its place or on its path,
    or a first existing ancestor this process cannot write to."""
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is" if existing == out else f"lies under {existing}, which is"
        raise ValueError(f"{flag} {out} {where} a file, not a folder; choose another {flag}")
    if existing != out and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out} cannot be made: {existing} is not writable; choose another {flag}")
