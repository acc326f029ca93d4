"""An offline Hugging Face hub cache holding a tiny ``gpt2`` and a SAE of a real SAELens release.

With ``HF_HOME`` pointing at the cache's root and ``HF_HUB_OFFLINE=1`` (set in the environment *before* the
process imports huggingface_hub), the loaders users type run unchanged and without a network:

* ``HookedTransformer.from_pretrained("gpt2")`` and ``AutoTokenizer.from_pretrained("gpt2")`` read
  ``hub/models--gpt2`` (TransformerLens asks for the repo id ``gpt2``; the real ``config.json`` fields,
  ``n_ctx`` included, which TransformerLens reads);
* ``SAE.from_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")`` reads
  ``hub/models--jbloom--GPT2-Small-SAEs-Reformatted``, the repository SAELens's ``pretrained_saes.yaml``
  names for that release, in SAELens's own on-disk format.

The model is GPT-2-shaped (HF ``GPT2LMHeadModel`` weights) with a word-level tokenizer of made-up words.
With ``planted=True`` (the default) its attention and MLP outputs and position embeddings are zero and each
word's embedding is ``3 x (its first letter's direction) + (its own direction)`` (:mod:`.planted`), so every
``hook_resid_pre`` / ``hook_resid_post`` reads exactly that, and the SAE has one latent per letter, with the
``absorbed`` words absorbed: the first-letter audit has a known answer. ``planted=False`` gives random weights
under the same name (a second checkpoint that must not share the first's cached activations).

Layout (``huggingface_hub``'s cache): ``hub/models--ORG--NAME/refs/main`` holds the snapshot's name (no
newline), ``snapshots/REV/...`` the files.
"""

from __future__ import annotations

import hashlib
import json
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdl_anchor.testing.planted import made_up_words

MODEL_REPO_ID = "gpt2"  # what TransformerLens's from_pretrained("gpt2") asks the hub for
SAE_RELEASE = "gpt2-small-res-jb"  # a release in SAELens's pretrained_saes.yaml ...
SAE_REPO_ID = "jbloom/GPT2-Small-SAEs-Reformatted"  # ... and the repository it names
PROMPT_WORDS = ["has", "the", "first", "letter", ":", *string.ascii_uppercase]


@dataclass
class OfflineHub:
    """What :func:`offline_hub` wrote, and the ground truth planted in it."""

    root: Path
    model_name: str
    sae_release: str
    sae_ids: list[str]
    words: list[str]
    letter_directions: dict[str, torch.Tensor] = field(repr=False)
    absorbed: list[str]
    planted: bool
    d_model: int

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to load from this cache offline."""
        return {"HF_HOME": str(self.root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def true_absorption(self, letter: str) -> float:
        """The fraction of ``letter``'s words that the planted SAE absorbs (0 without ``planted``)."""
        mine = [w for w in self.words if w[0] == letter]
        return sum(w in self.absorbed for w in mine) / len(mine) if self.planted else 0.0


