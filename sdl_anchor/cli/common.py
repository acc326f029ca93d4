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


MODEL_KWARGS_HELP = (
    "JSON keyword arguments for HookedTransformer.from_pretrained_no_processing, as train's "
    "--model_from_pretrained_kwargs takes them (default: what training uses)"
)


def model_kwargs(value: str) -> dict:
    """``'{"fold_ln": false}'`` -> a dict, or an argparse error saying what is wrong."""
    import argparse
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r} ({err})") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"fold_ln\": false}}', got {value!r}"
        )
    return parsed
