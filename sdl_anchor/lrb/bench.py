"""The Linear Representation Bench (paper section 5.1 and App. E; DESIGN.md section 4).

Representations follow the linear representation hypothesis exactly: ``x_p = W_p z`` with sparse,
non-negative codes ``z`` and unit feature directions of bounded interference. Three kinds:

* ``"sae"``: ``x_in = x_out = W_p z``.
* ``"transcoder"``: ``x_in = W_p z`` and ``x_out = W_r z`` with an independent ``W_r`` (``d_out``).
* ``"crosscoder"``: ``x_in = x_out = concat_l W^(l) z`` over ``n_sources`` independent blocks.
* ``"clt"`` (cross-layer transcoders, issue 36): ``n_layers`` layers, each with an MLP input (width ``d_in``)
  and output (``d_out``). Feature ``i`` lives at one layer ``h(i) = i * n_layers // n_features`` (its home:
  contiguous, equal blocks of features): it is read at layer ``h(i)``'s input along ``u_i`` and writes to that
  layer's output and to each later layer ``m > h(i)`` independently with probability ``write_probability``,
  along a direction ``v_i^(m)`` of layer ``m``'s output. With the codes ``z`` drawn as for the other kinds,

      x_in^(l) = sum_{i: h(i) = l} z_i u_i,        x_out^(m) = sum_{i: h(i) <= m, i writes to m} z_i v_i^(m),

  and ``x_in``/``x_out`` are the layers' blocks concatenated in layer order. The input directions of each
  layer's features form one feature matrix (unit rows in ``R^{d_in}``, the interference target met among
  them); the output directions at layer ``m`` are rows of that layer's own ``n x d_out`` feature matrix (every
  feature writing to ``m`` has a direction there, the target met among all of them). ``features_in
  [n, n_layers * d_in]`` holds ``u_i`` in block ``h(i)`` and zeros elsewhere; ``features_out
  [n, n_layers * d_out]`` holds ``v_i^(m)`` in each block ``m`` the feature writes to and zeros elsewhere
  (each written block unit norm). A CLT recovers feature ``i`` with a latent of layer ``h(i)`` whose encoder
  column is ``u_i`` and whose decoder row (over layers ``h(i) ..``) is feature ``i``'s output row:
  :func:`~sdl_anchor.metrics.recovery` scores a CLT in those concatenated spaces (layer ``l``'s encoder column
  in block ``l``, its decoder row in blocks ``l ..``, zeros elsewhere). Anchors
  (:meth:`LinearRepresentationBench.anchors`) are per layer (:class:`~sdl_anchor.anchoring.clt_anchors.
  CLTAnchors`), each with its features' writes to every layer from theirs on.

Feature directions are stored as rows: ``features_in [n_features, total input dim]`` and
``features_out [n_features, d_out]``. Everything is deterministic for a given ``seed`` and device.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.anchoring.clt_anchors import CLTAnchors
from sdl_anchor.io import read_json, read_safetensors, write_json, write_safetensors
from sdl_anchor.lrb.codes import SparseCodes, sample_codes
from sdl_anchor.lrb.feature_matrix import check_feasible, make_feature_matrix
from sdl_anchor.lrb.hierarchy import FeatureHierarchy

KINDS = ("sae", "transcoder", "crosscoder", "clt")
CONFIG_FILENAME = "lrb_config.json"
FEATURES_FILENAME = "lrb_features.safetensors"
FORMAT_VERSION = 1
_SAMPLING_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class LRBConfig:
    """Every parameter that defines a bench (saved as ``lrb_config.json``)."""

    kind: str = "sae"
    n_features: int = 1000
    d_in: int = 768
    d_out: int | None = None
    n_sources: int = 2
    sparsity: float = 0.99
    max_interference: float = 0.1
    interference: str = "bounded"
    c_min: float = 0.0
    beta: float = 1.0
    hierarchy: FeatureHierarchy | None = None
    child_firing_probability: float | None = None
    seed: int = 0
    n_layers: int = 4  # the "clt" kind's layers
    write_probability: float = 0.5  # "clt": a feature writes to each later layer with this probability

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("n_features", "d_in"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out < 1):
            raise ValueError(f"d_out must be a positive integer or None, got {self.d_out!r}")
        if self.kind not in ("transcoder", "clt") and self.d_out not in (None, self.d_in):
            raise ValueError(
                f"d_out={self.d_out} only applies to kind='transcoder' or 'clt'; for {self.kind!r} the "
                "output is the input, so leave d_out=None"
            )
        if self.kind == "clt":
            if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 1:
                raise ValueError(f"a CLT bench needs n_layers >= 1, got {self.n_layers!r}")
            if self.n_features < self.n_layers:
                raise ValueError(
                    f"a CLT bench puts n_features / n_layers features at each layer; "
                    f"n_features={self.n_features} < n_layers={self.n_layers}"
                )
            p = self.write_probability
            if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                raise ValueError(f"write_probability must be in [0, 1], got {p!r}")
        if self.kind == "crosscoder" and (not isinstance(self.n_sources, int) or self.n_sources < 2):
            raise ValueError(f"a crosscoder needs n_sources >= 2 layers or models, got {self.n_sources!r}")
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(
                f"sparsity S must be in [0, 1) (features fire with probability 1 - S), got {self.sparsity!r}"
            )
        for name in ("c_min", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not (math.isfinite(self.c_min) and self.c_min >= 0.0):
            raise ValueError(f"c_min must be a finite non-negative number, got {self.c_min!r}")
        if not (math.isfinite(self.beta) and self.beta > 0.0):
            raise ValueError(f"beta (the exponential's scale) must be positive, got {self.beta!r}")
        p = self.child_firing_probability
        if p is not None and not 0.0 < p <= 1.0:
            raise ValueError(f"child_firing_probability must be in (0, 1], got {p!r}")
        if self.kind == "clt":
            most = int(self.home_layers.bincount().max())
            check_feasible(most, self.d_in, self.max_interference, self.interference)
            check_feasible(self.n_features, self.output_width, self.max_interference, self.interference)
            return
        for d in {self.d_in, self.output_width}:
            check_feasible(self.n_features, d, self.max_interference, self.interference)

    @property
    def output_width(self) -> int:
        """Width of the output (per layer for ``"clt"``)."""
        paired = self.kind in ("transcoder", "clt")
        return self.d_out if (paired and self.d_out is not None) else self.d_in

    @property
    def home_layers(self) -> torch.Tensor:
        """``"clt"``: each feature's layer ``h(i) = i * n_layers // n_features`` (module docstring)."""
        return torch.arange(self.n_features) * self.n_layers // self.n_features

    @property
    def firing_probability(self) -> float:
        return 1.0 - self.sparsity

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_sources": self.n_sources,
            "sparsity": self.sparsity,
            "max_interference": self.max_interference,
            "interference": self.interference,
            "c_min": self.c_min,
            "beta": self.beta,
            "hierarchy": None if self.hierarchy is None else self.hierarchy.to_json(),
            "child_firing_probability": self.child_firing_probability,
            "seed": self.seed,
            **(
                {"n_layers": self.n_layers, "write_probability": self.write_probability}
                if self.kind == "clt"
                else {}
            ),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LRBConfig:
        data = dict(data)
        hierarchy = data.pop("hierarchy", None)
        if hierarchy is not None:
            hierarchy = FeatureHierarchy.from_mapping(
                {int(p): kids for p, kids in hierarchy["children"].items()},
                int(data["n_features"]),
                bool(hierarchy.get("mutually_exclusive", False)),
            )
        return cls(hierarchy=hierarchy, **data)


