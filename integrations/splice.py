"""Splice a trained coder into a TransformerLens forward pass and measure what the model loses.

* SAE at hook ``h``: ``h`` is replaced by the SAE's reconstruction.
* Transcoder ``[h_in, h_out]``: ``h_out`` (e.g. the MLP output) is replaced by the transcoder's output
  computed from ``h_in`` *in the same spliced pass*, so the coder stands in for the MLP.
* Crosscoder ``[h_1, ..., h_L]``: each source ``h_l`` is replaced by its reconstruction. An acausal
  crosscoder reads later layers too, so its reconstructions are computed from the clean pass's activations
  and then written into the spliced pass.

Reported in SAELens's metric naming (as ``sae_lens.evals.run_evals`` groups them):
``model_performance_preservation/{ce_loss_score, ce_loss_with_sae, ce_loss_without_sae,
ce_loss_with_ablation}`` with ``ce_loss_score = (CE_ablation - CE_spliced) / (CE_ablation - CE_clean)`` (the
fraction of the CE loss recovered against zero-ablating the replaced hooks),
``reconstruction_quality/explained_variance`` (and ``explained_variance_source_<l>`` per source; SAELens's
``ExplainedVarianceCalculator``), ``reconstruction_quality/mse``, ``sparsity/l0`` and
``sparsity/dead_features`` (latents that never fired on the evaluated tokens), over every token position.

Coders that replace one output per layer (transcoder sets, cross-layer transcoders) are measured layer by
layer by :func:`evaluate_spliced_layers`: the CE loss recovered with every layer spliced in at once and with
each layer alone, against zero-ablating the same outputs, and each layer's explained variance on the clean
pass's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from sae_lens.evals import ExplainedVarianceCalculator

from sdl_anchor.integrations.coder_hooks import check_coder_hooks, coder_kind


def coder_hook_names(coder: Any, hook_names: list[str] | None) -> list[str]:
    """``hook_names``, or the hooks recorded in the coder's metadata when training through our runner."""
    if hook_names is not None:
        return list(hook_names)
    recorded = coder.cfg.metadata.hook_names or (
        [coder.cfg.metadata.hook_name] if coder.cfg.metadata.hook_name else None
    )
    if not recorded:
        raise ValueError("the coder's metadata names no hooks; pass hook_names=[...]")
    return list(recorded)


def coder_output(
    coder: Any, x: torch.Tensor, activation_scaler: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, feature_acts)`` of a coder on ``x [..., d_in]``, with a transcoder's skip term if it has one.
    With SAELens's ``activation_scaler`` (a coder mid-training with ``normalize_activations`` set, before
    the trainer folds the scaling into its weights), the input is scaled in and the output unscaled, as
    SAELens's own evals do."""
    if activation_scaler is not None:
        x = activation_scaler.scale(x)
    feature_acts = coder.encode(x)
    output = coder.decode(feature_acts)
    w_skip = getattr(coder, "W_skip", None)
    if w_skip is not None:
        output = output + x.to(w_skip.dtype) @ w_skip.T
    if activation_scaler is not None:
        output = activation_scaler.unscale(output)
    return output, feature_acts


def _ce_loss(model: Any, tokens: torch.Tensor, hooks: list[tuple[str, Any]]) -> float:
    loss = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
    return loss.float().mean().item()


def _zero(activation: torch.Tensor, hook: Any) -> torch.Tensor:
    return torch.zeros_like(activation)


