"""mkdocs hook: a view of the package that mkdocstrings can read statically.

``integrations/`` and ``eval/`` sit at the repository's top level and are installed as
``sdl_anchor.integrations`` and ``sdl_anchor.eval`` (setuptools ``package-dir``). mkdocstrings reads source
files, so before the build this hook lays out ``build/docs_package/sdl_anchor`` as links to the package's
own files plus ``integrations`` and ``eval``: the import namespace users see, without touching the sources.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VIEW = ROOT / "build" / "docs_package"


def on_startup(**kwargs: Any) -> None:
    package = VIEW / "sdl_anchor"
    shutil.rmtree(VIEW, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in (ROOT / "sdl_anchor").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name in ("integrations", "eval"):
        (package / name).symlink_to(ROOT / name, target_is_directory=True)
