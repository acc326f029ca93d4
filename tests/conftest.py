import os
import tempfile

import pytest
import torch
from hypothesis import settings

# CI runs the same examples every time (no flaky red builds); local runs explore new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="sdl_anchor_wandb_"))  # not the repository
# caches (kernel choices, converted models, audit activations) go to a fresh folder, not the user's
os.environ.setdefault("SDL_ANCHOR_CACHE", tempfile.mkdtemp(prefix="sdl_anchor_cache_"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_bench():
    import sdl_anchor as sa

    return sa.LinearRepresentationBench(n_features=64, d_in=48, sparsity=0.9, seed=0)
