"""Atomic file writes (DESIGN.md section 7): write a temporary file beside the target, then rename,
so a crash never leaves a half-written result or checkpoint; and an exclusive claim of an output, so two
runs never write one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def current_umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_root() -> Path:
    """Where sdl-anchor keeps what it builds once and reuses (models, synthetic benches):
    ``$SDL_ANCHOR_CACHE``, or ``~/.cache/sdl-anchor``."""
    root = os.environ.get("SDL_ANCHOR_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "sdl-anchor"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary path in the target folder, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # after the write: mkstemp makes the file 0600, and a writer may replace it with a 0600 file of its
        # own (safetensors does); a file written in place would honour the umask
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def exclusive_claim(lock_path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block, or raise ValueError naming the process that
    holds it. The kernel drops the lock when its holder exits, however it exits, so a crashed run never
    leaves a stale claim. The lock file is removed on the way out; a run that opened it just before that
    finds, once it has the lock, that the path no longer names its file, and is refused as well."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(lock_path).st_ino:
                raise BlockingIOError  # its holder finished and removed it: the next run claims a new file
        except (BlockingIOError, FileNotFoundError):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(
                f"another run (pid {holder}) is writing {what}; wait for it to finish or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # while still holding the lock
    finally:
        os.close(fd)  # releases the lock


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save CPU copies of ``tensors`` (and string ``metadata``) with safetensors, atomically. Each tensor
    is cloned, so tensors that share memory (e.g. an anchor set whose output side is its input side) save."""
    cpu = {name: t.detach().to("cpu").clone().contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object, raising FileNotFoundError / ValueError that name ``what``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object")
    return data


def read_safetensors(path: str | Path, what: str, device: str | torch.device = "cpu"):
    """Load a safetensors file (never unpickles), with errors that name ``what``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({err})") from None
