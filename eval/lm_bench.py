"""``sdl-anchor bench lm``: the paper's questions on a real language model (SmolLM2-135M-Instruct by default).

1. The model's residual stream at ``blocks.{layer}.hook_resid_post`` is cached once by SAELens's own
   ``CacheActivationsRunner`` (handed the loaded model) for the training text and the held-out text of the
   corpus (:mod:`~sdl_anchor.eval.lm_corpus`); every variant of every seed trains on the same cached
   activations, in an order fixed by the seed. Beginning-of-sequence positions are left out throughout.
2. Anchors: the ``n_anchors`` most frequent word tokens of the training text are classes ("this position
   holds that token"); their centred, normalised class means over the cached training activations are the
   anchors (:func:`~sdl_anchor.anchoring.class_mean_anchors`, as ``sdl-anchor anchors class-means`` builds).
3. Each (seed, method, variant) trains through SAELens's ``SAETrainer`` (stock SAELens classes for stock,
   Anthropic and theory; ours where anchors or the aligned tie are on) and is saved in SAELens's format.
4. Each saved SAE is scored on held-out text: FVU, L0 and dead latents on the cached held-out activations; CE
   loss recovered and KL divergence with the SAE spliced into the model (all positions but the BOS);
   SAEBench's first-letter absorption audit on this model's tokenizer (:mod:`~sdl_anchor.absorption.audit`);
   for each anchor class, the precision and recall of its anchored latent (anchored variants) and of the
   best latent of any SAE by F1 (every variant: the fair comparison).
5. The paper's Figure 7: training MSE against tokens for no resampling, Anthropic's and theory resampling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sae_lens.registry import get_sae_training_class

from sdl_anchor.anchoring import AnchorSet, class_mean_anchors
from sdl_anchor.eval.bench_common import constant_lr_config, fit, pick_preset, resampling_facts
from sdl_anchor.eval.lm_corpus import Corpus, folder_corpus, python_docs_corpus
from sdl_anchor.eval.lm_presets import CURVE_VARIANTS, METHODS, PRESETS, VARIANTS, LMPreset
from sdl_anchor.eval.lrb_table import check_choices, check_resumable
from sdl_anchor.integrations.paired_trainer import PairedSAETrainer
from sdl_anchor.integrations.resampling_trainer import ResamplingSAETrainer
from sdl_anchor.resampling import ResamplingConfig

CURVE_POINTS = 100
SCORE_BATCH = 4096


def resolve_preset(preset: LMPreset | str) -> LMPreset:
    return pick_preset(preset, PRESETS)


# ---------------------------------------------------------------- the model and its activations


def load_subject_model(model_path: Path | None, device: str, progress: bool) -> tuple[Any, dict[str, Any]]:
    """The model (booted from ``model_path``, or the cached SmolLM2 checkpoint, converted first if needed)
    and a description of it."""
    from sdl_anchor.integrations.loading import load_model
    from sdl_anchor.integrations.smollm2 import CONVERSION_REPORT, ensure_checkpoint

    if model_path is None:
        model_path = ensure_checkpoint(progress=progress)[0]
    info = {"name": Path(model_path).name, "path": str(model_path)}
    conversion = Path(model_path) / CONVERSION_REPORT
    if conversion.is_file():  # a checkpoint `sdl-anchor models` wrote
        from sdl_anchor.io import read_json

        report = read_json(conversion, "conversion report")
        info |= {"name": report.get("model", info["name"]), "gguf_sha256": report.get("gguf_sha256")}
    model = load_model(info["name"], model_path, device)
    model.eval()
    info |= {"n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model}
    return model, info


def count_tokens(tokenizer: Any, texts: list[str], enough: int) -> int:
    """How many tokens ``texts`` hold, counted document by document until ``enough`` (the whole corpus is
    tokenized only when it is too small)."""
    total = 0
    for text in texts:
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if total >= enough:
            break
    return total


def cache_activations(
    model: Any,
    model_key: str,
    texts: list[str],
    hook: str,
    n_tokens: int,
    preset: LMPreset,
    folder: Path,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(activations [N, d], token_ids [N])`` at ``hook`` for the first ``n_tokens`` tokens of ``texts`` (in
    ``context_size`` windows, BOS-prefixed as SAELens's store makes them), through SAELens's
    ``CacheActivationsRunner`` into ``folder``; BOS positions removed. A cache already in ``folder`` is read
    only if it was made from the same model (``model_key``, its weights' fingerprint), text, hook and sizes;
    any other is replaced, so an earlier run's activations can never stand in for this one's."""
    from datasets import Dataset
    from sae_lens import CacheActivationsRunnerConfig

    from sdl_anchor.integrations.compat import cache_activations_with
    from sdl_anchor.io import write_json

    identity = {
        "model": model_key,
        "texts": hashlib.sha256("\0".join(texts).encode()).hexdigest(),
        "hook": hook,
        "n_tokens": n_tokens,
        "context_size": preset.context_size,
        "model_batch_size": preset.model_batch_size,
    }
    stamp = folder.parent / f"{folder.name}.identity.json"
    made = stamp.is_file() and json.loads(stamp.read_text()) == identity
    if not (made and (folder / "dataset_info.json").exists()):
        shutil.rmtree(folder, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        batch_tokens = preset.model_batch_size * preset.context_size
        n_batches = max(1, -(-n_tokens // batch_tokens))
        per_buffer = max(1, n_batches // 20)  # about 20 shards, so the progress bar moves
        bytes_per_token = model.cfg.d_model * 4
        config = CacheActivationsRunnerConfig(
            dataset_path="in-memory corpus",
            model_name="the loaded model",
            model_batch_size=preset.model_batch_size,
            hook_name=hook,
            d_in=model.cfg.d_model,
            training_tokens=n_batches * batch_tokens,
            context_size=preset.context_size,
            new_cached_activations_path=str(folder),
            shuffle=False,
            device=str(next(model.parameters()).device),
            buffer_size_gb=(per_buffer * batch_tokens + 0.5) * bytes_per_token / 1e9,
            prepend_bos=True,
        )
        cache_activations_with(model, config, Dataset.from_dict({"text": texts}), progress)
        write_json(stamp, identity)  # last: a cache cut short has no stamp and is made again
    table = Dataset.load_from_disk(str(folder)).with_format("torch")[:]
    acts = table[hook].reshape(-1, model.cfg.d_model).float()
    tokens = table["token_ids"].reshape(-1).long()
    keep = tokens != model.tokenizer.bos_token_id
    return acts[keep], tokens[keep]


# ---------------------------------------------------------------- anchors


def anchor_classes(tokens: torch.Tensor, tokenizer: Any, n: int) -> list[tuple[int, str]]:
    """The ``n`` most frequent tokens of ``tokens`` that are words (letters only, after the leading space)."""
    counts = torch.bincount(tokens, minlength=len(tokenizer))
    chosen: list[tuple[int, str]] = []
    for token in torch.argsort(counts, descending=True, stable=True).tolist():
        text = tokenizer.decode([token])
        if text.strip().isalpha() and counts[token] > 0:
            chosen.append((token, text))
        if len(chosen) == n:
            return chosen
    raise ValueError(f"the training text has only {len(chosen)} word tokens; the preset asks for {n} anchors")


def build_anchors(acts: torch.Tensor, tokens: torch.Tensor, classes: list[tuple[int, str]]) -> AnchorSet:
    """Centred (on every training position's mean), normalised class means of the anchor classes."""
    centred = acts - acts.mean(dim=0)
    ids = torch.tensor([token for token, _ in classes])
    rows = torch.isin(tokens, ids)
    labels = torch.searchsorted(ids.sort().values, tokens[rows])
    order = ids.argsort()
    names = [classes[i][1] for i in order.tolist()]
    anchors = class_mean_anchors(centred[rows], labels, names=names, center=False)
    inverse = order.argsort()  # back to frequency order
    return AnchorSet(anchors.directions_in[inverse], names=[classes[i][1] for i in range(len(classes))])


# ---------------------------------------------------------------- training


def build_sae(
    preset: LMPreset, method: str, variant: str, anchor_path: Path | None, d_in: int, device: str
) -> Any:
    """A fresh SAELens TrainingSAE: SAELens's own class unless anchors or the aligned tie are on."""
    anchored, _, aligned = VARIANTS[variant]
    architecture = f"anchored_{method}" if (anchored or aligned) else method
    settings: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": preset.d_sae,
        "k": preset.k,
        "device": device,
        "normalize_activations": "expected_average_only_in",
    }
    if anchored:
        settings |= {"anchor_path": str(anchor_path), "anchor_coefficient": preset.anchor_coefficient}
        settings["anchor_init"] = True
    if aligned:
        settings["aligned_encoder"] = True
    sae_class, config_class = get_sae_training_class(architecture)
    return sae_class(config_class(**settings))


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=generator)
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


class LossCurve:
    """A step callback recording the training MSE every step (the paper's Figure 7)."""

    def __init__(self) -> None:
        self.mse: list[float] = []

    def __call__(self, trainer: Any, output: Any) -> None:
        self.mse.append(float(output.losses["mse_loss"].detach()))

    def downsampled(self, batch_size: int) -> dict[str, list[float]]:
        """Means over ``CURVE_POINTS`` equal windows, with the tokens seen at each window's end."""
        n = len(self.mse)
        size = max(1, math.ceil(n / CURVE_POINTS))
        windows = [self.mse[i : i + size] for i in range(0, n, size)]
        ends = [min(n, i + size) * batch_size for i in range(0, n, size)]
        return {"tokens": ends, "mse": [sum(w) / len(w) for w in windows]}


def train_sae(
    sae: Any, acts: torch.Tensor, preset: LMPreset, variant: str, seed: int, device: str, progress: bool
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Train ``sae`` for ``preset.n_steps`` batches of the cached activations (order seeded by ``seed``)."""
    _, strategy, _ = VARIANTS[variant]
    config = constant_lr_config(
        preset.n_steps, preset.batch_size, preset.lr, device, preset.dead_window_fraction
    )
    provider = (batch.to(device) for batch in _batches(acts, preset.batch_size, seed))
    if strategy is not None:
        trainer: PairedSAETrainer = ResamplingSAETrainer(
            cfg=config,
            sae=sae,
            data_provider=provider,
            resampling=ResamplingConfig(strategy=strategy, seed=seed),
        )
    else:
        trainer = PairedSAETrainer(cfg=config, sae=sae, data_provider=provider)
    # SAELens's expected_average_only_in scaling, from every cached training activation, and b_dec at the
    # scaled data mean (every variant alike): the residual stream's mean is most of its norm (68 of 92 at
    # SmolLM2's layer 2), which lr-sized steps on b_dec would take the whole run to learn
    factor = acts.shape[1] ** 0.5 / float(acts.norm(dim=-1).mean())
    trainer.activation_scaler.scaling_factor = factor
    with torch.no_grad():
        sae.b_dec.copy_((acts.mean(dim=0) * factor).to(sae.b_dec))
    curve = LossCurve()
    trainer.step_callbacks.append(curve)
    facts = {"train_seconds": round(fit(trainer, progress), 1), "n_steps": preset.n_steps}
    facts |= resampling_facts(trainer)
    return facts, curve.downsampled(preset.batch_size)


# ---------------------------------------------------------------- scoring


OUTLIER_NORM = 10.0  # positions whose norm exceeds this many times the median: massive activations


@torch.no_grad()
def reconstruction_metrics(sae: Any, acts: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """FVU, mean L0 and dead fraction on held-out activations; and each latent's firing mask (a ``[N, d_sae]``
    bool tensor, for the anchor scores).

    Pooled FVU is dominated by a few massive-activation positions (Llama-family residual streams have tokens
    whose norm is about 100x the median, besides the BOS), so ``fvu_typical`` also reports it over the
    positions within ``OUTLIER_NORM`` times the median norm (``outlier_positions`` are left out of it only)."""
    norms = acts.norm(dim=-1)
    typical = norms <= OUTLIER_NORM * norms.median()
    mean, typical_mean = acts.mean(dim=0), acts[typical].mean(dim=0)
    error = total = typical_error = typical_total = l0 = 0.0
    fires = []
    for start in range(0, acts.shape[0], SCORE_BATCH):
        x = acts[start : start + SCORE_BATCH].to(sae.device)
        keep = typical[start : start + SCORE_BATCH].to(sae.device)
        latents = sae.encode(x)
        squared = ((sae.decode(latents) - x) ** 2).sum(dim=-1)
        error += float(squared.sum())
        total += float(((x - mean.to(x.device)) ** 2).sum())
        typical_error += float(squared[keep].sum())
        typical_total += float(((x[keep] - typical_mean.to(x.device)) ** 2).sum())
        active = latents > 0
        l0 += float(active.sum())
        fires.append(active.cpu())
    firing = torch.cat(fires)
    return {
        "fvu": error / total,
        "fvu_typical": typical_error / typical_total,
        "outlier_positions": int((~typical).sum()),
        "l0": l0 / acts.shape[0],
        "dead_fraction": float((~firing.any(dim=0)).float().mean()),
    }, firing


def anchor_scores(
    firing: torch.Tensor, tokens: torch.Tensor, classes: list[tuple[int, str]], anchored: bool
) -> list[dict[str, Any]]:
    """Per anchor class: precision and recall of its anchored latent (latent ``i`` for class ``i``, when the SAE
    is anchored) and of the SAE's best latent for the class by F1 (any SAE)."""
    fires = firing.float()
    counts = fires.sum(dim=0)
    scores = []
    for index, (token, text) in enumerate(classes):
        positive = (tokens == token).float()
        n_positive = float(positive.sum())
        hits = positive @ fires  # [d_sae]: positions of the class each latent fires on
        f1 = 2 * hits / (counts + n_positive).clamp_min(1)
        best = int(f1.argmax())
        entry: dict[str, Any] = {
            "class": text,
            "positions": int(n_positive),
            "best_latent": best,
            "best_precision": float(hits[best] / counts[best].clamp_min(1)),
            "best_recall": float(hits[best] / max(n_positive, 1.0)),
            "best_f1": float(f1[best]),
        }
        if anchored:
            entry["anchored_precision"] = (
                float(hits[index] / counts[index].clamp_min(1)) if counts[index] else None
            )
            entry["anchored_recall"] = float(hits[index] / max(n_positive, 1.0))
            if not counts[index]:
                entry["anchored_note"] = "the anchored latent never fired on held-out text"
        scores.append(entry)
    return scores


SPLICE_BATCH = 4  # sequences per forward pass of the spliced evaluation


def next_token_logprobs(
    model: Any, tokens: torch.Tensor, hook: str, replace: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """``[batch, seq - 1, vocabulary]`` float32 log-probabilities of each next token, with ``hook``'s
    activation replaced by ``replace(activation)`` at every position but the BOS (clean when None)."""
    if replace is None:
        logits = model(tokens, return_type="logits")
    else:
        keep = (tokens != model.tokenizer.bos_token_id).unsqueeze(-1)

        def swap(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.where(keep, replace(activation), activation)

        logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(hook, swap)])
    return logits[:, :-1].float().log_softmax(dim=-1)


def _ce_sum(logprobs: torch.Tensor, tokens: torch.Tensor) -> float:
    """The summed cross-entropy of ``tokens[:, 1:]`` under ``logprobs``."""
    return float(-logprobs.gather(-1, tokens[:, 1:].unsqueeze(-1).to(logprobs.device)).sum())


@torch.no_grad()
def splice_metrics(
    model: Any, sae: Any, sequences: torch.Tensor, hook: str, clean: dict[str, Any]
) -> dict[str, float]:
    """CE loss with the SAE spliced in at ``hook`` (BOS positions left clean), the fraction of the CE loss
    recovered against zero-ablating the hook, and KL(clean || spliced), per predicted token."""

    def reconstruct(activation: torch.Tensor) -> torch.Tensor:
        return sae(activation.to(sae.device)).to(activation.dtype)

    total_ce = total_kl = 0.0
    for index, tokens in enumerate(sequences.split(SPLICE_BATCH)):
        logprobs = next_token_logprobs(model, tokens, hook, reconstruct).cpu()
        total_ce += _ce_sum(logprobs, tokens)
        clean_logprobs = clean["logprobs"][index]
        total_kl += float((clean_logprobs.exp() * (clean_logprobs - logprobs)).sum())
    n = clean["n_predictions"]
    ce = total_ce / n
    recovered = (clean["ce_ablated"] - ce) / (clean["ce_ablated"] - clean["ce_clean"])
    return {"ce_loss": ce, "ce_loss_recovered": recovered, "kl": total_kl / n}


@torch.no_grad()
def clean_reference(model: Any, sequences: torch.Tensor, hook: str) -> dict[str, Any]:
    """The clean model's log-probabilities and CE, and the CE with ``hook`` zero-ablated (BOS kept)."""
    logprobs, ce_clean, ce_ablated, n = [], 0.0, 0.0, 0
    for tokens in sequences.split(SPLICE_BATCH):
        clean = next_token_logprobs(model, tokens, hook)
        ce_clean += _ce_sum(clean, tokens)
        ce_ablated += _ce_sum(next_token_logprobs(model, tokens, hook, torch.zeros_like), tokens)
        n += tokens[:, 1:].numel()
        logprobs.append(clean.cpu())  # host memory: n x context x vocabulary float32
    return {"logprobs": logprobs, "ce_clean": ce_clean / n, "ce_ablated": ce_ablated / n, "n_predictions": n}


def held_out_sequences(model: Any, texts: list[str], n: int, context_size: int) -> torch.Tensor:
    """``[n, context_size]`` BOS-prefixed windows of the held-out text (the first ``n``)."""
    ids: list[int] = []
    need = n * (context_size - 1)
    for text in texts:
        ids += model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the held-out text has {len(ids)} tokens; the preset splices {need}")
    body = torch.tensor(ids[:need]).reshape(n, context_size - 1)
    bos = torch.full((n, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, body], dim=1).to(next(model.parameters()).device)


AUDIT_SEED = 0  # one judge for every SAE: the audit's word sample, split and probe do not vary with the SAE


def absorption(
    model: Any, sae: Any, label: str, preset: LMPreset, cache: Path, progress: bool
) -> dict[str, Any]:
    """SAEBench's first-letter absorption audit of ``sae`` on this model's tokenizer (headline numbers, and
    how many letters passed the probe gate). Every SAE of every seed is judged by the same audit (its words,
    probe and split drawn with ``AUDIT_SEED``), so a spread over seeds is the SAEs', and the model's
    activations on the audit's words are computed once and read from ``cache`` after that."""
    from sdl_anchor.absorption.audit import audit_absorption

    try:
        report = audit_absorption(
            model, sae, model_label=model.cfg.model_name, sae_label=label, seed=AUDIT_SEED,
            max_words=preset.audit_words, cache_dir=cache, progress=progress,
        )  # fmt: skip
    except ValueError as err:  # e.g. no letter passes the probe gate: not measurable, say why
        return {"absorption_fraction": None, "absorption_reason": str(err)}
    letters = report["per_letter"]
    scored = [letter for letter, entry in letters.items() if "skipped" not in entry]
    return {
        "absorption_fraction": report["mean_absorption_fraction_score"],
        "full_absorption": report["mean_full_absorption_score"],
        "split_features": report["mean_num_split_features"],
        "letters_scored": len(scored),
        "letters_skipped": len(letters) - len(scored),
    }


# ---------------------------------------------------------------- the bench


def _row_key(row: dict[str, Any]) -> tuple[int, str, str]:
    return (row["seed"], row["method"], row["variant"])


def load_corpus(corpus_dir: Path | None) -> Corpus:
    return python_docs_corpus() if corpus_dir is None else folder_corpus(corpus_dir)


def run_lm_bench(
    preset: LMPreset | str = "cpu",
    *,
    out: Path,
    model_path: Path | None = None,
    corpus_dir: Path | None = None,
    device: str | None = None,
    methods: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    progress: bool = True,
    previous: dict[str, Any] | None = None,
    on_row: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Cache, train and score every (seed, method, variant) of the selection; returns results with ``rows``,
    ``config``, ``model``, ``corpus``, ``reference`` and ``anchors``. SAEs are saved under ``out/saes/``."""
    started = time.perf_counter()
    preset = resolve_preset(preset)
    device = device or preset.device
    if not progress:
        import datasets

        datasets.disable_progress_bars()
    methods = tuple(methods or preset.variants)
    seeds = tuple(seeds or preset.seeds)
    check_choices(methods, METHODS, "method")
    check_choices(seeds, seeds, "seed")
    for method in methods:
        if method not in preset.variants:
            raise ValueError(
                f"preset {preset.name!r} has no {method} rows; it has {', '.join(preset.variants)}"
            )
    plan = {m: tuple(v for v in preset.variants[m] if variants is None or v in variants) for m in methods}
    if variants is not None:
        check_choices(tuple(variants), tuple(VARIANTS), "variant")
    if not any(plan.values()):
        raise ValueError("the selection trains nothing: no chosen variant is in the chosen methods' rows")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: no CUDA device here; use --device cpu (the cpu or smoke preset)"
        )
    config = {
        "preset": preset.name,
        "description": preset.description,
        **{
            k: v
            for k, v in dataclasses.asdict(preset).items()
            if k not in ("name", "description", "seeds", "variants", "device")
        },
        "seeds": list(seeds),
        "dev_seed": 0,
        "audit_seed": AUDIT_SEED,
        "plan": {m: list(v) for m, v in plan.items()},
        "n_steps": preset.n_steps,
        "model_path": None if model_path is None else str(model_path),
        "corpus": "python-docs" if corpus_dir is None else str(corpus_dir),
    }
    rows: list[dict[str, Any]] = []
    if previous is not None:
        check_resumable(
            previous, config, what="bench lm", row_keys=("seed", "method", "variant"),
            per_run=("description", "seeds", "plan"),
        )  # fmt: skip
        rows = list(previous["rows"])
    done = {_row_key(row) for row in rows}
    corpus = load_corpus(corpus_dir)
    model, model_info = load_subject_model(model_path, device, progress)
    model.cfg.model_name = model_info["name"]  # what the audit's report and cache key name
    if not 0 <= preset.layer < model.cfg.n_layers:
        raise ValueError(f"layer {preset.layer} is not in the model's 0..{model.cfg.n_layers - 1}")
    hook = f"blocks.{preset.layer}.hook_resid_post"
    available = count_tokens(model.tokenizer, corpus.train, preset.train_tokens)
    if available < preset.train_tokens:
        raise ValueError(
            f"the corpus's training part holds {available:,} tokens; preset {preset.name!r} trains on "
            f"{preset.train_tokens:,}: pass --corpus DIR with more text, or a smaller preset"
        )
    from sdl_anchor.absorption.concepts import model_fingerprint

    cache = out / "activations"
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model_key = model_fingerprint(model)
    train_acts, train_tokens = cache_activations(
        model,
        model_key,
        corpus.train,
        hook,
        preset.train_tokens + preset.train_tokens // 8,
        preset,
        cache / "train",
        progress,
    )
    eval_acts, eval_tokens = cache_activations(
        model, model_key, corpus.held_out, hook, preset.eval_tokens, preset, cache / "held_out", progress
    )
    eval_acts = eval_acts.to(device)
    timings["caching_seconds"] = round(time.perf_counter() - clock, 1)
    classes = anchor_classes(train_tokens, model.tokenizer, preset.n_anchors)
    anchors = build_anchors(train_acts, train_tokens, classes)
    anchor_path = out / "anchors.safetensors"
    anchors.save(anchor_path)
    sequences = held_out_sequences(model, corpus.held_out, preset.ce_sequences, preset.context_size)
    clean = clean_reference(model, sequences, hook)
    results: dict[str, Any] = {
        "config": config,
        "model": model_info,
        "corpus": corpus.describe(),
        "hook": hook,
        "anchors": [{"token_id": token, "text": text} for token, text in classes],
        "reference": {
            "ce_clean": clean["ce_clean"],
            "ce_ablated": clean["ce_ablated"],
            "n_predictions": clean["n_predictions"],
            "train_activations": int(train_acts.shape[0]),
            "held_out_activations": int(eval_acts.shape[0]),
        },
        "timings": timings,
        "rows": rows,
    }
    from sae_lens import SAE

    for seed in seeds:
        for method in methods:
            for variant in plan[method]:
                if (seed, method, variant) in done:
                    continue
                torch.manual_seed(seed)
                sae = build_sae(preset, method, variant, anchor_path, model.cfg.d_model, device)
                facts, curve = train_sae(sae, train_acts, preset, variant, seed, device, progress)
                sae.cfg.metadata.hook_name = hook
                sae.cfg.metadata.model_name = model_info["name"]
                folder = out / "saes" / f"seed{seed}-{method}-{variant}"
                shutil.rmtree(folder, ignore_errors=True)
                sae.save_inference_model(str(folder))
                saved = SAE.load_from_disk(str(folder), device=device)
                score_started = time.perf_counter()
                metrics, firing = reconstruction_metrics(saved, eval_acts)
                metrics |= splice_metrics(model, saved, sequences, hook, clean)
                metrics |= absorption(model, saved, str(folder), preset, out / "audit-cache", progress)
                anchored = VARIANTS[variant][0]
                row = {
                    "seed": seed, "method": method, "variant": variant, **metrics, **facts,
                    "score_seconds": round(time.perf_counter() - score_started, 1),
                    "anchor_scores": anchor_scores(firing, eval_tokens, classes, anchored),
                    "curve": curve, "sae_path": str(folder),
                }  # fmt: skip
                rows.append(row)
                results["timings"]["wall_seconds"] = round(time.perf_counter() - started, 1)
                if on_row is not None:
                    on_row(results)
    results["timings"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    return results


# ---------------------------------------------------------------- reporting

TABLE_COLUMNS = (
    ("fvu", "FVU", "{:.3f}"),
    ("fvu_typical", "FVU typ", "{:.3f}"),
    ("ce_loss_recovered", "CE rec", "{:.3f}"),
    ("kl", "KL", "{:.3f}"),
    ("l0", "L0", "{:.1f}"),
    ("dead_fraction", "dead %", "{:.1%}"),
    ("absorption_fraction", "absorb", "{:.3f}"),
    ("anchored_precision", "anc P", "{:.2f}"),
    ("anchored_recall", "anc R", "{:.2f}"),
    ("best_f1", "best F1", "{:.2f}"),
)


def _anchor_means(row: dict[str, Any]) -> dict[str, float | None]:
    """Means over anchor classes of the anchored latent's precision / recall and the best latent's F1."""
    scores = row["anchor_scores"]
    means: dict[str, float | None] = {"best_f1": sum(s["best_f1"] for s in scores) / len(scores)}
    for key in ("anchored_precision", "anchored_recall"):
        values = [s.get(key) for s in scores]
        means[key] = None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[misc]
    return means


def cell(rows: list[dict[str, Any]], key: str) -> tuple[float, float, int] | None:
    """``(mean, std, n)`` of ``key`` over ``rows`` (seeds), or None where no row measured it."""
    values = [(_anchor_means(r) | r).get(key) for r in rows]
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std, len(values)


def _groups(results: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results["rows"]:
        groups.setdefault((row["method"], row["variant"]), []).append(row)
    return groups


def format_table(results: dict[str, Any]) -> str:
    """Mean ± std over seeds of every metric, per method and variant."""
    seeds = sorted({row["seed"] for row in results["rows"]})
    reference = results["reference"]
    lines = [
        f"{results['model']['name']} {results['hook']}, {results['config']['train_tokens']:,} training tokens, "
        f"width {results['config']['d_sae']}, k {results['config']['k']}; held-out text; mean ± std over seeds "
        f"{seeds} (seed 0 development, settings fixed beforehand, none tuned here)",
        f"clean CE {reference['ce_clean']:.3f}, zero-ablated CE {reference['ce_ablated']:.3f} "
        f"({reference['n_predictions']:,} predictions); anchors: {len(results['anchors'])} word tokens' class means",
        "",
        f"{'method':<10} {'variant':<16}" + "".join(f" {label:>15}" for _, label, _ in TABLE_COLUMNS),
    ]
    for (method, variant), rows in _groups(results).items():
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            value = cell(rows, key)
            if value is None:
                cells.append(f" {'-':>15}")
            else:
                mean, std, _ = value
                text = fmt.format(mean) + ("±" + fmt.format(std).lstrip("0") if len(rows) > 1 else "")
                cells.append(f" {text:>15}")
        lines.append(f"{method:<10} {variant:<16}" + "".join(cells))
    outliers = results["rows"][0].get("outlier_positions") if results["rows"] else None
    lines += [
        "",
        f"FVU typ: FVU without the {outliers} held-out positions whose norm exceeds {OUTLIER_NORM:g}x the median "
        "(massive activations; pooled FVU is dominated by them)",
        "absorb: SAEBench first-letter mean absorption fraction ('-': not measurable, see results.json);",
    ]
    lines.append(
        "anc P / anc R: the anchored latent's precision / recall on its token class; best F1: the best latent's"
    )
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[str]:
    """The issue's goals, per method and seed: theory resampling's dead fraction at most half of stock's with a
    lower FVU; anchored latents with precision and recall of at least 0.8."""
    by_key = {(r["seed"], r["method"], r["variant"]): r for r in results["rows"]}
    lines = []
    for (seed, method, variant), row in sorted(by_key.items()):
        stock = by_key.get((seed, method, "stock"))
        if variant in ("theory", "anchored+theory") and stock is not None:
            ratio = row["dead_fraction"] / stock["dead_fraction"] if stock["dead_fraction"] else None
            lower = row["fvu"] < stock["fvu"] and row.get("fvu_typical", 0) < stock.get("fvu_typical", 0)
            met = ratio is not None and ratio <= 0.5 and lower
            lines.append(
                f"seed {seed} {method} {variant}: dead {row['dead_fraction']:.1%} vs stock {stock['dead_fraction']:.1%} "
                f"(ratio {'n/a' if ratio is None else f'{ratio:.2f}'}), FVU {row['fvu']:.3f} vs {stock['fvu']:.3f}, "
                f"typical {row.get('fvu_typical', float('nan')):.3f} vs {stock.get('fvu_typical', float('nan')):.3f}: "
                f"{'met' if met else 'missed'}"
            )
        if VARIANTS[variant][0]:
            scores = row["anchor_scores"]
            good = sum(
                1 for s in scores
                if (s.get("anchored_precision") or 0) >= 0.8 and (s.get("anchored_recall") or 0) >= 0.8
            )  # fmt: skip
            lines.append(
                f"seed {seed} {method} {variant}: {good} of {len(scores)} anchored latents at P, R >= 0.8"
            )
    return lines


SMOOTHING = 9  # points of a curve's running median: a batch holding a massive activation spikes its MSE


def running_median(values: list[float], width: int = SMOOTHING) -> list[float]:
    half = width // 2
    return [float(torch.tensor(values[max(0, i - half) : i + half + 1]).median()) for i in range(len(values))]


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """The paper's Figure 7 on this model: training MSE against tokens, no / Anthropic / theory resampling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdl_anchor.io import atomic_write

    methods = sorted({row["method"] for row in results["rows"]})
    figure, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 4), squeeze=False)
    colours = {"stock": "tab:gray", "anthropic": "tab:orange", "theory": "tab:blue"}
    for axis, method in zip(axes[0], methods, strict=True):
        for row in results["rows"]:
            if row["method"] != method or row["variant"] not in CURVE_VARIANTS:
                continue
            label = {"stock": "no resampling", "anthropic": "Anthropic", "theory": "theory"}[row["variant"]]
            axis.plot(row["curve"]["tokens"], running_median(row["curve"]["mse"]), color=colours[row["variant"]],
                      label=f"{label}, seed {row['seed']}", alpha=0.9 if row["seed"] == 0 else 0.5)  # fmt: skip
        axis.set_yscale("log")
        axis.set_xlabel("training tokens")
        axis.set_ylabel(f"training MSE, running median of {SMOOTHING} points")
        axis.set_title(f"{results['model']['name']} {results['hook']}: {method}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    from sdl_anchor.io import atomic_write, write_json

    results = {**results, "goals": goals(results)}
    paths = [write_json(out / "results.json", results)]
    text = format_table(results) + "\n\n" + "\n".join(results["goals"]) + "\n"
    paths.append(atomic_write(out / "table.txt", lambda tmp: tmp.write_text(text)))
    paths.append(plot_curves(results, out / "loss_curves.png"))
    return paths
