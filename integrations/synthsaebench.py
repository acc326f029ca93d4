"""SynthSAEBench-16k (Chanin & Garriga-Alonso, arXiv 2602.14687), built here from its documented
configuration and cached on disk.

The hub copy (``decoderesearch/synth-sae-bench-16k-v1``) cannot be downloaded on an offline machine, so
:func:`synthsaebench_16k_config` writes out the configuration SAELens's docs give for it (16,384 features
in d=768, Zipfian firing, a 128-root hierarchy of depth 3 with mutually exclusive children scaled by their
parent, rank-25 correlations, orthogonalised directions, magnitudes 5.0 -> 4.0, bias 0.5, seed 42) and
:func:`load_or_build_model` builds it with SAELens's own ``SyntheticModel``, once, into a cache folder
keyed by the configuration (``SyntheticModel.save`` / ``load_from_disk``).

One step is computed differently: SAELens orthogonalises the feature directions by Adam on
``sum_{i!=j} <e_i,e_j>^2 + n * sum_i (|e_i|^2 - 1)^2``, forming all n^2 dot products in chunks (about 40
minutes on 2 CPU cores at n=16,384). Its gradient is ``4 (E E^T E - |e_i|^2 e_i) + 4 n (|e_i|^2 - 1) e_i``,
and ``E (E^T E)`` costs n d^2 instead of n^2 d, so :func:`orthogonalize_embeddings_gram` takes the same Adam
steps on the same gradient in seconds (equal to SAELens's to float rounding; tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from sae_lens.synthetic import (
    FeatureDictionary,
    HierarchyConfig,
    LowRankCorrelationConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
)
from sae_lens.synthetic.firing_magnitudes import FoldedNormalMagnitudeConfig, LinearMagnitudeConfig
from sae_lens.util import temporary_seed
from tqdm.auto import tqdm

from sdl_anchor.io import cache_root, current_umask

PUBLISHED_SEED = 42


def synthsaebench_16k_config(seed: int = PUBLISHED_SEED, num_features: int = 16_384, hidden_dim: int = 768):
    """SynthSAEBench-16k's configuration as SAELens's docs give it (``seed`` 42 is the published model).

    ``num_features`` and ``hidden_dim`` exist for small stand-ins (the ``smoke`` preset, tests); the
    hierarchy's 128 roots shrink with ``num_features`` so a small model keeps the same structure."""
    roots = max(1, min(128, num_features // 128))
    return SyntheticModelConfig(
        num_features=num_features,
        hidden_dim=hidden_dim,
        firing_probability=ZipfianFiringProbabilityConfig(max_prob=0.4, min_prob=5e-4, exponent=0.5),
        hierarchy=HierarchyConfig(
            total_root_nodes=roots,
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        orthogonalization=OrthogonalizationConfig(num_steps=100, lr=3e-4),
        correlation=LowRankCorrelationConfig(rank=25, correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        seed=seed,
    )


def orthogonalize_embeddings_gram(
    embeddings: torch.Tensor,
    num_steps: int = 200,
    lr: float = 0.01,
    show_progress: bool = False,
) -> torch.Tensor:
    """SAELens's ``orthogonalize_embeddings`` (same normalisation, loss, Adam settings and step count) with
    the loss's gradient computed in closed form through the d x d Gram matrix ``E^T E``.

    For ``L = sum_{i!=j} <e_i,e_j>^2 + n sum_i (|e_i|^2-1)^2``:
    ``dL/de_i = 4 (E E^T E)_i - 4 |e_i|^2 e_i + 4 n (|e_i|^2 - 1) e_i``.
    Returns unit rows, as SAELens does."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 1:
        raise ValueError(f"embeddings must be [num_vectors, hidden_dim], got shape {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    work = embeddings.detach().clone()
    work = work / work.norm(p=2, dim=1, keepdim=True).clamp(min=1e-8)
    work.requires_grad_(True)
    optimizer = torch.optim.Adam([work], lr=lr)
    for _ in tqdm(range(num_steps), desc="Orthogonalizing vectors", disable=not show_progress):
        with torch.no_grad():
            squared_norms = (work * work).sum(dim=1, keepdim=True)
            gradient = 4 * (work @ (work.T @ work)) - 4 * squared_norms * work
            gradient += 4 * n * (squared_norms - 1) * work
        work.grad = gradient
        optimizer.step()
    with torch.no_grad():
        work = work / work.norm(p=2, dim=1, keepdim=True).clamp(min=1e-8)
    return work.detach().clone()


def build_model(config: SyntheticModelConfig, show_progress: bool = True) -> SyntheticModel:
    """SAELens's ``SyntheticModel(config)``, its orthogonalisation by :func:`orthogonalize_embeddings_gram`.

    Every other part (hierarchy, correlations, firing probabilities and their hierarchy compensation,
    magnitudes, bias) is SAELens's own construction with the configuration's seeds."""
    ortho = config.orthogonalization

    def initializer(feature_dict: FeatureDictionary) -> None:
        assert ortho is not None
        feature_dict.feature_vectors.data = orthogonalize_embeddings_gram(
            feature_dict.feature_vectors, num_steps=ortho.num_steps, lr=ortho.lr, show_progress=show_progress
        )

    with temporary_seed(config.seed):
        feature_dict = FeatureDictionary(
            num_features=config.num_features,
            hidden_dim=config.hidden_dim,
            bias=config.bias,
            initializer=initializer if ortho is not None else None,
            seed=config.seed,
        )
    return SyntheticModel(config, feature_dict=feature_dict)


def config_key(config: SyntheticModelConfig) -> str:
    """A short hash of the configuration: the cache folder's name."""
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$SDL_ANCHOR_CACHE/synth``, or ``~/.cache/sdl-anchor/synth``."""
    return cache_root() / "synth"


def load_or_build_model(
    config: SyntheticModelConfig, cache_dir: Path | None = None, show_progress: bool = True
) -> tuple[SyntheticModel, dict[str, Any]]:
    """The model of ``config`` from the cache, or built and cached (written atomically: a folder renamed
    into place, so an interrupted build leaves nothing half-written). Returns the model and a record
    (``path``, ``key``, ``built``: whether this call built it)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = config_key(config)
    path = cache_dir / key
    if not path.is_dir():
        if cache_dir.exists() and not cache_dir.is_dir():
            raise ValueError(f"the synthetic-model cache {cache_dir} is a file; pass a folder")
        cache_dir.mkdir(parents=True, exist_ok=True)
        model = build_model(config, show_progress=show_progress)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        try:
            model.save(staging)
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700
            staging.rename(path)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not path.is_dir():  # a concurrent build that won the rename is fine
                raise
        return model, {"path": str(path), "key": key, "built": True}
    saved = json.loads((path / "synthetic_model_config.json").read_text())
    if saved != json.loads(json.dumps(config.to_dict())):
        raise ValueError(f"the cached synthetic model at {path} has another configuration; delete the folder")
    return SyntheticModel.load_from_disk(path), {"path": str(path), "key": key, "built": False}
