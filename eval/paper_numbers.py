"""The paper's reported LRB numbers (arXiv 2512.05534, Table 1; DESIGN.md section 4).

M_GT (fraction of non-anchor features with encoder cosine > 0.95) and M_IP (mean best cosine),
without and with anchoring, at n=1000, d=768, width 16,000, S=0.99, M=0.1, 100 anchors.
"""

from __future__ import annotations

PAPER_LABELS = {
    "standard": "ReLU SAE",
    "jumprelu": "JumpReLU",
    "topk": "TopK",
    "batchtopk": "BatchTopK",
    "matryoshka_batchtopk": "Matryoshka",
    "transcoder": "Transcoder",
    "crosscoder": "Crosscoder",
}

# method -> {"plain": (M_GT, M_IP), "anchored": (M_GT, M_IP)}
PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "standard": {"plain": (0.0, 0.205), "anchored": (0.0, 0.246)},
    "jumprelu": {"plain": (0.0, 0.237), "anchored": (0.0, 0.333)},
    "topk": {"plain": (0.849, 0.983), "anchored": (0.876, 0.986)},
    "batchtopk": {"plain": (0.848, 0.981), "anchored": (0.894, 0.988)},
    "matryoshka_batchtopk": {"plain": (0.837, 0.982), "anchored": (0.873, 0.985)},
    "transcoder": {"plain": (0.236, 0.838), "anchored": (0.251, 0.838)},
    "crosscoder": {"plain": (0.564, 0.940), "anchored": (0.577, 0.941)},
}


def paper_numbers(method: str, anchored: bool = False) -> tuple[float, float] | None:
    """``(M_GT, M_IP)`` the paper reports for ``method``, or None if it reports none."""
    entry = PAPER_TABLE1.get(method)
    return None if entry is None else entry["anchored" if anchored else "plain"]