def write_snapshot(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` (path in the repository -> bytes) as the cached ``main`` snapshot of ``repo_id``."""
    revision = hashlib.sha1(b"".join(files[name] for name in sorted(files))).hexdigest()
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    for name, data in files.items():
        path = snapshot / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)  # huggingface_hub reads it without stripping
    return snapshot


def _tokenizer_files(words: list[str]) -> dict[str, bytes]:
    from sdl_anchor.testing.toy_lm import word_level_tokenizer

    tokenizer = word_level_tokenizer([" ".join(words + PROMPT_WORDS)], split_punctuation=True)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}
    # the class every transformers release knows (transformers 5 writes "TokenizersBackend", which the
    # 4.x series that circuit-tracer pins cannot load)
    config = json.loads(files["tokenizer_config.json"])
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
    return files


def _gpt2_config(d_model: int, n_layers: int, n_ctx: int, vocab_size: int, bos: int) -> dict[str, Any]:
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "bos_token_id": bos,
        "eos_token_id": bos,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_ctx,
        "n_embd": d_model,
        "n_head": 4,
        "n_inner": None,
        "n_layer": n_layers,
        "n_positions": n_ctx,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "vocab_size": vocab_size,
    }


def _gpt2_weights(
    d_model: int,
    n_layers: int,
    n_ctx: int,
    embeddings: torch.Tensor,
    planted: bool,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """HF GPT-2 weights (``Conv1D`` ``[in, out]`` layout); with ``planted``, blocks write nothing."""

    def normal(*shape: int) -> torch.Tensor:
        return 0.02 * torch.randn(*shape, generator=generator)

    mute = 0.0 if planted else 1.0
    weights = {"wte.weight": embeddings, "wpe.weight": mute * normal(n_ctx, d_model)}
    for layer in range(n_layers):
        prefix = f"h.{layer}."
        weights |= {
            prefix + "ln_1.weight": torch.ones(d_model),
            prefix + "ln_1.bias": torch.zeros(d_model),
            prefix + "attn.c_attn.weight": normal(d_model, 3 * d_model),
            prefix + "attn.c_attn.bias": torch.zeros(3 * d_model),
            prefix + "attn.c_proj.weight": mute * normal(d_model, d_model),
            prefix + "attn.c_proj.bias": torch.zeros(d_model),
            prefix + "ln_2.weight": torch.ones(d_model),
            prefix + "ln_2.bias": torch.zeros(d_model),
            prefix + "mlp.c_fc.weight": normal(d_model, 4 * d_model),
            prefix + "mlp.c_fc.bias": torch.zeros(4 * d_model),
            prefix + "mlp.c_proj.weight": mute * normal(4 * d_model, d_model),
            prefix + "mlp.c_proj.bias": torch.zeros(d_model),
        }
    return weights | {"ln_f.weight": torch.ones(d_model), "ln_f.bias": torch.zeros(d_model)}


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({name: t.contiguous() for name, t in tensors.items()}, metadata={"format": "pt"})


def _centred_basis(d_model: int, generator: torch.Generator) -> torch.Tensor:
    """``d_model - 1`` orthonormal rows orthogonal to the all-ones vector, so TransformerLens's
    ``center_writing_weights`` leaves the planted embeddings exactly as they are."""
    ones = torch.ones(d_model, 1) / d_model**0.5
    q = torch.linalg.qr(torch.cat([ones, torch.randn(d_model, d_model - 1, generator=generator)], dim=1))[0]
    return q[:, 1:].T


def _letter_sae_files(
    letters: str,
    letter_directions: dict[str, torch.Tensor],
    word_directions: dict[str, torch.Tensor],
    absorbed: list[str],
    hook_name: str,
) -> dict[str, bytes]:
    """A planted SAE (:func:`sdl_anchor.testing.planted.planted_letter_sae`'s recipe) in SAELens's format."""
    from sdl_anchor.testing.planted import PlantedLetters, planted_letter_sae

    d_model = next(iter(letter_directions.values())).shape[0]
    shell = PlantedLetters(
        model=type("Shape", (), {"cfg": type("Cfg", (), {"d_model": d_model})})(),
        words=list(word_directions),
        letter_directions={letter: letter_directions[letter] for letter in letters},
        word_directions=word_directions,
    )
    sae = planted_letter_sae(shell, absorbed=absorbed, hook_name=hook_name)
    with tempfile.TemporaryDirectory() as folder:
        sae.save_model(folder)
        return {f"{hook_name}/{p.name}": p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def offline_hub(
    root: str | Path,
    *,
    letters: str = "abcdef",
    words_per_letter: int = 12,
    d_model: int | None = None,
    n_layers: int = 2,
    n_ctx: int = 128,
    absorbed_per_letter: int = 0,
    planted: bool = True,
    seed: int = 0,
) -> OfflineHub:
    """Write the cache of the module docstring under ``root/hub``; the first ``absorbed_per_letter`` words
    of each of the first half of ``letters`` are absorbed by the SAE. ``d_model`` defaults to one dimension
    per letter and word (all directions orthonormal, so absorption is exact); below that, word directions
    are random and absorbed words are silenced only approximately."""
    root = Path(root)
    generator = torch.Generator().manual_seed(seed)
    words = made_up_words(letters, words_per_letter, seed)
    d_model = d_model or 4 * -(-(len(letters) + len(words) + 1) // 4)
    tokenizer_files = _tokenizer_files(words)
    vocab: dict[str, int] = json.loads(tokenizer_files["tokenizer.json"])["model"]["vocab"]
    basis = _centred_basis(d_model, generator)
    letter_directions = {letter: basis[i] for i, letter in enumerate(letters)}
    complement = basis[len(letters) :]
    if len(complement) >= len(words):
        word_directions = {word: complement[i] for i, word in enumerate(words)}
    else:
        word_directions = {
            word: F.normalize(torch.randn(len(complement), generator=generator) @ complement, dim=0)
            for word in words
        }
    embeddings = 0.1 * torch.randn(len(vocab), d_model, generator=generator)
    if planted:
        for word in words:
            embeddings[vocab[word]] = 3 * letter_directions[word[0]] + word_directions[word]
    bos = vocab["<bos>"]
    weights = _gpt2_weights(d_model, n_layers, n_ctx, embeddings, planted, generator)
    config = _gpt2_config(d_model, n_layers, n_ctx, len(vocab), bos)
    hub = root / "hub"
    write_snapshot(
        hub,
        MODEL_REPO_ID,
        {
            "config.json": json.dumps(config, indent=2).encode(),
            "model.safetensors": _safetensors(weights),
            **tokenizer_files,
        },
    )
    absorbed = [
        word
        for letter in letters[: len(letters) // 2]
        for word in [w for w in words if w[0] == letter][:absorbed_per_letter]
    ]
    sae_ids = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    sae_files: dict[str, bytes] = {}
    for hook_name in sae_ids:
        sae_files |= _letter_sae_files(letters, letter_directions, word_directions, absorbed, hook_name)
    write_snapshot(hub, SAE_REPO_ID, sae_files)
    return OfflineHub(
        root, "gpt2", SAE_RELEASE, sae_ids, words, letter_directions, absorbed, planted, d_model
    )