@torch.no_grad()
def evaluate_spliced(
    coder: Any,
    model: Any,
    token_batches: torch.Tensor | Iterable[torch.Tensor],
    hook_names: list[str] | None = None,
    activation_scaler: Any = None,
) -> dict[str, dict[str, float]]:
    """Splice ``coder`` into ``model`` on each ``[batch, seq]`` token batch and return SAELens-named metrics
    (module docstring). ``hook_names`` default to those recorded in the coder's metadata; pass the trainer's
    ``activation_scaler`` when the coder is mid-training (:func:`coder_output`)."""
    kind = coder_kind(coder)
    hook_names = coder_hook_names(coder, hook_names)
    check_coder_hooks(model, hook_names, coder.cfg, kind)
    if isinstance(token_batches, torch.Tensor):
        token_batches = [token_batches]
    sources = hook_names[1:] if kind == "transcoder" else hook_names  # the hooks the coder replaces
    variance = {name: ExplainedVarianceCalculator() for name in sources}
    totals = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0, "sq_error": 0.0, "l0": 0.0}
    n_batches = n_tokens = 0
    fired = None
    was_training = coder.training
    coder.eval()
    try:
        for tokens in token_batches:
            if tokens.ndim != 2:
                raise ValueError(f"token batches must be [batch, seq], got {tuple(tokens.shape)}")
            tokens = tokens.to(next(model.parameters()).device)
            clean_loss, cache = model.run_with_cache(
                tokens, return_type="loss", loss_per_token=True, names_filter=hook_names
            )
            totals["clean"] += clean_loss.float().mean().item()
            acts = {
                name: cache[name].flatten(2) if cache[name].ndim > 3 else cache[name] for name in hook_names
            }
            if kind == "crosscoder":
                x = torch.cat([acts[name] for name in hook_names], dim=-1)
            else:
                x = acts[hook_names[0]]
            output, feature_acts = coder_output(coder, x.to(coder.device), activation_scaler)
            reconstructions = dict(
                zip(sources, output.split(output.shape[-1] // len(sources), dim=-1), strict=True)
            )
            hooks = _splice_hooks(coder, kind, hook_names, reconstructions, activation_scaler)
            totals["spliced"] += _ce_loss(model, tokens, hooks)
            totals["ablated"] += _ce_loss(model, tokens, [(name, _zero) for name in sources])
            for name in sources:
                target = acts[name].reshape(-1, acts[name].shape[-1]).to(output.device, output.dtype)
                recon = reconstructions[name].reshape(target.shape)
                variance[name].add_batch(recon, target)
                totals["sq_error"] += (recon - target).pow(2).sum().item()
            active = feature_acts.reshape(-1, feature_acts.shape[-1]) > 0
            totals["l0"] += active.sum().item()
            fired = active.any(dim=0) if fired is None else fired | active.any(dim=0)
            n_tokens += active.shape[0]
            n_batches += 1
    finally:
        coder.train(was_training)
    if n_batches == 0:
        raise ValueError("no token batches to evaluate on")
    clean, spliced, ablated = (totals[key] / n_batches for key in ("clean", "spliced", "ablated"))
    denominator = ablated - clean
    explained = {name: calculator.compute() for name, calculator in variance.items()}
    quality = {"explained_variance": sum(explained.values()) / len(explained)}
    if len(sources) > 1:
        quality.update({f"explained_variance_source_{i}": explained[name] for i, name in enumerate(sources)})
    quality["mse"] = totals["sq_error"] / (n_tokens * len(sources))
    return {
        "model_performance_preservation": {
            "ce_loss_score": (ablated - spliced) / denominator if denominator != 0 else float("nan"),
            "ce_loss_with_sae": spliced,
            "ce_loss_without_sae": clean,
            "ce_loss_with_ablation": ablated,
        },
        "reconstruction_quality": quality,
        "sparsity": {"l0": totals["l0"] / n_tokens, "dead_features": int((~fired).sum().item())},
    }


def _splice_hooks(
    coder: Any,
    kind: str,
    hook_names: list[str],
    reconstructions: dict[str, torch.Tensor],
    activation_scaler: Any = None,
) -> list[tuple[str, Any]]:
    """Forward hooks that write the coder's output into the model (module docstring)."""
    if kind != "transcoder":
        return [(name, _writer(reconstructions[name])) for name in hook_names]
    seen: dict[str, torch.Tensor] = {}

    def read_input(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["x_in"] = activation
        return activation

    def write_output(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        output, _ = coder_output(coder, seen["x_in"].to(coder.device), activation_scaler)
        return output.to(activation.device, activation.dtype).reshape(activation.shape)

    return [(hook_names[0], read_input), (hook_names[1], write_output)]


def _writer(value: torch.Tensor) -> Any:
    def write(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return value.to(activation.device, activation.dtype).reshape(activation.shape)

    return write


@torch.no_grad()
def evaluate_spliced_layers(
    model: Any,
    token_batches: torch.Tensor | Iterable[torch.Tensor],
    *,
    layers: Sequence[int],
    cached_hooks: list[str],
    output_hooks: Sequence[str],
    splice_hooks: Callable[[Sequence[int]], list[tuple[str, Any]]],
    reconstructions: Callable[[Any], Sequence[tuple[torch.Tensor, torch.Tensor]]],
    name: str,
    layer_loss_key: str,
) -> dict[str, Any]:
    """The CE loss recovered with the outputs of every layer position in ``layers`` replaced at once (under
    ``name``: ``ce_loss_score``, ``ce_loss_with_<name>``, ``ce_loss_without_<name>``,
    ``ce_loss_with_ablation``) and with each replaced alone (under ``"layers"``, keyed by layer:
    ``ce_loss_score``, ``layer_loss_key``, ``explained_variance``), against zero-ablating ``output_hooks`` (one
    a position). ``splice_hooks(positions)`` gives the forward hooks that replace those positions' outputs;
    ``reconstructions(cache)`` gives each position's ``(reconstruction, target)`` from the clean pass's cache
    of ``cached_hooks``. Losses are averaged over the batches; the scores are taken from their sums."""
    if isinstance(token_batches, torch.Tensor):
        token_batches = [token_batches]
    positions = range(len(layers))
    sums = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}
    per_layer = {p: {"spliced": 0.0, "ablated": 0.0, "sq_error": 0.0, "variance": 0.0} for p in positions}
    n_batches = 0
    device = next(model.parameters()).device
    for tokens in token_batches:
        tokens = tokens.to(device)
        clean, cache = model.run_with_cache(tokens, return_type="loss", names_filter=cached_hooks)
        sums["clean"] += float(clean)
        sums["spliced"] += _batch_loss(model, tokens, splice_hooks(positions))
        sums["ablated"] += _batch_loss(model, tokens, [(output, _zero) for output in output_hooks])
        for p, (recon, target) in zip(positions, reconstructions(cache), strict=True):
            per_layer[p]["sq_error"] += float((recon - target).pow(2).sum())
            per_layer[p]["variance"] += float((target - target.mean(dim=(0, 1))).pow(2).sum())
            per_layer[p]["spliced"] += _batch_loss(model, tokens, splice_hooks([p]))
            per_layer[p]["ablated"] += _batch_loss(model, tokens, [(output_hooks[p], _zero)])
        n_batches += 1
    if n_batches == 0:
        raise ValueError("no token batches to evaluate on")

    def recovered(spliced: float, ablated: float) -> float:
        denominator = ablated - sums["clean"]
        return (ablated - spliced) / denominator if denominator != 0 else float("nan")

    return {
        name: {
            "ce_loss_score": recovered(sums["spliced"], sums["ablated"]),
            f"ce_loss_with_{name}": sums["spliced"] / n_batches,
            f"ce_loss_without_{name}": sums["clean"] / n_batches,
            "ce_loss_with_ablation": sums["ablated"] / n_batches,
        },
        "layers": {
            str(layers[p]): {
                "ce_loss_score": recovered(values["spliced"], values["ablated"]),
                layer_loss_key: values["spliced"] / n_batches,
                "explained_variance": 1 - values["sq_error"] / max(values["variance"], 1e-12),
            }
            for p, values in per_layer.items()
        },
    }


def _batch_loss(model: Any, tokens: torch.Tensor, hooks: list[tuple[str, Any]]) -> float:
    """The model's CE loss on ``tokens`` with ``hooks``, as TransformerLens averages it (:func:`_ce_loss`
    averages the per-token losses itself)."""
    return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))
