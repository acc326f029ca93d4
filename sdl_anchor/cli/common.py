"""Helpers the subcommands share."""

from __future__ import annotations

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