@dataclass
class LRBBatch:
    """One sample of the bench: ground-truth codes and the representations they produce."""

    sparse_codes: SparseCodes
    x_in: torch.Tensor  # [B, total input dim]
    x_out: torch.Tensor  # [B, d_out] (the same tensor as x_in for "sae" and "crosscoder")

    @cached_property
    def codes(self) -> torch.Tensor:
        """``[B, n_features]`` dense codes."""
        return self.sparse_codes.dense()


class LinearRepresentationBench:
    """Synthetic representations with full ground truth (DESIGN.md sections 4 and 8)."""

    def __init__(
        self,
        kind: str = "sae",
        n_features: int = 1000,
        d_in: int = 768,
        d_out: int | None = None,
        n_sources: int = 2,
        sparsity: float = 0.99,
        max_interference: float = 0.1,
        interference: str = "bounded",
        c_min: float = 0.0,
        beta: float = 1.0,
        hierarchy: Mapping[int, Sequence[int]] | None = None,
        mutually_exclusive_children: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        child_firing_probability: float | None = None,
        n_layers: int = 4,
        write_probability: float = 0.5,
    ) -> None:
        tree = (
            None
            if hierarchy is None
            else FeatureHierarchy.from_mapping(hierarchy, n_features, mutually_exclusive_children)
        )
        config = LRBConfig(
            kind=kind,
            n_features=n_features,
            d_in=d_in,
            d_out=d_out,
            n_sources=n_sources,
            sparsity=sparsity,
            max_interference=max_interference,
            interference=interference,
            c_min=c_min,
            beta=beta,
            hierarchy=tree,
            child_firing_probability=child_firing_probability,
            seed=seed,
            n_layers=n_layers,
            write_probability=write_probability,
        )
        started = time.perf_counter()
        matrices = _generate_matrices(config, torch.device(device))
        self._init(config, matrices["features_in"], matrices["features_out"], device)
        self.generation_seconds = time.perf_counter() - started
        self.interference_stats = matrices["stats"]

    def _init(
        self,
        config: LRBConfig,
        features_in: torch.Tensor,
        features_out: torch.Tensor,
        device: str | torch.device,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.features_in = features_in.to(self.device)
        paired = config.kind in ("transcoder", "clt")
        self.features_out = features_out.to(self.device) if paired else self.features_in
        self._generator = torch.Generator(device=self.device).manual_seed(config.seed + _SAMPLING_SEED_OFFSET)

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def n_features(self) -> int:
        return self.config.n_features

    @property
    def d_in(self) -> int:
        """Width of ``x_in`` (all sources together for a crosscoder)."""
        return self.features_in.shape[1]

    @property
    def d_out(self) -> int:
        return self.features_out.shape[1]

    @property
    def hierarchy(self) -> FeatureHierarchy | None:
        return self.config.hierarchy

    @property
    def source_slices(self) -> list[slice]:
        """Column ranges of each source block in ``x_in`` (one slice unless a crosscoder, or a CLT: one per
        layer)."""
        width = self.config.d_in
        n = {"crosscoder": self.config.n_sources, "clt": self.config.n_layers}.get(self.kind, 1)
        return [slice(i * width, (i + 1) * width) for i in range(n)]

    @property
    def n_layers(self) -> int:
        """``"clt"``: the layers (1 for the other kinds)."""
        return self.config.n_layers if self.kind == "clt" else 1

    @property
    def writes(self) -> torch.Tensor:
        """``"clt"``: ``[n_features, n_layers]`` booleans, whether feature ``i`` writes to layer ``m``."""
        if self.kind != "clt":
            raise ValueError(f"writes is the 'clt' kind's; this bench is {self.kind!r}")
        width = self.config.output_width
        return self.features_out.unflatten(1, (self.n_layers, width)).norm(dim=-1) > 0

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> LRBBatch:
        """Draw ``batch_size`` samples (codes, ``x_in``, ``x_out``) from the bench's own stream."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        codes = self.sample_codes(batch_size, generator)
        x_in = codes.project(self.features_in)
        x_out = codes.project(self.features_out) if self.kind in ("transcoder", "clt") else x_in
        return LRBBatch(codes, x_in, x_out)

    def sample_codes(self, batch_size: int, generator: torch.Generator | None = None) -> SparseCodes:
        """Draw ground-truth codes only (sparse)."""
        c = self.config
        return sample_codes(
            batch_size,
            c.n_features,
            c.firing_probability,
            c.c_min,
            c.beta,
            self._generator if generator is None else generator,
            self.device,
            c.hierarchy,
            c.child_firing_probability,
            self.features_in.dtype,
        )

    def stream(self, batch_size: int, seed: int | None = None, with_targets: bool = False):
        """An endless SAELens ``DataProvider`` of ``x_in`` batches (``(x_in, x_out)`` pairs with
        ``with_targets=True``)."""
        from sdl_anchor.lrb.data import LRBStream

        return LRBStream(self, batch_size, seed=seed, with_targets=with_targets)

    def dataset(self, n_samples: int = 100_000, seed: int | None = None):
        """A finite dataset of ``n_samples`` (paper: 100,000), drawn once and kept."""
        from sdl_anchor.lrb.data import LRBDataset

        return LRBDataset(self, n_samples, seed=seed)

    def anchors(self, k: int = 100, seed: int = 0) -> AnchorSet | CLTAnchors:
        """``k`` random ground-truth features as an :class:`AnchorSet` (sorted indices). For ``"clt"``, a
        :class:`~sdl_anchor.anchoring.clt_anchors.CLTAnchors`: ``k`` split as evenly as possible over the
        layers (the first ``k % n_layers`` layers one more), each layer's drawn among the features living
        there, with their input direction at that layer and their output row over that layer and every later
        one (``[k_l, (n_layers - l) * d_out]``, zeros where a feature does not write)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.n_features:
            raise ValueError(f"k must be an integer in [1, {self.n_features}], got {k!r}")
        generator = torch.Generator().manual_seed(seed)
        if self.kind == "clt":
            return self._clt_anchors(k, generator)
        indices = torch.randperm(self.n_features, generator=generator)[:k].sort().values
        return AnchorSet(
            self.features_in[indices.to(self.device)],
            self.features_out[indices.to(self.device)],
            indices,
            [f"feature_{int(i)}" for i in indices],
        )

    def _clt_anchors(self, k: int, generator: torch.Generator) -> CLTAnchors:
        L, homes = self.n_layers, self.config.home_layers
        ks = [k // L + (1 if layer < k % L else 0) for layer in range(L)]
        sets = []
        d_in, d_out = self.config.d_in, self.config.output_width
        for layer, k_layer in enumerate(ks):
            living = torch.nonzero(homes == layer).flatten()
            if not 1 <= k_layer <= living.numel():
                raise ValueError(
                    f"k={k} anchors over {L} layers puts {k_layer} at layer {layer}, which holds "
                    f"{living.numel()} features; choose k in [{L}, {self.n_features}]"
                )
            chosen = living[torch.randperm(living.numel(), generator=generator)[:k_layer]].sort().values
            rows = chosen.to(self.device)
            sets.append(
                AnchorSet(
                    self.features_in[rows, layer * d_in : (layer + 1) * d_in],
                    self.features_out[rows, layer * d_out :],
                    chosen,
                    [f"feature_{int(i)}" for i in chosen],
                )
            )
        return CLTAnchors(sets)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``lrb_config.json`` and ``lrb_features.safetensors`` into folder ``path``."""
        path = Path(path)
        tensors = {"features_in": self.features_in}
        if self.kind in ("transcoder", "clt"):
            tensors["features_out"] = self.features_out
        write_safetensors(path / FEATURES_FILENAME, tensors)
        write_json(
            path / CONFIG_FILENAME,
            {
                "format": "sdl_anchor.lrb",
                "format_version": FORMAT_VERSION,
                "config": self.config.to_json(),
                "interference_stats": self.interference_stats,
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LinearRepresentationBench:
        """Read a bench written by :meth:`save`; a corrupt or mismatched folder raises ValueError."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"LRB folder {path} does not exist")
        meta = read_json(path / CONFIG_FILENAME, "LRB config")
        if meta.get("format") != "sdl_anchor.lrb" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path / CONFIG_FILENAME} is not an sdl_anchor LRB config of format version {FORMAT_VERSION}"
            )
        try:
            config = LRBConfig.from_json(meta["config"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path / CONFIG_FILENAME} has a malformed config: {err}") from None
        tensors = read_safetensors(path / FEATURES_FILENAME, "LRB features", device)
        for name in ("features_in", "features_out")[: 2 if config.kind in ("transcoder", "clt") else 1]:
            if name not in tensors:
                raise ValueError(f"{path / FEATURES_FILENAME} has no {name!r} tensor; the bench is corrupt")
        try:
            bench = cls.from_features(config, tensors["features_in"], tensors.get("features_out"), device)
        except ValueError as err:
            raise ValueError(f"{path / FEATURES_FILENAME} does not match {CONFIG_FILENAME}: {err}") from None
        bench.interference_stats = meta.get("interference_stats", {})
        return bench

    @classmethod
    def from_features(
        cls,
        config: LRBConfig,
        features_in: torch.Tensor,
        features_out: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
    ) -> LinearRepresentationBench:
        """A bench over given feature directions (rows), e.g. a saved bench's or your own."""
        features_in = _check_features(features_in, "features_in", (config.n_features, _input_width(config)))
        _check_unit_blocks(
            features_in, "features_in", _input_width(config) // config.d_in, config.kind == "clt"
        )
        if config.kind in ("transcoder", "clt"):
            layers = config.n_layers if config.kind == "clt" else 1
            if features_out is None:
                raise ValueError(f"a {config.kind} bench needs features_out [n_features, {layers} * d_out]")
            features_out = _check_features(
                features_out, "features_out", (config.n_features, layers * config.output_width)
            )
            _check_unit_blocks(features_out, "features_out", layers, config.kind == "clt")
        bench = cls.__new__(cls)
        bench._init(config, features_in, features_in if features_out is None else features_out, device)
        bench.generation_seconds = 0.0
        bench.interference_stats = {}
        return bench

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LinearRepresentationBench(kind={c.kind!r}, n_features={c.n_features}, d_in={self.d_in}, "
            f"d_out={self.d_out}, sparsity={c.sparsity}, max_interference={c.max_interference}, "
            f"interference={c.interference!r})"
        )


def _input_width(config: LRBConfig) -> int:
    blocks = {"crosscoder": config.n_sources, "clt": config.n_layers}.get(config.kind, 1)
    return config.d_in * blocks


def _generate_matrices(config: LRBConfig, device: torch.device) -> dict[str, Any]:
    """Feature matrices for every block the kind needs, with their achieved interference."""
    if config.kind == "clt":
        return _generate_clt_matrices(config, device)
    blocks = {"in": [config.d_in] * (config.n_sources if config.kind == "crosscoder" else 1)}
    if config.kind == "transcoder":
        blocks["out"] = [config.output_width]
    stats: dict[str, Any] = {}
    built: dict[str, list[torch.Tensor]] = {}
    seed = config.seed
    for side, widths in blocks.items():
        built[side] = []
        for i, width in enumerate(widths):
            matrix = make_feature_matrix(
                config.n_features,
                width,
                config.max_interference,
                config.interference,
                seed=seed,
                device=device,
            )
            seed += 1
            built[side].append(matrix.directions)
            stats[f"{side}_{i}"] = {
                "max_abs_cos": matrix.max_abs_cos,
                "max_cos": matrix.max_cos,
                "steps": matrix.steps,
            }
    features_in = torch.cat(built["in"], dim=1)
    features_out = built["out"][0] if "out" in built else features_in
    return {"features_in": features_in, "features_out": features_out, "stats": stats}


def _check_features(tensor: torch.Tensor, name: str, shape: tuple[int, int]) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must have shape {shape}, got {got}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


UNIT_NORM_TOLERANCE = 1e-3  # a saved float32 direction is unit norm to about 1e-7


def _check_unit_blocks(tensor: torch.Tensor, name: str, n_blocks: int, zero_blocks: bool) -> None:
    """Every feature's direction is unit norm in each of its ``n_blocks`` blocks (sources, layers), the LRB
    specification; with ``zero_blocks`` (a CLT: a feature is read at one layer and writes to some) a block may
    also be all zeros, as long as one block of each feature is unit norm."""
    norms = tensor.unflatten(1, (n_blocks, -1)).norm(dim=-1)
    unit = (norms - 1.0).abs() <= UNIT_NORM_TOLERANCE
    fine = (unit | (norms == 0)) & unit.any(dim=1, keepdim=True) if zero_blocks else unit
    if not bool(fine.all()):
        feature, block = (int(i) for i in torch.nonzero(~fine)[0])
        where = f"block {block} of feature {feature}" if n_blocks > 1 else f"feature {feature}"
        allowed = "unit norm or zero (and one block unit norm)" if zero_blocks else "unit norm"
        raise ValueError(
            f"{name}: {where} has norm {float(norms[feature, block]):.4g}, but every block of a feature "
            f"direction must be {allowed}; normalise each block of each row (F / F.norm(dim=-1, keepdim=True))"
        )


def _generate_clt_matrices(config: LRBConfig, device: torch.device) -> dict[str, Any]:
    """The ``"clt"`` kind's ``features_in`` and ``features_out`` (module docstring): each layer's input
    feature matrix (seeds ``seed .. seed + L - 1``), each layer's output feature matrix (``seed + L ..``), and
    which later layers each feature writes to (a generator seeded ``seed + 2 L``)."""
    L, n, d_in, d_out = config.n_layers, config.n_features, config.d_in, config.output_width
    homes = config.home_layers
    features_in = torch.zeros(n, L * d_in, device=device)
    features_out = torch.zeros(n, L * d_out, device=device)
    stats: dict[str, Any] = {}

    def matrix(count: int, width: int, seed: int, name: str) -> torch.Tensor:
        built = make_feature_matrix(
            count, width, config.max_interference, config.interference, seed=seed, device=device
        )
        stats[name] = {"max_abs_cos": built.max_abs_cos, "max_cos": built.max_cos, "steps": built.steps}
        return built.directions

    generator = torch.Generator().manual_seed(config.seed + 2 * L)
    later = torch.rand(n, L, generator=generator) < config.write_probability
    layer_index = torch.arange(L)
    writes = (layer_index[None, :] == homes[:, None]) | ((layer_index[None, :] > homes[:, None]) & later)
    for layer in range(L):
        living = torch.nonzero(homes == layer).flatten().to(device)
        block = matrix(living.numel(), d_in, config.seed + layer, f"in_{layer}")
        features_in[living, layer * d_in : (layer + 1) * d_in] = block
        out = matrix(n, d_out, config.seed + L + layer, f"out_{layer}")
        written = writes[:, layer].to(device)[:, None]
        features_out[:, layer * d_out : (layer + 1) * d_out] = torch.where(written, out, 0.0)
    return {"features_in": features_in, "features_out": features_out, "stats": stats}
