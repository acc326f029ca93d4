"""``WANDB_DIR`` and ``WANDB_MODE`` as they are when a run starts.

W&B reads its environment once per process, at the first ``wandb.init``; a later change (a CLI switching
to offline mode without credentials, a new output folder) would be ignored. Every ``wandb.init`` in
sdl-anchor passes these explicitly.
"""

from __future__ import annotations

import os


def wandb_env_settings() -> dict[str, str]:
    """``{"dir": $WANDB_DIR, "mode": $WANDB_MODE}``, each only when set."""
    values = {"dir": os.environ.get("WANDB_DIR"), "mode": os.environ.get("WANDB_MODE")}
    return {key: value for key, value in values.items() if value}
