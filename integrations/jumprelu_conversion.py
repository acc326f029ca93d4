"""TopK / BatchTopK coders converted to JumpReLU ones, for tools that load only ReLU and JumpReLU coders
(circuit-tracer 0.5.0; issue 36).

A TopK latent fires on a token when its pre-activation ``h`` is among the ``k`` largest of that token (and
positive); a BatchTopK latent when ``h`` is among the ``k * B`` largest of a batch of ``B`` tokens. Where it
fires, its value is ``h`` (SAELens's ``TopK`` / ``BatchTopK`` keep the ReLU of the kept pre-activations), which
is also what a JumpReLU ``h * (h > t)`` gives where it fires. So a JumpReLU with the same weights reproduces
the trained model's activations exactly when, for every latent, ``h > t`` holds on the same tokens as the TopK
decision: the conversion is the choice of one threshold ``t_j >= 0`` per latent.

**Rule** (:func:`fit_jumprelu_thresholds`): on held-out activations, each latent's threshold is the one that
minimises the number of tokens where the JumpReLU's firing decision differs from the TopK model's (missed
firings plus false firings), computed exactly: the latent's pre-activations are sorted and every split between
two distinct consecutive values is counted with cumulative sums. Thresholds are kept ``>= 0`` (circuit-tracer's
JumpReLU has no ReLU; a TopK latent never fires on a non-positive pre-activation, so this loses nothing). Ties
among minimisers go to the split whose false firings and missed firings are closest (so the latent's firing
rate, hence L0, is kept), then to the widest gap between the two values it separates; the threshold is the
midpoint of that gap (the largest margin to both sides), or the largest value seen when the best split turns
the latent off on every held-out token (a latent that never fired there).

**Error** (:func:`conversion_report`): the thresholds are fitted on the first part of the held-out tokens
(``fit_fraction``) and the error is measured on the rest, so the figures are out of sample: the fraction of
(token, latent) firing decisions that differ (and of those, false and missed firings), the relative
reconstruction error of the JumpReLU against the TopK model (``sum ||y_jumprelu - y_topk||^2`` over the
variance ``sum ||y_topk - mean(y_topk)||^2``), L0 before and after, and, given the true targets, each model's
fraction of variance unexplained. For a BatchTopK coder (saved by SAELens as a JumpReLU with one threshold per
layer) the same figures are given for the saved threshold, beside the per-latent one.

* :func:`convert_clt`: a TopK or BatchTopK-trained :class:`~sdl_anchor.integrations.cross_layer_transcoder.
  CrossLayerTranscoder` -> a JumpReLU one (thresholds per layer and latent);
* :func:`convert_transcoder`: a TopK transcoder (ours, ``topk_transcoder``) or a BatchTopK-trained one
  (saved as SAELens's ``jumprelu_transcoder``) -> SAELens's ``JumpReLUTranscoder`` (or skip transcoder).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopK
from sae_lens.saes.topk_sae import TopK

RULE = (
    "per latent, the threshold t >= 0 minimising firing disagreements with the TopK (or BatchTopK) model on the fit tokens "
    "(exact, by sorting); ties: fewest |false - missed| firings, then the widest gap; t = the gap's midpoint"
)


def _check_pre_and_fired(pre: torch.Tensor, fired: torch.Tensor) -> None:
    if not isinstance(pre, torch.Tensor) or pre.ndim != 2 or pre.shape[0] == 0 or pre.shape[1] == 0:
        shape = tuple(pre.shape) if isinstance(pre, torch.Tensor) else type(pre).__name__
        raise ValueError(f"pre-activations must be a non-empty [n_tokens, d_sae] tensor, got {shape}")
    if not pre.is_floating_point():
        raise ValueError(f"pre-activations must be floating point, got {pre.dtype}")
    if not torch.isfinite(pre).all():
        raise ValueError("pre-activations hold NaN or infinite values; check the held-out activations")
    if not isinstance(fired, torch.Tensor) or fired.shape != pre.shape:
        shape = tuple(fired.shape) if isinstance(fired, torch.Tensor) else type(fired).__name__
        raise ValueError(
            f"firing decisions must have the pre-activations' shape {tuple(pre.shape)}, got {shape}"
        )


@torch.no_grad()
def fit_jumprelu_thresholds(pre: torch.Tensor, fired: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-latent thresholds ``[d_sae]`` (module docstring's rule) for pre-activations ``pre [n_tokens,
    d_sae]`` and the reference model's firing decisions ``fired`` (bool, same shape): a JumpReLU fires latent
    ``j`` on a token when ``pre > t_j``. Exact; ``O(n log n)`` per latent, ``chunk`` latents at a time."""
    _check_pre_and_fired(pre, fired)
    n = pre.shape[0]
    thresholds = []
    for start in range(0, pre.shape[1], chunk):
        values = pre[:, start : start + chunk].double().clamp_min(0.0)
        on = fired[:, start : start + chunk].bool()
        values, order = values.sort(dim=0)  # ascending; a split m turns the m smallest off
        on = on.gather(0, order).double()
        zero = values.new_zeros(1, values.shape[1])
        missed = torch.cat([zero, on.cumsum(0)])  # [n + 1]: fired among the m smallest
        total = missed[-1:]
        m = torch.arange(n + 1, dtype=torch.double)[:, None]
        false = (n - m) - (total - missed)  # not fired among the n - m largest
        lower = torch.cat([zero, values])  # the largest value turned off (0 for m = 0: t >= 0)
        upper = torch.cat([values, torch.full_like(zero, math.inf)])  # the smallest value left on
        valid = upper > lower  # a split between equal values cannot be made
        errors = torch.where(valid, missed + false, math.inf)
        key = errors * (n + 1) + (false - missed).abs()  # exact integers in float64 for n < 2**26
        best = key == key.min(dim=0, keepdim=True).values
        gap = torch.where(best, upper - lower, -1.0)
        split = gap.argmax(dim=0, keepdim=True)  # the first of the widest gaps
        low, high = lower.gather(0, split)[0], upper.gather(0, split)[0]
        threshold = torch.where(torch.isinf(high), low, low + (high - low) / 2).to(pre.dtype)
        # rounding the midpoint to pre's dtype must not reach the value that should stay on
        thresholds.append(torch.where(threshold < high.to(pre.dtype), threshold, low.to(pre.dtype)))
    return torch.cat(thresholds)


