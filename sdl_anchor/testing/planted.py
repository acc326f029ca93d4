"""A tiny language model where each word's first letter is a known direction, and SAEs of known absorption.

For tests, examples and the SAEBench comparison, offline. The model's embedding of a word is
``3 x (its letter's direction) + (its own direction)``, all directions orthonormal; position embeddings are
zero and, with ``pass_through=True``, attention and MLP outputs too, so every ``hook_resid_pre`` and
``hook_resid_post`` reads exactly that. A ``d_model`` below one dimension per letter and word gives word
directions that are random unit vectors orthogonal to the letters but only nearly orthogonal to each other
(|cos| ~ 1/sqrt(d_model)): letter readings stay exact, so a clean SAE still has true absorption 0, while
absorbed words are silenced only approximately. ``planted_letter_sae`` builds the SAE with one latent
per letter, and makes chosen words *absorbed*: each gets its own latent, which writes the letter's direction,
and silences the letter's latent on that word. The true absorption of a letter is then the fraction of its
words that are absorbed.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sdl_anchor.testing.toy_lm import toy_language_model

if TYPE_CHECKING:  # SAELens loads when an SAE is built, not on import
    from sae_lens import StandardSAE


@dataclass
class PlantedLetters:
    model: Any  # HookedTransformer
    words: list[str]
    letter_directions: dict[str, torch.Tensor]
    word_directions: dict[str, torch.Tensor]


def made_up_words(letters: str, per_letter: int, seed: int = 0) -> list[str]:
    """``per_letter`` distinct six-letter words starting with each of ``letters``."""
    generator = torch.Generator().manual_seed(seed)
    words: list[str] = []
    for letter in letters:
        mine: set[str] = set()
        while len(mine) < per_letter:
            tail = "".join(
                string.ascii_lowercase[int(i)] for i in torch.randint(26, (5,), generator=generator)
            )
            mine.add(letter + tail)
        words.extend(sorted(mine))
    return words


@torch.no_grad()
def planted_letter_model(
    letters: str = "abcdef",
    words_per_letter: int = 40,
    d_model: int | None = None,
    pass_through: bool = False,
    seed: int = 0,
    n_layers: int = 1,
) -> PlantedLetters:
    """The model of the module docstring, with a word-level tokenizer (punctuation split off)."""
    words = made_up_words(letters, words_per_letter, seed)
    needed = len(letters) + len(words)
    d_model = d_model or 4 * -(-needed // 4)
    if d_model <= len(letters):
        raise ValueError(f"d_model must exceed the number of letters ({len(letters)})")
    corpus = [" ".join(words) + " has the first letter:"]
    model = toy_language_model(
        corpus, d_model=d_model, n_layers=n_layers, n_ctx=80, seed=seed, split_punctuation=True
    )
    generator = torch.Generator().manual_seed(seed + 1)
    basis = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator))[0].T
    letter_directions = {letter: basis[i] for i, letter in enumerate(letters)}
    if d_model >= needed:
        word_basis = basis[len(letters) : needed]
    else:  # random directions in the letters' orthogonal complement
        complement = basis[len(letters) :]
        word_basis = F.normalize(
            torch.randn(len(words), len(complement), generator=generator) @ complement, dim=1
        )
    word_directions = {word: word_basis[i] for i, word in enumerate(words)}
    model.W_pos.zero_()
    for word in words:
        model.W_E[model.tokenizer.convert_tokens_to_ids(word)] = (
            3 * letter_directions[word[0]] + word_directions[word]
        )
    if pass_through:
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.attn.b_O.zero_()
            block.mlp.W_out.zero_()
            block.mlp.b_out.zero_()
    return PlantedLetters(model, words, letter_directions, word_directions)


@torch.no_grad()
def planted_letter_sae(
    planted: PlantedLetters,
    absorbed: list[str] | tuple[str, ...] = (),
    hook_name: str = "blocks.0.hook_resid_pre",
    word_latents: bool = False,
) -> StandardSAE:
    """One latent per letter (latent i for the i-th letter), plus one per absorbed word (module docstring).

    ``word_latents=True`` also gives every other word a latent of its own (encoder ``3 w``, bias -1.5,
    decoder ``w``), the token-identity latents a real SAE has; they read nothing of any letter, so the
    true absorption is unchanged.
    """
    letters = list(planted.letter_directions)
    d_model = planted.model.cfg.d_model
    plain = [w for w in planted.word_directions if w not in set(absorbed)] if word_latents else []
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = StandardSAEConfig(
        d_in=d_model,
        d_sae=len(letters) + len(absorbed) + len(plain),
        metadata=SAEMetadata(hook_name=hook_name),
    )
    sae = StandardSAE(cfg)
    sae.b_dec.zero_()
    sae.b_enc.fill_(-1.5)
    for i, letter in enumerate(letters):
        sae.W_enc[:, i] = planted.letter_directions[letter]
        sae.W_dec[i] = planted.letter_directions[letter]
    for j, word in enumerate(absorbed):
        latent = len(letters) + j
        sae.W_enc[:, letters.index(word[0])] -= 10 * planted.word_directions[word]
        sae.W_enc[:, latent] = 4 * planted.word_directions[word]
        sae.b_enc[latent] = -1.0
        sae.W_dec[latent] = F.normalize(
            3 * planted.letter_directions[word[0]] + planted.word_directions[word], dim=0
        )
    for j, word in enumerate(plain):
        latent = len(letters) + len(absorbed) + j
        sae.W_enc[:, latent] = 3 * planted.word_directions[word]
        sae.b_enc[latent] = -1.5
        sae.W_dec[latent] = planted.word_directions[word]
    return sae
