"""Ground-truth feature absorption on synthetic hierarchies (the paper's Example 3.6 / Theorem 3.8).

A hierarchy says child ``c`` fires only when its parent ``p`` does. Absorption is the polysemanticity
pattern of Theorem 3.8: a latent that fires for the child also writes the parent direction, and the parent's
own latent goes quiet whenever that child is present. With the ground-truth codes known we measure it
directly, for every (parent, child) pair:

1. **The parent latent** ``L_p``: the latent whose activation best tracks the parent's magnitude ``c_p``
   (Pearson correlation) on the samples where none of ``p``'s children is active (``p`` alone or
   inactive). It is chosen on samples without children, so a latent that absorbed a child cannot win, and
   by correlation, so rescaling a latent changes nothing. (It was the F1 of ``a_j > 0`` at detecting ``p``
   alone against ``p`` inactive; but a ReLU latent reading exactly ``w_p`` with no bias also fires on about
   half of the samples without ``p``, from the other features' interference, so at a parent's base rate of
   1-5% even the true ReLU SAE scored F1 0.03-0.17 and its pairs were called unrepresented. Its
   correlation is 0.56-0.89, the best other latent's at most 0.15.)
2. **Full absorption**, the hierarchy-conditioned silence gap (SAELens issue #729): with
   ``s_alone = P(a_Lp = 0 | p alone)`` and ``s_c = P(a_Lp = 0 | c is the only active child of p)``,
   ``absorption = max(0, s_c - s_alone) / (1 - s_alone)``: the share of the samples on which ``L_p`` would
   fire that the child silences (1: it never fires with the child; 0: the child does not matter). Only
   samples without a sibling of ``c`` count for ``c`` (steps 2 to 4): where children can fire together, a
   sibling's absorption would otherwise be charged to ``c`` in proportion to how often they co-fire, and
   the sibling's latent listed as ``c``'s absorber. With mutually exclusive children every child sample
   counts.
3. **Partial absorption**: on child samples where ``L_p`` still fires, how much weaker it is per unit of
   parent, ``1 - slope(c, fires) / slope(p alone, fires)`` clipped to ``[0, 1]``, where ``slope`` is the
   least-squares slope of ``a_Lp`` on ``c_p`` through the origin, ``sum a c / sum c^2``. (A mean of
   ``a / c`` would be dominated by the smallest parent magnitudes: with ``c_min = 0`` its expectation is
   infinite, and even the true SAE would score 0.07 to 0.14.)
4. **Absorbing latents**: latents other than ``L_p`` that fire on at least half of the child samples where
   ``L_p`` is silent or under half its usual strength (and at least twice as often there as on all
   samples, so they belong to the child), and whose decoder carries the parent direction (cosine with the
   parent's output-side feature at least ``parent_cosine``).

A parent whose best latent correlates with it under ``MIN_PARENT_CORRELATION`` has no latent that represents
it: its pairs are not measurable and report ``absorption`` None with a ``reason`` naming the best
correlation, and the means leave them out. The summary counts the pairs measured (``n_measured`` of
``n_pairs``) and lists the others under ``skipped`` with their reasons, so two SAEs' means can be checked to
average the same pairs.

Inputs are streamed in batches twice with the same seed (once to pick ``L_p``, once to measure), so memory
does not grow with ``n_samples``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sdl_anchor.lrb.hierarchy import FeatureHierarchy
from sdl_anchor.metrics import check_finite_weights

# a latent at under this fraction of its usual activation per unit of parent counts as "under-firing"
WEAK = 0.5
# an absorbing latent fires on at least this share of the child's absorbed samples...
MIN_ABSORBING_RATE = 0.5
# ...and at least this many times as often as on samples at large (it belongs to the child)
MIN_LIFT = 2.0
# below this correlation with its parent's magnitude, the best latent does not represent the parent
MIN_PARENT_CORRELATION = 0.3

Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # -> (codes, x_in)


@dataclass
class _Source:
    """Where samples come from: ``sample(batch, generator) -> (codes [B, n], encoder input [B, d_in])``."""

    sample: Sampler
    features_out: torch.Tensor  # [n_features, d_out]: the directions decoders should write
    hierarchy: dict[int, tuple[int, ...]]
    device: torch.device
    d_in: int  # the width of the encoder inputs ``sample`` draws


def hierarchy_from_sae_lens(roots: Any) -> dict[int, tuple[int, ...]]:
    """``{parent: (children, ...)}`` from SAELens ``HierarchyNode`` trees (or a ``Hierarchy``). A node without
    a ``feature_index`` only groups its children: they hang from its nearest indexed ancestor."""
    roots = getattr(roots, "roots", roots)
    if not isinstance(roots, Sequence):
        roots = [roots]
    children: dict[int, list[int]] = {}

    def walk(node: Any, parent: int | None) -> None:
        index = getattr(node, "feature_index", None)
        if index is not None and parent is not None:
            children.setdefault(parent, []).append(int(index))
        for child in getattr(node, "children", ()):
            walk(child, parent if index is None else int(index))

    for root in roots:
        if not hasattr(root, "children"):
            raise ValueError(f"expected SAELens HierarchyNode trees, got {type(root).__name__}")
        walk(root, None)
    return {parent: tuple(kids) for parent, kids in children.items()}


def _source(data: Any, hierarchy: Any) -> _Source:
    if hasattr(data, "features_out") and hasattr(data, "sample_codes"):  # a LinearRepresentationBench
        if hierarchy is None:
            if data.hierarchy is None:
                raise ValueError("the bench has no hierarchy; build it with hierarchy={parent: [children]}")
            hierarchy = data.hierarchy.children

        def sample_bench(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            batch = data.sample(n, generator)
            return batch.codes, batch.x_in

        return _Source(
            sample_bench,
            data.features_out,
            _check_hierarchy(hierarchy, data.n_features),
            data.device,
            data.d_in,
        )
    if hasattr(data, "sample_with_features") and hasattr(data, "feature_dict"):  # a SAELens SyntheticModel
        if hierarchy is None:
            if getattr(data, "hierarchy", None) is None:
                raise ValueError("the SyntheticModel has no hierarchy; pass hierarchy=")
            hierarchy = data.hierarchy
        if not isinstance(hierarchy, Mapping):
            hierarchy = hierarchy_from_sae_lens(hierarchy)
        n_features = data.feature_dict.feature_vectors.shape[0]

        def sample_model(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            # SAELens's generator draws from the global RNG: seed a fork of it from ours, for repeatable
            # passes that leave the caller's RNG untouched
            devices = [torch.device(data.device)] if torch.device(data.device).type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(
                    int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
                )
                hidden, codes = data.sample_with_features(n)
            return codes.to_dense() if codes.is_sparse else codes, hidden

        return _Source(
            sample_model,
            data.feature_dict.feature_vectors.detach(),
            _check_hierarchy(hierarchy, n_features),
            torch.device(data.device),
            data.feature_dict.feature_vectors.shape[1],
        )
    raise ValueError(
        "hierarchy_absorption needs a LinearRepresentationBench or a SAELens SyntheticModel, "
        f"got {type(data).__name__}"
    )


def _check_hierarchy(hierarchy: Any, n_features: int) -> dict[int, tuple[int, ...]]:
    """Validated ``{parent: children}`` (the LRB's own validation: known features, one parent, no cycles)."""
    children = FeatureHierarchy.from_mapping(hierarchy, n_features).children
    if not children:
        raise ValueError("the hierarchy has no parent with children")
    return children


def _batches(
    source: _Source, n_samples: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    generator = torch.Generator(device=source.device).manual_seed(seed)
    for start in range(0, n_samples, batch_size):
        yield source.sample(min(batch_size, n_samples - start), generator)


def _masks(
    codes: torch.Tensor, parents: list[int], hierarchy: dict[int, tuple[int, ...]]
) -> tuple[torch.Tensor, ...]:
    """``(no child active [B, P], parent alone [B, P])``: alone = active with none of its children."""
    any_child = torch.stack([(codes[:, list(hierarchy[p])] > 0).any(dim=1) for p in parents], dim=1)
    return ~any_child, (codes[:, parents] > 0) & ~any_child


@dataclass
class _Moments:
    """Running sums for the correlation of every latent's activation with each parent's magnitude, over
    the samples where none of that parent's children is active. Activations are shifted by their first
    batch's means (exact zero variance for a constant latent, less cancellation); sums are float64."""

    n: torch.Tensor  # [P]
    c: torch.Tensor  # [P]
    cc: torch.Tensor  # [P]
    a: torch.Tensor  # [P, d_sae]
    aa: torch.Tensor  # [P, d_sae]
    ca: torch.Tensor  # [P, d_sae]
    shift: torch.Tensor | None = None  # [d_sae]

    @classmethod
    def zeros(cls, n_parents: int, d_sae: int, device: torch.device) -> _Moments:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=device, dtype=torch.float64)

        return cls(z(n_parents), z(n_parents), z(n_parents), *(z(n_parents, d_sae) for _ in range(3)))

    def add(self, eligible: torch.Tensor, magnitude: torch.Tensor, acts: torch.Tensor) -> None:
        """One batch: ``eligible [B, P]`` (no child active), ``magnitude [B, P]`` (c_p), ``acts [B, d_sae]``."""
        if self.shift is None:
            self.shift = acts.mean(dim=0)
        shifted = acts - self.shift
        weight = eligible.float()
        weighted_c = weight * magnitude
        self.n += weight.sum(dim=0).double()
        self.c += weighted_c.sum(dim=0).double()
        self.cc += (weighted_c * magnitude).sum(dim=0).double()
        self.a += (weight.T @ shifted).double()
        self.aa += (weight.T @ shifted.pow(2)).double()
        self.ca += (weighted_c.T @ shifted).double()

    def correlation(self) -> torch.Tensor:
        """``[P, d_sae]`` Pearson correlations; 0 where the latent or the parent does not vary."""
        n = self.n.clamp(min=1)[:, None]
        cov = self.ca - self.c[:, None] * self.a / n
        var_a = (self.aa - self.a.pow(2) / n).clamp(min=0)
        var_c = (self.cc - self.c.pow(2) / n.squeeze(1)).clamp(min=0)[:, None]
        scale = (var_a * var_c).sqrt()
        flat = (var_a <= 1e-9 * self.aa.clamp(min=1e-30)) | (var_c <= 0)
        return torch.where(flat, 0.0, cov / scale.clamp(min=1e-30)).float()


@torch.no_grad()
def hierarchy_absorption(
    sae: Any,
    data: Any,
    n_samples: int = 100_000,
    *,
    hierarchy: Any = None,
    parent_cosine: float = 0.25,
    batch_size: int = 8192,
    seed: int = 0,
) -> dict[str, Any]:
    """Full and partial absorption of every (parent, child) pair, with the absorbing latents (module
    docstring).

    ``data``: a :class:`~sdl_anchor.lrb.bench.LinearRepresentationBench` built with a hierarchy, or a
    SAELens ``SyntheticModel``; ``hierarchy`` overrides theirs (``{parent: [children]}`` or SAELens
    ``HierarchyNode`` trees). Returns ``{"pairs": [{"parent", "child", "absorption", "partial_absorption",
    "absorbing_latents", "parent_latent", ...}], "mean_absorption", "mean_partial_absorption", "n_pairs",
    "n_measured", "skipped": [{"parent", "child", "reason"}, ...]}``: the means average the ``n_measured``
    pairs only; ``skipped`` names the others and why."""
    check_finite_weights(sae, "absorption")
    source = _source(data, hierarchy)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not 0.0 <= parent_cosine <= 1.0:
        raise ValueError(f"parent_cosine must be in [0, 1], got {parent_cosine}")
    if source.d_in != sae.cfg.d_in:
        raise ValueError(f"the data's inputs have width {source.d_in} but the SAE has d_in={sae.cfg.d_in}")
    if sae.W_dec.shape[-1] != source.features_out.shape[1]:
        raise ValueError(
            f"the SAE's W_dec writes width {sae.W_dec.shape[-1]} but the data's output features have width "
            f"{source.features_out.shape[1]}; score an SAE (or transcoder) trained on these data"
        )
    d_sae = sae.cfg.d_sae
    tree = source.hierarchy
    parents = sorted(tree)
    row_of = {p: i for i, p in enumerate(parents)}
    pairs = [(p, c) for p in parents for c in tree[p]]
    device = sae.W_dec.device

    def encode(x_in: torch.Tensor) -> torch.Tensor:
        return sae.encode(x_in.to(device, sae.W_enc.dtype)).float()

    # pass 1: pick each parent's latent by correlation without its children; its activation per unit of parent
    moments = _Moments.zeros(len(parents), d_sae, device)
    hits = torch.zeros(len(parents), d_sae, device=device)
    ac_alone = torch.zeros(len(parents), d_sae, device=device)  # sum of a * c_p where p is alone
    cc_alone = torch.zeros(len(parents), d_sae, device=device)  # sum of c_p^2 where p is alone and a fires
    n_alone = torch.zeros(len(parents), device=device)
    for codes, x_in in _batches(source, n_samples, batch_size, seed):
        codes = codes.to(device).float()
        acts = encode(x_in)
        fires = (acts > 0).float()
        childless, alone = _masks(codes, parents, tree)
        moments.add(childless, codes[:, parents], acts)
        hits += alone.float().T @ fires
        magnitude = alone.float() * codes[:, parents]
        ac_alone += magnitude.T @ acts
        cc_alone += magnitude.pow(2).T @ fires
        n_alone += alone.sum(dim=0)
    correlation = moments.correlation()
    parent_latent = correlation.argmax(dim=1)
    rows = torch.arange(len(parents), device=device)
    alone_hits = hits[rows, parent_latent]
    usual_slope = ac_alone[rows, parent_latent] / cc_alone[rows, parent_latent].clamp(min=1e-12)

    # pass 2: silence and strength of each parent latent on child samples; who fires instead
    pair_parent = torch.tensor([row_of[p] for p, _ in pairs], device=device)
    pair_child = torch.tensor([c for _, c in pairs], device=device)
    n_child = torch.zeros(len(pairs), device=device)
    silent_child = torch.zeros(len(pairs), device=device)
    fired_child = torch.zeros(len(pairs), device=device)
    ac_child = torch.zeros(len(pairs), device=device)
    cc_child = torch.zeros(len(pairs), device=device)
    absorbed = torch.zeros(len(pairs), device=device)
    absorber_fires = torch.zeros(len(pairs), d_sae, device=device)
    all_fires = torch.zeros(d_sae, device=device)
    for codes, x_in in _batches(source, n_samples, batch_size, seed):
        codes = codes.to(device).float()
        acts = encode(x_in)
        active_children = torch.stack([(codes[:, list(tree[p])] > 0).sum(dim=1) for p in parents], dim=1)
        child = (codes[:, pair_child] > 0) & (active_children[:, pair_parent] == 1)  # [B, pairs]: c alone
        parent_codes = codes[:, torch.tensor(parents, device=device)[pair_parent]]
        latent_acts = acts[:, parent_latent[pair_parent]]  # [B, pairs]
        fires = latent_acts > 0
        weak = child & (latent_acts < WEAK * usual_slope[pair_parent] * parent_codes)
        n_child += child.sum(dim=0)
        silent_child += (child & ~fires).sum(dim=0)
        fired_child += (child & fires).sum(dim=0)
        ac_child += torch.where(child & fires, latent_acts * parent_codes, 0.0).sum(dim=0)
        cc_child += torch.where(child & fires, parent_codes.pow(2), 0.0).sum(dim=0)
        absorbed += weak.sum(dim=0)
        absorber_fires += weak.float().T @ (acts > 0).float()
        all_fires += (acts > 0).sum(dim=0)

    silent_alone = 1 - alone_hits / n_alone.clamp(min=1)
    silent_with_child = silent_child / n_child.clamp(min=1)
    gap = (silent_with_child - silent_alone[pair_parent]).clamp(min=0)
    absorption = (gap / (1 - silent_alone[pair_parent]).clamp(min=1e-12)).clamp(max=1)
    strength = (ac_child / cc_child.clamp(min=1e-12)) / usual_slope[pair_parent].clamp(min=1e-12)
    partial = torch.where(fired_child > 0, (1 - strength).clamp(0, 1), 0.0)
    features_out = F.normalize(source.features_out.to(device).float(), dim=1)
    decoder_cosine = F.normalize(sae.W_dec.float(), dim=1) @ features_out.T  # [d_sae, n_features]
    results = []
    for i, (p, c) in enumerate(pairs):
        latent = int(parent_latent[row_of[p]])
        best = float(correlation[row_of[p], latent])
        record: dict[str, Any] = {
            "parent": p,
            "child": c,
            "parent_latent": latent,
            "parent_latent_correlation": best,
            "n_child_samples": int(n_child[i]),
            "n_parent_alone_samples": int(n_alone[row_of[p]]),
        }
        reason = _unmeasurable(best, latent, p, record)
        if reason is not None:
            results.append({**record, "absorption": None, "partial_absorption": None, "absorbing_latents": [],
                            "reason": reason})  # fmt: skip
            continue
        rate = absorber_fires[i] / absorbed[i].clamp(min=1)
        lift = rate / (all_fires / n_samples).clamp(min=1e-12)
        candidates = (
            (rate >= MIN_ABSORBING_RATE) & (lift >= MIN_LIFT) & (decoder_cosine[:, p] >= parent_cosine)
        )
        candidates[latent] = False
        order = torch.argsort(rate[candidates], descending=True)
        results.append(
            {
                **record,
                "absorption": float(absorption[i]),
                "partial_absorption": float(partial[i]),
                "absorbing_latents": torch.nonzero(candidates).flatten()[order].tolist(),
                "silent_alone": float(silent_alone[row_of[p]]),
                "silent_with_child": float(silent_with_child[i]),
            }
        )
    measured = [r for r in results if r["absorption"] is not None]
    summary: dict[str, Any] = {
        "n_samples": n_samples,
        "parent_cosine": parent_cosine,
        "pairs": results,
        "n_pairs": len(results),
        "n_measured": len(measured),
        "skipped": [
            {"parent": r["parent"], "child": r["child"], "reason": r["reason"]}
            for r in results
            if r["absorption"] is None
        ],
    }
    if not measured:
        reasons = sorted({r["reason"] for r in results})
        summary.update(mean_absorption=None, mean_partial_absorption=None, reason="; ".join(reasons))
        return summary
    summary["mean_absorption"] = sum(r["absorption"] for r in measured) / len(measured)
    summary["mean_partial_absorption"] = sum(r["partial_absorption"] for r in measured) / len(measured)
    return summary


def _unmeasurable(correlation: float, latent: int, parent: int, record: dict[str, Any]) -> str | None:
    """Why a pair cannot be measured (None when it can)."""
    if record["n_parent_alone_samples"] == 0:
        return f"parent {parent} never fired without its children; raise n_samples"
    if record["n_child_samples"] == 0:
        return f"child {record['child']} never fired without its siblings; raise n_samples"
    if correlation < MIN_PARENT_CORRELATION:
        return (
            f"no latent represents parent {parent}: the best, latent {latent}, correlates with its magnitude "
            f"at {correlation:.3f} < {MIN_PARENT_CORRELATION}"
        )
    return None
