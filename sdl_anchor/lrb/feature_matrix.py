"""Feature matrices with bounded interference (LRB, paper App. E / DESIGN.md section 4).

The Linear Representation Bench needs ``n`` unit feature directions in ``R^d`` whose pairwise
interference is bounded by ``M``. We start from a Gaussian draw and run projected gradient
descent on the interference penalty

    L_int = sum_{i != j} relu(<w_i, w_j> - (M - eps))^2 + lam * sum_{i != j} relu(<w_i, w_j>)^2

renormalising every row after each step, until the achieved maximum is at most ``M``.

* ``"bounded"``: the hinge acts on ``|<w_i, w_j>|`` (both sides bounded), ``lam = 0``.
* ``"negative"``: the hinge acts on the positive side only, and ``lam > 0`` pushes every positive
  inner product toward zero, so interference is small on the positive side and free (often
  negative) on the other; the push runs for at least ``min_steps`` steps.

Choices the paper leaves open, documented as ours: the margin ``eps = 0.1 * max(M, 0.01)``, a plain
gradient step of size ``lr`` whose per-row length is clipped to ``max_row_step`` (stable for any
number of violating pairs), seeded noise of 1e-3 of that length per step (so exactly collinear
pairs, whose gradient vanishes, still separate), and rows processed in chunks of ``chunk_size`` so that at most a
``chunk_size x n`` block of the Gram matrix exists at once.

Feasibility (checked before optimising): the Welch bound ``sqrt((n - d) / (d (n - 1)))`` (with the
orthoplex bound ``1 / sqrt(d)`` once ``n > d (d + 1) / 2``) is a lower bound on
``max_{i!=j} |<w_i, w_j>|`` for ``n > d``, and ``-1 / (n - 1)`` (the simplex) is a lower
bound on ``max_{i!=j} <w_i, w_j>``; Rankin's bound adds that the latter is positive when ``n > 2 d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INTERFERENCE_MODES = ("bounded", "negative")


@dataclass(frozen=True)
class FeatureMatrix:
    """Unit feature directions (rows) and the interference they achieved."""

    directions: torch.Tensor  # [n, d], unit rows
    max_abs_cos: float  # max_{i != j} |<w_i, w_j>|
    max_cos: float  # max_{i != j} <w_i, w_j>
    steps: int  # gradient steps taken


def welch_bound(n: int, d: int) -> float:
    """Lower bound on the maximum |cosine| between ``n`` unit vectors in ``R^d`` (0 if n <= d).

    The Welch bound ``sqrt((n - d) / (d (n - 1)))``, raised to the orthoplex bound ``1 / sqrt(d)`` when
    ``n > d (d + 1) / 2`` (Conway, Hardin and Sloane 1996), where the Welch bound cannot be met.
    """
    if n <= d:
        return 0.0
    bound = math.sqrt((n - d) / (d * (n - 1)))
    if n > d * (d + 1) // 2:
        bound = max(bound, 1.0 / math.sqrt(d))
    return bound


def check_feasible(n: int, d: int, max_interference: float, interference: str) -> None:
    """Raise ValueError when no ``n`` unit vectors in ``R^d`` can meet the interference target."""
    if interference not in INTERFERENCE_MODES:
        raise ValueError(f"interference must be one of {INTERFERENCE_MODES}, got {interference!r}")
    if n < 1 or d < 1:
        raise ValueError(f"n_features and d must be positive, got n={n}, d={d}")
    if not math.isfinite(max_interference) or max_interference >= 1.0:
        raise ValueError(f"max_interference must be a finite number below 1, got {max_interference}")
    if interference == "bounded":
        bound = welch_bound(n, d)
        if max_interference < 0 or max_interference < bound:
            raise ValueError(
                f"max_interference={max_interference} is unreachable: {n} unit vectors in "
                f"R^{d} have max |cos| >= {bound:.4f} (Welch bound). Raise max_interference "
                f"to at least {bound:.4f}, lower n_features, or raise d."
            )
    else:
        simplex = -1.0 / (n - 1) if n > 1 else -1.0
        if max_interference < 0 and n > d + 1:
            raise ValueError(
                f"max_interference={max_interference} asks for {n} pairwise obtuse unit vectors in R^{d}, but "
                f"at most d + 1 = {d + 1} unit vectors can have all pairwise cosines below 0; use "
                f"max_interference >= 0, at most {d + 1} features, or d >= {n - 1}"
            )
        if max_interference < simplex or (n > 2 * d and max_interference <= 0):
            need = "a positive value" if n > 2 * d else f"at least {simplex:.4g}"
            raise ValueError(
                f"max_interference={max_interference} is unreachable for negative interference "
                f"with {n} unit vectors in R^{d}; it must be {need}."
            )


def _normalise_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def make_feature_matrix(
    n: int,
    d: int,
    max_interference: float,
    interference: str = "bounded",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    lam: float | None = None,
    lr: float = 0.5,
    max_row_step: float = 0.1,
    max_steps: int = 1000,
    min_steps: int | None = None,
    chunk_size: int = 4096,
) -> FeatureMatrix:
    """Unit rows ``W [n, d]`` with ``max_{i!=j} |<w_i,w_j>| <= M`` ("bounded") or
    ``max_{i!=j} <w_i,w_j> <= M`` ("negative"), by projected gradient descent on ``L_int``.

    Deterministic for a given ``seed`` and device. Raises ValueError when the target is below the
    Welch / simplex bound, or when ``max_steps`` steps do not reach it.
    """
    check_feasible(n, d, max_interference, interference)
    if lam is None:
        lam = 0.1 if interference == "negative" else 0.0
    if min_steps is None:
        min_steps = 20 if interference == "negative" else 0
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    generator = torch.Generator(device=device).manual_seed(seed)
    w = _normalise_rows(torch.randn(n, d, generator=generator, device=device))
    if n == 1:
        return FeatureMatrix(w, 0.0, -1.0, 0)
    target = max_interference - 0.1 * max(max_interference, 0.01)
    for step in range(max_steps + 1):
        grad, max_abs, max_pos = _interference_gradient(w, target, interference, lam, chunk_size)
        reached = (max_abs if interference == "bounded" else max_pos) <= max_interference
        if reached and step >= min_steps:
            return FeatureMatrix(w, max_abs, max_pos, step)
        if step == max_steps:
            break
        update = lr * grad
        row_norm = update.norm(dim=1, keepdim=True).clamp_min(1e-12)
        # A little seeded noise (perturbed gradient descent) frees exactly collinear pairs, whose
        # gradient is parallel to the row and vanishes under renormalisation.
        noise = torch.randn(w.shape, generator=generator, device=w.device) * (1e-3 * max_row_step)
        w = _normalise_rows(w - update * (max_row_step / row_norm).clamp(max=1.0) + noise)
    kind = "max |cos|" if interference == "bounded" else "max cos"
    achieved = max_abs if interference == "bounded" else max_pos
    raise ValueError(
        f"could not reach {kind} <= {max_interference} for n={n}, d={d} in {max_steps} steps "
        f"(achieved {achieved:.4f}); raise max_interference, raise d, or pass more max_steps."
    )


def _interference_gradient(
    w: torch.Tensor, target: float, interference: str, lam: float, chunk_size: int
) -> tuple[torch.Tensor, float, float]:
    """Gradient of ``L_int`` (up to the constant factor 4) and the current maxima, in row chunks."""
    n = w.shape[0]
    grad = torch.empty_like(w)
    max_abs = torch.zeros((), device=w.device)
    max_pos = torch.full((), -2.0, device=w.device)
    for start in range(0, n, chunk_size):
        gram = w[start : start + chunk_size] @ w.T  # [chunk, n]
        rows = torch.arange(gram.shape[0], device=w.device)
        gram[rows, rows + start] = -2.0  # mask the diagonal for the positive max
        max_pos = torch.maximum(max_pos, gram.max())
        gram[rows, rows + start] = 0.0
        max_abs = torch.maximum(max_abs, gram.abs().max())
        if interference == "bounded":
            coeff = torch.sign(gram) * torch.relu(gram.abs() - target)
        else:
            coeff = torch.relu(gram - target) + lam * torch.relu(gram)
        grad[start : start + chunk_size] = coeff @ w
    return grad, float(max_abs), float(max_pos)
