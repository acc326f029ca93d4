"""W&B for the CLI: fall back to offline logging without credentials, and log a command's results.

``sdl-anchor bench`` and ``sdl-anchor audit`` take ``--wandb-project``; their rows become W&B tables and
their plots W&B images. Training logs through SAELens's own logger (``LoggingConfig``); the CLI only makes
sure a run without credentials is written offline (``wandb sync`` uploads it later) instead of failing.
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sdl_anchor.integrations.wandb_env import wandb_env_settings

OFFLINE_MODES = ("offline", "dryrun", "disabled")


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def ensure_wandb_mode() -> str:
    """The W&B mode a run will use; without credentials (and not already offline), switch to offline
    with a warning on stderr rather than fail or prompt for a key."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in OFFLINE_MODES:
        return mode
    if _has_credentials():
        return mode or "online"
    print(
        "sdl-anchor: warning: no W&B credentials (set WANDB_API_KEY or run `wandb login`); logging offline, "
        "upload later with `wandb sync`",
        file=sys.stderr,
    )
    os.environ["WANDB_MODE"] = "offline"
    return "offline"


def _cell(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]]) -> Any:
    import wandb

    columns = [key for row in rows for key in row]
    columns = list(dict.fromkeys(columns))
    return wandb.Table(columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows])


def log_results(
    project: str,
    job_type: str,
    out: Path,
    *,
    config: Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    images: Mapping[str, Path],
    summary: Mapping[str, float],
) -> str:
    """Log one command's results as a W&B run (files under ``out/wandb``); return the run's folder."""
    import wandb

    ensure_wandb_mode()
    out.mkdir(parents=True, exist_ok=True)
    settings = {**wandb_env_settings(), "dir": str(out)}
    run = wandb.init(
        project=project, job_type=job_type, config=dict(config), reinit="finish_previous", **settings
    )
    try:
        logged: dict[str, Any] = {name: _table(rows) for name, rows in tables.items() if rows}
        logged.update({name: wandb.Image(str(path)) for name, path in images.items() if path.is_file()})
        run.log(logged)
        run.summary.update(dict(summary))
        return str(Path(run.dir).parent)
    finally:
        run.finish()
