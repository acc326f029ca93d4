"""Concept sets for the real-model absorption metric: words, their parent concept, prompts and activations.

A :class:`ConceptSet` is a list of single-token words, each with a *parent* label (the concept whose
absorption is measured, e.g. "starts with S") and a *child* label (the finer concept that may absorb it;
for the first-letter task, the word itself). ``first_letter_concepts`` builds SAEBench's first-letter task
from any tokenizer; any other hierarchy comes in through ``ConceptSet.from_hierarchy``.

Each word is shown in one in-context prompt, SAEBench's format by default::

    "\\n{w1} has the first letter: W1\\n ... \\n{w10} has the first letter: W10\\n{word} has the first letter:"

and the activation is read at the word's own token, located by tokenizing (not a fixed offset), at the
SAE's own hook. The same prompt serves the probe and the absorption measurement. Activations are cached
on disk, outside the installed package, under a key made of the model's name, a fingerprint of its weights
(two checkpoints under one name never share activations), the hook, the seed, the prompts and the words.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sdl_anchor.io import atomic_write

FIRST_LETTER_TEMPLATE = "{word} has the first letter:"


@dataclass
class ConceptSet:
    """Words with parent and child labels, and how to prompt for them."""

    words: list[str]
    parents: list[str]
    children: list[str]
    template: str = "{word}"
    answers: dict[str, str] = field(default_factory=dict)  # parent -> the answer shown after ICL examples
    n_icl: int = 0
    task: str = "concepts"

    def __post_init__(self) -> None:
        if not (len(self.words) == len(self.parents) == len(self.children)):
            raise ValueError("words, parents and children must have one entry per word")
        if "{word}" not in self.template:
            raise ValueError(f"the prompt template must contain {{word}}, got {self.template!r}")
        if len(set(self.words)) != len(self.words):
            raise ValueError("each word may appear only once")

    @classmethod
    def from_hierarchy(
        cls, hierarchy: Mapping[str, Mapping[str, Sequence[str]]], template: str = "{word}"
    ) -> ConceptSet:
        """``{parent: {child: [words...]}}``, e.g. ``{"animal": {"dog": ["poodle", "beagle"], ...}, ...}``."""
        if not isinstance(hierarchy, Mapping) or not hierarchy:
            raise ValueError("the hierarchy must be a non-empty dict {parent: {child: [word, ...]}}")
        words, parents, children = [], [], []
        for parent, kids in hierarchy.items():
            if not isinstance(kids, Mapping):
                raise ValueError(f"hierarchy[{parent!r}] must be a dict {{child: [word, ...]}}")
            for child, members in kids.items():
                if isinstance(members, str):
                    raise ValueError(f"hierarchy[{parent!r}][{child!r}] must be a list of words")
                for word in members:
                    words.append(str(word))
                    parents.append(str(parent))
                    children.append(str(child))
        return cls(words, parents, children, template=template, task="concepts")

    @property
    def parent_labels(self) -> list[str]:
        return sorted(set(self.parents))

    def prompts(self, seed: int) -> list[tuple[str, str]]:
        """``(head, full prompt)`` per word: ``head`` ends with the word, so its last token is the word's."""
        rng = random.Random(seed)
        before, after = self.template.split("{word}", 1)
        result = []
        for i, word in enumerate(self.words):
            lines = []
            if self.n_icl:
                pool = [j for j in range(len(self.words)) if j != i]
                for j in rng.sample(pool, min(self.n_icl, len(pool))):
                    example = self.template.format(word=self.words[j])
                    lines.append(f"{example} {self.answers.get(self.parents[j], self.parents[j])}")
            prefix = "\n" + "".join(line + "\n" for line in lines)
            head = prefix + before + word
            result.append((head, head + after))
        return result

    def key(self) -> str:
        payload = json.dumps(
            [self.words, self.parents, self.children, self.template, self.answers, self.n_icl]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _single_token_words(tokenizer: Any) -> list[str]:
    """Alphabetic vocabulary entries, each as the token spells it: a byte-level BPE word token keeps its
    leading space (``" tartan"``), as SAEBench's ``get_alpha_tokens`` keeps it, so that the word stays one token
    in its prompt line (``"\n tartan has the first letter:"``); without it, a model whose vocabulary holds
    mostly space-prefixed words (SmolLM2, GPT-2) would see most words split in two and dropped."""
    words = set()
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        bare = text[1:] if text.startswith(" ") else text
        if bare and all(c in string.ascii_letters for c in bare):
            words.add(text)
    return sorted(words)


def first_letter_concepts(tokenizer: Any, max_words: int | None = None, seed: int = 0) -> ConceptSet:
    """SAEBench's first-letter task over ``tokenizer``'s alphabetic single-token words (parent: the first
    letter, child: the word; 10 in-context examples answering the capital letter)."""
    words = _single_token_words(tokenizer)
    if max_words is not None and len(words) > max_words:
        words = sorted(random.Random(seed).sample(words, max_words))
    letters = [w.lstrip()[0].lower() for w in words]
    return ConceptSet(
        words,
        letters,
        list(words),
        template=FIRST_LETTER_TEMPLATE,
        answers={letter: letter.upper() for letter in string.ascii_lowercase},
        n_icl=10,
        task="first_letter",
    )


def _to_tokens(model: Any, texts: list[str]) -> list[list[int]]:
    tokenizer = model.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def model_name(model: Any) -> str:
    """A name for cache keys: the model's configured name, or its tokenizer's path."""
    cfg = getattr(model, "cfg", None)
    for attribute in ("model_name", "name_or_path"):
        value = getattr(cfg, attribute, None)
        if value:
            return str(value)
    return str(getattr(model.tokenizer, "name_or_path", type(model).__name__))


@dataclass
class WordActivations:
    """The hook's activation at each kept word, and which words were kept (single-token in context)."""

    x: torch.Tensor  # [N_kept, d]
    kept: list[int]  # indices into the ConceptSet's words
    dropped: list[str]  # words that were not one token in their prompt


@torch.no_grad()
def model_fingerprint(model: Any) -> str:
    """A hash of the model's weights (every parameter's name, shape, dtype, sum and 16 values spread over
    it): two checkpoints under one name get different cache keys, at the cost of one pass over the weights."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        flat = parameter.detach().reshape(-1)
        steps = min(16, flat.numel())
        # integer positions: a float32 linspace rounds n - 1 up to n past 2**24 elements (GPT-2's embedding)
        picks = torch.arange(steps, device=flat.device) * (flat.numel() - 1) // max(steps - 1, 1)
        summary = torch.cat([flat.sum(dtype=torch.float64).reshape(1), flat[picks].double()]).cpu()
        digest.update(f"{name}|{tuple(flat.shape)}|{parameter.dtype}|{tuple(parameter.shape)}|".encode())
        digest.update(summary.numpy().tobytes())
    return digest.hexdigest()


def _stop_after(model: Any, hook_name: str) -> dict[str, int]:
    """``stop_at_layer`` for a HookedTransformer or TransformerBridge reading a block's hook: later blocks
    are not run (on SmolLM2 at layer 2, 0.1 s instead of 7 s a batch)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    parts = hook_name.split(".")
    if (
        isinstance(model, (HookedTransformer, TransformerBridge))
        and parts[0] == "blocks"
        and parts[1].isdigit()
    ):
        return {"stop_at_layer": int(parts[1]) + 1}
    return {}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SDL_ANCHOR_CACHE", Path.home() / ".cache" / "sdl_anchor")) / "absorption"


@torch.no_grad()
def word_activations(
    model: Any,
    concepts: ConceptSet,
    hook_name: str,
    *,
    seed: int = 0,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> WordActivations:
    """Run every word's prompt through ``model`` and keep ``hook_name`` at the word's token (cached)."""
    cache_file = None
    if cache_dir is not None:
        identity = f"{model_name(model)}|{model_fingerprint(model)}|{hook_name}|{seed}|{concepts.key()}"
        key = hashlib.sha256(identity.encode()).hexdigest()
        cache_file = Path(cache_dir) / f"{key[:24]}.safetensors"
        if cache_file.exists() and cache_file.with_suffix(".json").exists():
            stored = load_file(str(cache_file))
            meta = json.loads(cache_file.with_suffix(".json").read_text())
            return WordActivations(stored["x"], meta["kept"], meta["dropped"])
    prompts = concepts.prompts(seed)
    heads = _to_tokens(model, [head for head, _ in prompts])
    fulls = _to_tokens(model, [full for _, full in prompts])
    prefixes = _to_tokens(
        model,
        [head[: len(head) - len(word)] for (head, _), word in zip(prompts, concepts.words, strict=True)],
    )
    kept, dropped, positions = [], [], []
    for i, (head, full, prefix) in enumerate(zip(heads, fulls, prefixes, strict=True)):
        # one token for the word, and the full prompt tokenizes the head the same way
        if len(head) == len(prefix) + 1 and full[: len(head)] == head:
            kept.append(i)
            positions.append(len(head) - 1)
        else:
            dropped.append(concepts.words[i])
    by_length: dict[int, list[int]] = {}
    for row, i in enumerate(kept):
        by_length.setdefault(len(fulls[i]), []).append(row)
    device = next(model.parameters()).device
    x: list[torch.Tensor | None] = [None] * len(kept)
    batches = [
        (rows[s : s + batch_size]) for rows in by_length.values() for s in range(0, len(rows), batch_size)
    ]
    for rows in tqdm(batches, desc="word activations", disable=not progress):
        tokens = torch.tensor([fulls[kept[r]] for r in rows], device=device)
        _, cache = model.run_with_cache(tokens, names_filter=[hook_name], **_stop_after(model, hook_name))
        acts = cache[hook_name]
        for j, r in enumerate(rows):
            x[r] = acts[j, positions[r]].float().cpu()
    if not kept:
        raise ValueError(
            "no word is a single token in its prompt; the tokenizer splits every word of the concept set"
        )
    result = WordActivations(torch.stack(x), kept, dropped)  # type: ignore[arg-type]
    if cache_file is not None:
        meta = json.dumps({"kept": kept, "dropped": dropped, "model": model_name(model), "hook": hook_name})
        atomic_write(cache_file.with_suffix(".json"), lambda tmp: Path(tmp).write_text(meta))
        atomic_write(
            cache_file, lambda tmp: save_file({"x": result.x.contiguous()}, str(tmp))
        )  # last: complete
    return result