def topk_fired(pre: torch.Tensor, k: int) -> torch.Tensor:
    """SAELens's ``TopK(k)`` firing decisions on ``pre [..., d_sae]``: kept and positive."""
    return TopK(int(k))(pre) > 0


def batchtopk_fired(pre: torch.Tensor, k: float, batch_size: int) -> torch.Tensor:
    """SAELens's ``BatchTopK(k)`` firing decisions on ``pre [n_tokens, d_sae]``, in consecutive batches of
    ``batch_size`` tokens (the last may be smaller), as training applied it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    activation = BatchTopK(float(k))
    return torch.cat([activation(pre[i : i + batch_size]) > 0 for i in range(0, pre.shape[0], batch_size)])


@dataclasses.dataclass
class Reference:
    """What a conversion reproduces: the activation (``topk`` or ``batchtopk``), its ``k``, the batch size
    BatchTopK ran on, and (BatchTopK) the thresholds the coder was saved with."""

    activation: str
    k: float
    batch_size: int | None = None
    saved_thresholds: torch.Tensor | None = None

    def fired(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "topk":
            return topk_fired(pre, int(self.k))
        return batchtopk_fired(pre, self.k, self.batch_size or pre.shape[0])


def _split(n_tokens: int, fit_fraction: float) -> int:
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    n_fit = round(n_tokens * fit_fraction)
    if n_fit < 1 or n_fit >= n_tokens:
        raise ValueError(
            f"{n_tokens} held-out tokens cannot be split into fit and evaluation parts at fit_fraction "
            f"{fit_fraction}; give more held-out tokens (hundreds at least)"
        )
    return n_fit


def _variance(y: torch.Tensor) -> float:
    return float((y - y.mean(dim=0)).double().pow(2).sum())


def decision_figures(fired: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Disagreement figures of firing decisions ``fired`` against ``reference`` (bool, ``[n_tokens, ...,
    d_sae]``); L0 is latents firing per token (per layer for a CLT)."""
    per_token = reference[..., 0].numel()
    layers = reference[0, ..., 0].numel()
    return {
        "disagreement": float((fired != reference).double().mean()),
        "false_firings": float((fired & ~reference).double().mean()),
        "missed_firings": float((~fired & reference).double().mean()),
        "l0_before": float(reference.double().sum()) / per_token,
        "l0_after": float(fired.double().sum()) / per_token,
        "layers": layers,
    }


