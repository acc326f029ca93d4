"""A tiny TransformerLens language model with a word-level tokenizer, built offline.

For tests, examples and air-gapped machines: ``toy_language_model(corpus)`` returns a small
``HookedTransformer`` whose tokenizer knows exactly the words of ``corpus`` (plus BOS / EOS / PAD / UNK),
randomly initialised or, with ``train_steps``, trained on the corpus so that its layers matter (splicing
a coder in then changes its loss measurably), so SAELens's ``ActivationsStore`` and ``LanguageModelSAETrainingRunner`` run end to end with
no hub access. With a real model online, use ``HookedTransformer.from_pretrained(name)`` instead.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the heavy libraries load when a helper runs, not on import
    from datasets import Dataset
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def word_level_tokenizer(corpus: Sequence[str], split_punctuation: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is the special tokens plus every word in ``corpus``
    (lower-cased; with ``split_punctuation``, punctuation marks are tokens of their own, as in BPE
    vocabularies: "letter:" is "letter", ":").

    It is saved to a temporary folder and loaded back with ``AutoTokenizer``, as TransformerLens
    re-loads tokenizers by their ``name_or_path`` (a local folder works offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    splitter = (
        pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        if split_punctuation
        else pre_tokenizers.WhitespaceSplit()
    )
    words = sorted({word for text in corpus for word, _ in splitter.pre_tokenize_str(text.lower())})
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = splitter
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    folder = tempfile.mkdtemp(prefix="sdl_anchor_toy_tokenizer_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # needed until the process ends, not after
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def toy_language_model(
    corpus: Sequence[str],
    d_model: int = 32,
    n_layers: int = 2,
    n_ctx: int = 32,
    seed: int = 0,
    device: str = "cpu",
    train_steps: int = 0,
    split_punctuation: bool = False,
) -> HookedTransformer:
    """A ``HookedTransformer`` with the usual hook names and a word-level tokenizer of ``corpus``, trained
    for ``train_steps`` Adam steps of next-token prediction on the corpus (0: left at random init)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = word_level_tokenizer(corpus, split_punctuation)
    config = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=max(4, d_model // 4),
        n_heads=4,
        d_mlp=4 * d_model,
        d_vocab=len(tokenizer),
        n_ctx=n_ctx,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        device=device,
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
    )
    model = HookedTransformer(config, tokenizer=tokenizer)
    if train_steps > 0:
        _fit_to_corpus(model, corpus, train_steps, seed)
    model.eval()
    return model


def _fit_to_corpus(model: HookedTransformer, corpus: Sequence[str], steps: int, seed: int) -> None:
    windows = torch.tensor(
        tokenized_dataset(model, corpus, model.cfg.n_ctx)["tokens"], device=model.cfg.device
    )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(windows), (min(32, len(windows)),), generator=generator)
        loss = model(windows[rows.to(windows.device)], return_type="loss")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def tokenized_dataset(model: HookedTransformer, corpus: Sequence[str], context_size: int) -> Dataset:
    """A ``tokens`` dataset for SAELens: the corpus tokenized, concatenated and cut into windows."""
    from datasets import Dataset

    ids: list[int] = []
    for text in corpus:
        ids.extend(model.to_tokens(text, prepend_bos=False)[0].tolist())
        ids.append(model.tokenizer.eos_token_id)
    n_windows = len(ids) // context_size
    if n_windows == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one context of {context_size}")
    windows = torch.tensor(ids[: n_windows * context_size]).view(n_windows, context_size)
    return Dataset.from_dict({"tokens": windows.tolist()})
