"""Feature hierarchies for the LRB: a child feature fires only when its parent fires.

A hierarchy is the dict ``{parent_feature: [child_feature, ...]}`` of DESIGN.md section 8. Children
may themselves be parents (trees of any depth); a feature has at most one parent; cycles are errors.
With ``mutually_exclusive=True`` at most one child of a parent fires in a sample (paper section 3.3:
hierarchical concepts are where feature absorption arises).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FeatureHierarchy:
    """A validated parent -> children map over ``n_features`` features."""

    children: dict[int, tuple[int, ...]]
    n_features: int
    mutually_exclusive: bool = False

    @classmethod
    def from_mapping(
        cls,
        hierarchy: Mapping[int, Sequence[int]],
        n_features: int,
        mutually_exclusive: bool = False,
    ) -> FeatureHierarchy:
        """Validate ``{parent: [children]}``; raise ValueError on unknown features, shared
        children or cycles."""
        if not isinstance(hierarchy, Mapping):
            raise ValueError(
                f"hierarchy must be a dict {{parent: [child, ...]}}, got {type(hierarchy).__name__}"
            )
        children: dict[int, tuple[int, ...]] = {}
        parent_of: dict[int, int] = {}
        for parent, kids in hierarchy.items():
            parent = _feature_index(parent, n_features, "parent")
            if isinstance(kids, (int, str)) or not isinstance(kids, Sequence):
                raise ValueError(f"hierarchy[{parent}] must be a list of child feature indices, got {kids!r}")
            kid_list = tuple(_feature_index(k, n_features, "child") for k in kids)
            for kid in kid_list:
                if kid in parent_of and parent_of[kid] != parent:
                    raise ValueError(
                        f"feature {kid} is a child of both {parent_of[kid]} and {parent}; "
                        "a feature may have only one parent"
                    )
                parent_of[kid] = parent
            if len(set(kid_list)) != len(kid_list):
                raise ValueError(f"hierarchy[{parent}] lists a child twice: {list(kid_list)}")
            if kid_list:
                children[parent] = children.get(parent, ()) + kid_list
        for start in parent_of:
            seen = {start}
            node = start
            while node in parent_of:
                node = parent_of[node]
                if node in seen:
                    raise ValueError(f"hierarchy has a cycle through feature {node}; it must be a forest")
                seen.add(node)
        return cls(children, n_features, mutually_exclusive)

    @property
    def parent_of(self) -> dict[int, int]:
        return {kid: parent for parent, kids in self.children.items() for kid in kids}

    @property
    def levels(self) -> list[list[int]]:
        """Child features grouped by depth (depth 1 = children of roots), shallowest first."""
        parent_of = self.parent_of
        depth: dict[int, int] = {}

        def depth_of(f: int) -> int:
            if f not in depth:
                depth[f] = 0 if f not in parent_of else depth_of(parent_of[f]) + 1
            return depth[f]

        by_depth: dict[int, list[int]] = {}
        for kid in parent_of:
            by_depth.setdefault(depth_of(kid), []).append(kid)
        return [sorted(by_depth[k]) for k in sorted(by_depth)]

    def parent_lookup(self, device: torch.device | str) -> torch.Tensor:
        """``[n_features]`` long tensor: each feature's parent, or -1."""
        lookup = torch.full((self.n_features,), -1, dtype=torch.long)
        for kid, parent in self.parent_of.items():
            lookup[kid] = parent
        return lookup.to(device)

    def to_json(self) -> dict[str, object]:
        return {
            "children": {str(p): list(k) for p, k in self.children.items()},
            "mutually_exclusive": self.mutually_exclusive,
        }


def _feature_index(value: object, n_features: int, role: str) -> int:
    try:
        index = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"hierarchy {role} {value!r} is not a feature index") from None
    if index != value and str(index) != value:
        raise ValueError(f"hierarchy {role} {value!r} is not an integer feature index")
    if not 0 <= index < n_features:
        raise ValueError(f"hierarchy names unknown {role} feature {index}; features are 0..{n_features - 1}")
    return index