def conversion_report(
    fired: torch.Tensor,
    reference: torch.Tensor,
    output: torch.Tensor,
    reference_output: torch.Tensor,
    target: torch.Tensor | None = None,
) -> dict[str, float]:
    """The error of a conversion on evaluation tokens (module docstring): decisions ``fired`` against
    ``reference`` and the JumpReLU's reconstruction ``output`` against the reference model's."""
    figures = decision_figures(fired, reference)
    del figures["layers"]
    flat_out, flat_ref = output.flatten(1), reference_output.flatten(1)
    figures["relative_reconstruction_error"] = float((flat_out - flat_ref).double().pow(2).sum()) / max(
        _variance(flat_ref), 1e-30
    )
    if target is not None:
        flat_target = target.flatten(1)
        variance = max(_variance(flat_target), 1e-30)
        figures["fvu_before"] = float((flat_ref - flat_target).double().pow(2).sum()) / variance
        figures["fvu_after"] = float((flat_out - flat_target).double().pow(2).sum()) / variance
    return figures


def _check_inputs(
    x: torch.Tensor, shape: tuple[int, ...], what: str, target: Any, target_shape: tuple
) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        given = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"held-out {what} must be [n_tokens, {', '.join(map(str, shape))}], got {given}")
    if not torch.isfinite(x).all():
        raise ValueError(f"held-out {what} hold NaN or infinite values")
    if target is not None:
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != (x.shape[0], *target_shape):
            given = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(
                f"held-out targets must be [{x.shape[0]}, {', '.join(map(str, target_shape))}], got {given}"
            )


def _training_k(cfg: Any) -> float | None:
    details = getattr(cfg.metadata, "training_architecture_details", None) or {}
    k = details.get("k") if isinstance(details, dict) else None
    return float(k) if isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0 else None


def _reference(cfg: Any, activation: str, batch_size: int | None, what: str) -> Reference:
    training = getattr(cfg.metadata, "training_architecture", None) or ""
    if activation == "topk":
        return Reference("topk", int(cfg.k))
    if activation == "jumprelu" and "batchtopk" in training:
        k = _training_k(cfg)
        if k is None:
            raise ValueError(
                f"this {what} was trained as {training} but its cfg.json records no k "
                "(metadata.training_architecture_details.k); it cannot be converted"
            )
        if batch_size is None:
            recorded = getattr(cfg.metadata, "train_batch_size_tokens", None)
            batch_size = recorded if isinstance(recorded, int) and recorded > 0 else None
        if batch_size is None:
            raise ValueError(
                f"give batch_size: the number of tokens BatchTopK kept k={k:g} per token on average over in "
                "training (train_batch_size_tokens; CLTs trained here record it in cfg.json)"
            )
        return Reference("batchtopk", k, batch_size)
    raise ValueError(
        f"only TopK and BatchTopK {what}s need converting; this one is {training or activation!r}, which "
        "circuit-tracer loads as it is"
    )


