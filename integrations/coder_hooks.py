"""Which TransformerLens hooks a coder reads, checked against the model before any forward pass runs.

An SAE reads one hook, a transcoder a pair ``[input hook, output hook]`` (e.g.
``blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out``) and a crosscoder its ``n_sources`` source hooks
(e.g. ``blocks.{0,1,2}.hook_resid_post``). :func:`check_coder_hooks` makes sure the model has every hook,
that the widths the model config implies match the coder's (``d_in``, ``d_out``, ``d_in / n_sources``), and
that a transcoder's input hook runs before its output hook. Widths and order come from the hook names and
``model.cfg`` (TransformerLens's own layout), so they are known without running the model; a hook outside
that layout is accepted with the coder's width.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

# TransformerLens's hooks inside one block, in the order a forward pass reaches them (the model's
# ``hook_dict`` is in module-registration order, which differs: ``ln2`` is registered before ``attn``).
BLOCK_HOOK_ORDER = (
    "hook_resid_pre",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
D_MODEL_HOOKS = {
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_mlp_in",
    "ln1.hook_normalized",
    "ln2.hook_normalized",
}
D_MLP_HOOKS = {"mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post"}
HEAD_HOOKS = {"attn.hook_z", "attn.hook_q"}  # [.., n_heads, d_head], flattened by SAELens's store


def coder_kind(coder: Any) -> str:
    """``"crosscoder"``, ``"transcoder"`` or ``"sae"``: what a SAELens coder (training or inference) is."""
    if hasattr(coder.cfg, "n_sources"):
        return "crosscoder"
    return "transcoder" if hasattr(coder.cfg, "d_out") else "sae"


def _split(hook_name: str) -> tuple[int, str] | None:
    """``"blocks.3.ln2.hook_normalized" -> (3, "ln2.hook_normalized")``; None outside the blocks."""
    parts = hook_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None


def forward_position(hook_name: str) -> tuple[float, int] | None:
    """A key that sorts hooks in forward-pass order, or None for a hook outside TransformerLens's layout."""
    if hook_name in ("hook_embed", "hook_pos_embed"):
        return (-1, 0)
    if hook_name.startswith("ln_final.") or hook_name.startswith("unembed."):
        return (math.inf, 0)
    split = _split(hook_name)
    if split is None or split[1] not in BLOCK_HOOK_ORDER:
        return None
    return (split[0], BLOCK_HOOK_ORDER.index(split[1]))


def hook_width(model: Any, hook_name: str) -> int | None:
    """The width of the activation SAELens's ActivationsStore reads at ``hook_name``, from ``model.cfg``."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return None
    if hook_name in ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "unembed.hook_in"):
        return cfg.d_model
    split = _split(hook_name)
    if split is None:
        return None
    local = split[1]
    if local in D_MODEL_HOOKS:
        return cfg.d_model
    if local in D_MLP_HOOKS:
        return getattr(cfg, "d_mlp", None)
    if local in HEAD_HOOKS:
        return cfg.n_heads * cfg.d_head
    return None


def _check_names_exist(model: Any, hook_names: list[str]) -> None:
    available = getattr(model, "hook_dict", None)
    if available is None:
        return
    for name in hook_names:
        if name not in available:
            close = difflib.get_close_matches(name, list(available), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"the model has no hook {name!r}{hint}")


def check_coder_hooks(model: Any, hook_names: list[str], coder_cfg: Any, kind: str) -> dict[str, int]:
    """Validate ``hook_names`` for a coder of ``kind`` ("sae", "transcoder", "crosscoder") and config
    ``coder_cfg``; return the width read at each hook (SAELens's ``hook_d_ins``)."""
    if not isinstance(hook_names, (list, tuple)) or not all(isinstance(h, str) for h in hook_names):
        raise ValueError(f"hook_names must be a list of hook names, got {hook_names!r}")
    hook_names = list(hook_names)
    if len(set(hook_names)) != len(hook_names):
        raise ValueError(f"hook_names repeats a hook: {hook_names}")
    if kind == "sae":
        expected_widths = {name: coder_cfg.d_in for name in hook_names}
        if len(hook_names) != 1:
            raise ValueError(f"an SAE reads one hook, got {len(hook_names)}: {hook_names}")
    elif kind == "transcoder":
        if len(hook_names) != 2:
            raise ValueError(
                "a transcoder reads a pair of hooks [input, output], e.g. ['blocks.0.ln2.hook_normalized', "
                f"'blocks.0.hook_mlp_out']; got {hook_names}"
            )
        expected_widths = {hook_names[0]: coder_cfg.d_in, hook_names[1]: coder_cfg.d_out}
    elif kind == "crosscoder":
        if len(hook_names) < 2:
            raise ValueError(f"a crosscoder reads n_sources >= 2 hooks, got {hook_names}")
        if len(hook_names) != coder_cfg.n_sources:
            raise ValueError(
                f"the crosscoder has n_sources={coder_cfg.n_sources} but {len(hook_names)} hooks were given: "
                f"{hook_names}"
            )
        expected_widths = {name: coder_cfg.d_in // coder_cfg.n_sources for name in hook_names}
    else:
        raise ValueError(f"unknown coder kind {kind!r}")
    _check_names_exist(model, hook_names)

    widths = {name: hook_width(model, name) for name in hook_names}
    if kind == "crosscoder":
        known = {name: width for name, width in widths.items() if width is not None}
        if len(set(known.values())) > 1:
            raise ValueError(
                f"a crosscoder's sources must have one width, but these hooks differ: {known}; "
                "choose hooks of the same kind (e.g. hook_resid_post at several layers)"
            )
    for name, width in widths.items():
        if width is not None and width != expected_widths[name]:
            field = {
                "transcoder": ("d_in", "d_out")[hook_names.index(name)],
                "crosscoder": "d_in / n_sources",
            }
            raise ValueError(
                f"hook {name!r} has width {width} but the coder expects {expected_widths[name]} there "
                f"({field.get(kind, 'd_in')}); set the coder's widths to the model's"
            )
    if kind == "transcoder":
        first, second = (forward_position(name) for name in hook_names)
        if first is not None and second is not None and first >= second:
            raise ValueError(
                f"the transcoder's input hook {hook_names[0]!r} runs after (or with) its output hook "
                f"{hook_names[1]!r}; give the hooks as [input, output] in forward order"
            )
    return dict(expected_widths)
