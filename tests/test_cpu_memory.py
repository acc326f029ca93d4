"""Keeping freed CPU memory (sdl_anchor.cpu_memory): the glibc setting takes effect, the opt-out and other
platforms say why nothing was set, the CLI sets it, and its step-time comparison runs."""

import subprocess
import sys

import pytest

from sdl_anchor import cpu_memory
from sdl_anchor.cpu_memory import keep_freed_memory, keep_freed_memory_unless_opted_out

# Run in a fresh process: in this one, memory freed under the kept setting stays in the heap, which then
# serves a large block without an mmap whatever the setting.
MMAP_PROBE = """
import ctypes, sys, torch
from sdl_anchor.cpu_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)  # the C library this process runs on, as cpu_memory calls it
if not hasattr(libc, "mallinfo2"):
    print("no mallinfo2"); sys.exit(0)
libc.mallinfo2.restype = MallInfo2
assert keep_freed_memory(sys.argv[1] == "kept") is None
before = libc.mallinfo2().hblkhd
tensor = torch.ones(768, 16_000)  # a paper-size encoder gradient, 49 MB: above glibc's largest mmap threshold
print(libc.mallinfo2().hblkhd - before, tensor.numel() * 4)
"""


def _mmapped_growth(setting: str) -> tuple[int, int]:
    """``(bytes newly held in mmapped blocks, the tensor's bytes)`` after allocating a 49 MB tensor in a
    fresh process under ``setting`` ("kept" or "glibc")."""
    done = subprocess.run(
        [sys.executable, "-c", MMAP_PROBE, setting], capture_output=True, text=True, check=True, timeout=120
    )
    if done.stdout.strip() == "no mallinfo2":
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    grown, size = map(int, done.stdout.split())
    return grown, size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_kept_memory_serves_a_large_tensor_from_the_heap_not_a_fresh_mmap():
    grown, size = _mmapped_growth("glibc")
    assert grown >= size  # glibc's own limits: a fresh mmap
    grown, size = _mmapped_growth("kept")
    assert grown < size  # kept: the heap serves it


def test_the_opt_out_variable_leaves_malloc_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda enabled=True: calls.append(enabled))
    monkeypatch.setenv("SDL_ANCHOR_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory_unless_opted_out() == "SDL_ANCHOR_KEEP_FREED_MEMORY=0"
    assert calls == []
    monkeypatch.setenv("SDL_ANCHOR_KEEP_FREED_MEMORY", "1")
    keep_freed_memory_unless_opted_out()
    assert calls == [True]


def test_other_platforms_get_a_reason_not_an_error(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() == "only glibc's malloc (Linux) is tuned; this is darwin"


def test_the_command_line_sets_it_before_running_a_command(monkeypatch, capsys):
    from sdl_anchor import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory_unless_opted_out", lambda: calls.append("set"))
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == ["set"]
    assert "sdl-anchor" in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_step_time_comparison_times_both_settings(monkeypatch, capsys):
    from sdl_anchor.eval import cpu_memory_step_time

    size = {"d_in": 16, "d_sae": 64, "batch_size": 32, "k": 4, "n_anchors": 4}
    monkeypatch.setattr(cpu_memory_step_time, "PAPER_STEP", size)
    cpu_memory_step_time.main(["--rounds", "2"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split("  ")[0].strip() for row in rows] == [
        "TopK step, paper size",
        "anchored TopK step, paper size",
    ]
    for row in rows:
        glibc_ms, kept_ms, ratio = (
            float(row.split(label)[1].split()[0]) for label in ("glibc", "kept", "ratio")
        )
        assert glibc_ms > 0 and kept_ms > 0 and ratio > 0
    with pytest.raises(SystemExit):
        cpu_memory_step_time.main(["--rounds", "0"])
    assert "--rounds must be at least 1" in capsys.readouterr().err