@torch.no_grad()
def convert_clt(
    coder: Any,
    x_in: torch.Tensor,
    x_out: torch.Tensor | None = None,
    batch_size: int | None = None,
    fit_fraction: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """A JumpReLU copy of a TopK or BatchTopK-trained CLT, and its conversion report (module docstring).

    ``x_in [n_tokens, n_layers, d_in]``: held-out inputs of every layer (``x_out [n_tokens, n_layers, d_out]``,
    optional: the true targets); ``batch_size``: BatchTopK's training batch in tokens (BatchTopK only)."""
    from sdl_anchor.integrations.cross_layer_transcoder import CrossLayerTranscoder

    if not isinstance(coder, CrossLayerTranscoder):
        raise ValueError(f"give a saved CLT (CrossLayerTranscoder), not {type(coder).__name__}")
    cfg = coder.cfg
    reference = _reference(cfg, cfg.activation, batch_size, "CLT")
    _check_inputs(x_in, (cfg.n_layers, cfg.d_in), "CLT inputs", x_out, (cfg.n_layers, cfg.d_out))
    n_fit = _split(x_in.shape[0], fit_fraction)
    x_in = x_in.to(coder.device, coder.dtype)
    pre = coder.pre_activations(x_in)  # [n, L, d_sae]
    fired = torch.stack([reference.fired(pre[:, layer]) for layer in range(cfg.n_layers)], dim=1)
    thresholds = torch.stack(
        [fit_jumprelu_thresholds(pre[:n_fit, layer], fired[:n_fit, layer]) for layer in range(cfg.n_layers)]
    )
    converted = _jumprelu_clt(coder, thresholds)
    evaluation = slice(n_fit, None)
    eval_pre, eval_fired = pre[evaluation], fired[evaluation]
    ref_out = coder.decode_layers(eval_pre * eval_fired)
    target = None if x_out is None else x_out[evaluation].to(ref_out)

    def figures(t: torch.Tensor) -> dict[str, float]:
        on = eval_pre > t
        return conversion_report(on, eval_fired, coder.decode_layers(eval_pre * on), ref_out, target)

    report = _report(reference, x_in.shape[0], n_fit, figures(thresholds), cfg.n_layers)
    report["per_layer"] = [
        decision_figures(eval_pre[:, layer] > thresholds[layer], eval_fired[:, layer])
        for layer in range(cfg.n_layers)
    ]
    for row in report["per_layer"]:
        del row["layers"]
    if reference.activation == "batchtopk":
        report["saved_thresholds"] = figures(coder.threshold.detach().clamp_min(0.0))
    return converted, report


def _report(reference: Reference, n_tokens: int, n_fit: int, figures: dict[str, float], layers: int):
    return {
        "reference": reference.activation,
        "k": reference.k,
        **({"batch_size": reference.batch_size} if reference.activation == "batchtopk" else {}),
        "rule": RULE,
        "held_out_tokens": n_tokens,
        "fit_tokens": n_fit,
        "evaluation_tokens": n_tokens - n_fit,
        "l0_unit": "latents firing per token" + (" and layer" if layers > 1 else ""),
        **figures,
    }


def _jumprelu_clt(coder: Any, thresholds: torch.Tensor) -> Any:
    from sdl_anchor.integrations.cross_layer_transcoder import (
        CrossLayerTranscoder,
        CrossLayerTranscoderConfig,
    )

    cfg_dict = coder.cfg.to_dict()
    cfg_dict.update(activation="jumprelu", k=None)
    config = CrossLayerTranscoderConfig.from_dict(cfg_dict)
    config.metadata.jumprelu_conversion = {"from": coder.cfg.activation, "rule": RULE}
    converted = CrossLayerTranscoder(config)
    state = {name: tensor.detach().clone() for name, tensor in coder.state_dict().items()}
    state["threshold"] = thresholds.to(coder.dtype)
    converted.load_state_dict(state)
    return converted.to(coder.device)


@torch.no_grad()
def convert_transcoder(
    transcoder: Any,
    x_in: torch.Tensor,
    x_out: torch.Tensor | None = None,
    batch_size: int | None = None,
    fit_fraction: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """A SAELens ``JumpReLUTranscoder`` (or ``JumpReLUSkipTranscoder``) copy of a TopK transcoder or a
    BatchTopK-trained one, and its conversion report (module docstring). ``x_in [n_tokens, d_in]``: held-out
    inputs; ``x_out [n_tokens, d_out]``: optional true targets."""
    from sae_lens.saes.transcoder import (
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        Transcoder,
    )

    if not isinstance(transcoder, Transcoder):
        raise ValueError(f"give a saved transcoder (SAELens Transcoder), not {type(transcoder).__name__}")
    cfg = transcoder.cfg
    architecture = cfg.architecture()
    activation = (
        "topk" if architecture.startswith("topk") else "jumprelu" if "jumprelu" in architecture else ""
    )
    reference = _reference(cfg, activation, batch_size, "transcoder")
    d_out = int(transcoder.W_dec.shape[1])
    _check_inputs(x_in, (cfg.d_in,), "transcoder inputs", x_out, (d_out,))
    n_fit = _split(x_in.shape[0], fit_fraction)
    captured: dict[str, torch.Tensor] = {}

    def keep(acts: torch.Tensor, hook: Any) -> torch.Tensor:
        captured["pre"] = acts
        return acts

    x_in = x_in.to(transcoder.device, transcoder.dtype)
    with transcoder.hooks(fwd_hooks=[("hook_sae_acts_pre", keep)]):
        transcoder.encode(x_in)  # SAELens's own input processing and pre-activations
    pre = captured["pre"]
    fired = reference.fired(pre)
    thresholds = fit_jumprelu_thresholds(pre[:n_fit], fired[:n_fit])
    skip = hasattr(transcoder, "W_skip")
    config_class, coder_class = (
        (JumpReLUSkipTranscoderConfig, JumpReLUSkipTranscoder)
        if skip
        else (JumpReLUTranscoderConfig, JumpReLUTranscoder)
    )
    names = {field.name for field in dataclasses.fields(config_class)} - {"metadata"}
    config = config_class(**{name: getattr(cfg, name) for name in names if hasattr(cfg, name)})
    config.d_out = d_out
    config.metadata = copy.deepcopy(cfg.metadata)
    config.metadata.jumprelu_conversion = {"from": reference.activation, "rule": RULE}
    converted = coder_class(config).to(transcoder.device, transcoder.dtype)
    state = {name: tensor.detach().clone() for name, tensor in transcoder.state_dict().items()}
    state["threshold"] = thresholds.to(transcoder.dtype)
    converted.load_state_dict(state)

    evaluation = slice(n_fit, None)
    eval_pre, eval_fired = pre[evaluation], fired[evaluation]
    eval_x = x_in[evaluation]

    def output(acts: torch.Tensor) -> torch.Tensor:
        out = acts @ transcoder.W_dec + transcoder.b_dec
        return out + eval_x @ transcoder.W_skip.T if skip else out

    ref_out = output(eval_pre * eval_fired)
    target = None if x_out is None else x_out[evaluation].to(ref_out)

    def figures(t: torch.Tensor) -> dict[str, float]:
        on = eval_pre > t
        return conversion_report(on, eval_fired, output(eval_pre * on), ref_out, target)

    report = _report(reference, x_in.shape[0], n_fit, figures(thresholds), 1)
    if reference.activation == "batchtopk":
        report["saved_thresholds"] = figures(transcoder.threshold.detach().clamp_min(0.0))
    return converted, report


@torch.no_grad()
def held_out_activations(
    model: Any,
    layers: list[int],
    hooks: tuple[str, str],
    dataset_path: str,
    n_tokens: int,
    context_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_in, x_out)``, each ``[n_tokens, len(layers), d]``: every layer's input and output hook on
    ``n_tokens`` tokens of the text dataset ``dataset_path`` (a folder of text files or a Hugging Face
    dataset with a ``text`` column, read by ``datasets.load_dataset``), in rows of ``context_size`` tokens, each
    starting with BOS, as SAELens's activation store feeds training. Give text the coder was not trained on."""
    import datasets

    from sdl_anchor.integrations.transcoder_set import layer_hooks

    for name, value in (("n_tokens", n_tokens), ("context_size", context_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    try:
        dataset = datasets.load_dataset(str(dataset_path), split="train", streaming=True)
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f"could not read held-out text from {dataset_path}: {err}") from None
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id
    row, rows, buffer = context_size - (bos is not None), [], []
    n_rows = -(-n_tokens // context_size)
    for document in dataset:
        text = document.get("text") if isinstance(document, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"held-out dataset {dataset_path} has no 'text' column of strings")
        buffer += tokenizer(text, add_special_tokens=False)["input_ids"]
        while len(buffer) >= row and len(rows) < n_rows:
            rows.append(([bos] if bos is not None else []) + buffer[:row])
            buffer = buffer[row:]
        if len(rows) >= n_rows:
            break
    if len(rows) < n_rows:
        raise ValueError(
            f"held-out dataset {dataset_path} holds {len(rows) * context_size} tokens in rows of {context_size}; "
            f"{n_tokens} were asked for: give more text or fewer --held-out-tokens"
        )
    names = [layer_hooks(layer, hooks) for layer in layers]
    device = next(model.parameters()).device
    x_in, x_out = [], []
    for start in range(0, n_rows, 16):
        tokens = torch.tensor(rows[start : start + 16], device=device)
        _, cache = model.run_with_cache(tokens, names_filter=[n for pair in names for n in pair])
        x_in.append(torch.stack([cache[i].flatten(0, 1) for i, _ in names], dim=1).cpu())
        x_out.append(torch.stack([cache[o].flatten(0, 1) for _, o in names], dim=1).cpu())
    return torch.cat(x_in)[:n_tokens], torch.cat(x_out)[:n_tokens]
