"""The real-model absorption metric on a tiny local model whose embeddings carry each word's first letter
along a known direction, with hand-built SAEs of known absorption (0, partial, full)."""

import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sdl_anchor.absorption import ConceptSet, concept_absorption, first_letter_concepts
from sdl_anchor.testing.planted import PlantedLetters, planted_letter_model, planted_letter_sae
from sdl_anchor.testing.toy_lm import toy_language_model

LETTERS = "abcdef"
HOOK = "blocks.0.hook_resid_pre"


@pytest.fixture(scope="module")
def planted():
    """A 1-layer model whose embedding of each word is 3 x (its letter's direction) + its own direction,
    all orthonormal, read at blocks.0.hook_resid_pre (no position embedding)."""
    p = planted_letter_model(LETTERS, words_per_letter=40, d_model=256)
    return p.model, p.words, p.letter_directions, p.word_directions


def letter_sae(letter_dirs, word_dirs, absorbed=()):
    """One latent per letter reading and writing its direction; each word in ``absorbed`` gets its own
    latent that writes its letter's direction, and silences its letter's latent."""
    model = toy_language_model(["x"], d_model=256, n_layers=1)  # only its width matters here
    return planted_letter_sae(PlantedLetters(model, [], letter_dirs, word_dirs), list(absorbed), HOOK)


def run(planted, sae, tmp_path=None, **kwargs):
    model, _words, _, _ = planted
    concepts = first_letter_concepts(model.tokenizer)
    return concept_absorption(model, sae, concepts, progress=False, cache_dir=tmp_path, **kwargs)


def test_first_letter_task_comes_from_the_tokenizer(planted):
    model, words, _, _ = planted
    concepts = first_letter_concepts(model.tokenizer)
    assert set(words) <= set(concepts.words)  # plus the template's own words ("has", "the", "first")
    head, full = concepts.prompts(seed=0)[0]
    assert full.startswith("\n") and full.endswith(" has the first letter:")
    assert full.count("has the first letter:") == 11  # 10 in-context examples and the word itself
    assert head.endswith(concepts.words[0])


def test_a_clean_sae_absorbs_nothing(planted, tmp_path):
    _model, _words, letter_dirs, word_dirs = planted
    result = run(planted, letter_sae(letter_dirs, word_dirs), tmp_path)
    scored = {k: v for k, v in result["per_class"].items() if "skipped" not in v}
    assert set(scored) == set(LETTERS)
    for i, letter in enumerate(LETTERS):
        assert scored[letter]["probe_f1"] > 0.9  # the template word "first" has no planted letter
        assert scored[letter]["main_latents"] == [i] and scored[letter]["num_split_features"] == 1
        assert scored[letter]["absorption_fraction"] == 0.0 and scored[letter]["full_absorption"] == 0.0
    assert result["mean_absorption_fraction_score"] == 0.0 and result["mean_num_split_features"] == 1.0
    assert "the first letter" not in result["per_class"]  # letters with too few words are skipped
    assert "skipped" in result["per_class"]["h"]  # "has": one word only


def test_planted_partial_and_full_absorption_are_measured_exactly(planted, tmp_path):
    _model, words, letter_dirs, word_dirs = planted
    a_words = [w for w in words if w[0] == "a"]
    b_words = [w for w in words if w[0] == "b"]
    absorbed = a_words[::2] + b_words  # half of "a" absorbed, all of "b"
    result = run(planted, letter_sae(letter_dirs, word_dirs, absorbed), tmp_path)
    a, b = result["per_class"]["a"], result["per_class"]["b"]
    scored_a = set(a["scored_words"])
    assert a["main_latents"] == [0]
    truth = len(scored_a & set(absorbed)) / len(scored_a)
    assert a["absorption_fraction"] == pytest.approx(truth) and a["full_absorption"] == pytest.approx(truth)
    assert 0.2 < truth < 0.8
    assert {w["word"] for w in a["absorbed_words"]} == scored_a & set(absorbed)
    for entry in a["absorbed_words"]:
        latent = len(LETTERS) + absorbed.index(entry["word"])
        assert entry["absorbing_latents"] == [latent] and entry["full_absorption"]
    # "b" has no latent of its own: whichever child latent is taken as main, every other word is absorbed
    assert b["absorption_fraction"] >= 1 - 1 / len(b["scored_words"]) - 1e-6
    for letter in "cdef":
        assert result["per_class"][letter]["absorption_fraction"] == 0.0


def test_rescaling_latents_changes_nothing(planted):
    _model, words, letter_dirs, word_dirs = planted
    absorbed = [w for w in words if w[0] == "a"][::2]
    sae = letter_sae(letter_dirs, word_dirs, absorbed)
    before = run(planted, sae)
    with torch.no_grad():
        scale = torch.linspace(0.2, 5.0, sae.cfg.d_sae)
        sae.W_enc *= scale
        sae.b_enc *= scale
        sae.W_dec /= scale[:, None]
    after = run(planted, sae)
    for key in ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features"):
        assert after[key] == pytest.approx(before[key], abs=1e-6)
    assert after["per_class"]["a"]["main_latents"] == before["per_class"]["a"]["main_latents"]


def test_any_concept_hierarchy(planted):
    model, words, letter_dirs, word_dirs = planted
    hierarchy = {
        "vowel-start": {"a": [w for w in words if w[0] == "a"], "e": [w for w in words if w[0] == "e"]},
        "b-start": {"b": [w for w in words if w[0] == "b"]},
        "c-start": {"c": [w for w in words if w[0] == "c"]},
    }
    concepts = ConceptSet.from_hierarchy(hierarchy, template="{word} has the first letter:")
    result = concept_absorption(model, letter_sae(letter_dirs, word_dirs), concepts, progress=False)
    assert result["eval_type_id"] == "absorption_concepts"
    assert set(result["per_child"]) == {"vowel-start/a", "vowel-start/e", "b-start/b", "c-start/c"}
    # the vowel class needs two latents, one per letter: a split feature
    assert sorted(result["per_class"]["vowel-start"]["main_latents"]) == [0, 4]


def test_the_cache_is_keyed_and_reused(planted, tmp_path):
    _model, _words, letter_dirs, word_dirs = planted
    sae = letter_sae(letter_dirs, word_dirs)
    first = run(planted, sae, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2  # activations and their index
    assert run(planted, sae, tmp_path) == first
    run(planted, sae, tmp_path, seed=1)
    assert len(list(tmp_path.iterdir())) == 4  # another seed, another entry


def test_bad_input_is_explained(planted):
    _model, _words, letter_dirs, word_dirs = planted
    narrow = StandardSAE(StandardSAEConfig(d_in=128, d_sae=8, metadata=SAEMetadata(hook_name=HOOK)))
    with pytest.raises(ValueError, match="width 256 but the coder expects 128"):
        run(planted, narrow)
    with pytest.raises(ValueError, match="no_such_hook"):
        run(planted, letter_sae(letter_dirs, word_dirs), hook_name="blocks.0.no_such_hook")
    small = toy_language_model(["apple avocado bear has the first letter:"], d_model=256, n_layers=1)
    with pytest.raises(ValueError, match="needs at least 10 words in a class"):
        concept_absorption(small, letter_sae(letter_dirs, word_dirs), first_letter_concepts(small.tokenizer))
    with pytest.raises(ValueError, match="must contain"):
        ConceptSet(["a"], ["p"], ["c"], template="no placeholder")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, planted):
    """The planted model as a local Hugging Face GPT-2 checkpoint with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _, _, _ = planted
    folder = tmp_path_factory.mktemp("hf")
    config = GPT2Config(vocab_size=model.cfg.d_vocab, n_positions=80, n_embd=256, n_layer=1, n_head=4)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        hf.transformer.wte.weight.copy_(model.W_E)
        hf.transformer.wpe.weight.zero_()
    hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def test_audit_command_on_a_saved_sae_and_a_local_checkpoint(
    planted, hf_checkpoint, tmp_path, capsys, monkeypatch
):
    from wandb_records import logged_history, offline_runs

    from sdl_anchor.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")

    _, words, letter_dirs, word_dirs = planted
    sae_dir = tmp_path / "sae"
    letter_sae(letter_dirs, word_dirs, [w for w in words if w[0] == "a"][::2]).save_model(str(sae_dir))
    out = tmp_path / "audit"
    argv = ["audit", "absorption", "--sae-path", str(sae_dir), "--model", "toy-gpt2", "--model-path"]
    argv += [str(hf_checkpoint), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main([*argv, "--wandb-project", "sdl-anchor-test"]) == 0
    report = json.loads((out / "absorption.json").read_text())
    for key in ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features"):
        assert key in report and key in report["eval_result_metrics"]["mean"]
    assert set(LETTERS) <= set(report["per_letter"])
    assert 0.2 < report["per_letter"]["a"]["absorption_fraction"] < 0.8
    assert report["per_letter"]["c"] == {**report["per_letter"]["c"], "absorption_fraction": 0.0}
    assert "skipped" in report["per_letter"]["h"]
    assert report["config"]["hook_name"] == HOOK
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG" and "<table>" in (
        out / "report.html"
    ).read_text()
    assert "mean absorption fraction" in capsys.readouterr().out
    (run,) = offline_runs(out)
    history = logged_history(run)
    assert json.loads(history["absorption/per_letter/_type"][0]) == "table-file"
    assert json.loads(history["absorption/report/_type"][0]) == "image-file"
    # a second run refuses to overwrite, and bad folders are explained
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    bad = [
        "audit",
        "absorption",
        "--sae-path",
        str(tmp_path / "empty"),
        "--model",
        "m",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(bad) == 2
    assert "has no cfg.json" in capsys.readouterr().err
    assert main(["audit", "absorption", "--release", "r", "--model", "m", "--out", str(tmp_path / "o")]) == 2
    assert "--release needs --sae-id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_compact_deeper_planted_model_with_word_latents_absorbs_nothing():
    """The SAEBench comparison's realistic preset, small: more words than dimensions (word directions only
    nearly orthogonal), 2 layers read at layer 0's resid_post, and a latent per word next to the letters'."""
    p = planted_letter_model("abc", words_per_letter=40, d_model=64, pass_through=True, n_layers=2)
    assert p.model.cfg.n_layers == 2 and len(p.words) > 64
    for direction in p.letter_directions.values():
        for word in p.words:
            assert abs(float(direction @ p.word_directions[word])) < 1e-5
    sae = planted_letter_sae(p, (), "blocks.0.hook_resid_post", word_latents=True)
    assert sae.cfg.d_sae == 3 + len(p.words)
    result = concept_absorption(p.model, sae, first_letter_concepts(p.model.tokenizer), progress=False)
    for i, letter in enumerate("abc"):
        assert result["per_class"][letter]["main_latents"] == [i]
    assert result["mean_absorption_fraction_score"] == 0.0 and result["mean_full_absorption_score"] == 0.0


def test_an_sae_with_infinite_weights_is_refused_by_the_audit(planted):
    """Issue 35: the first-letter audit refuses an SAE whose weights are not finite, before any work."""
    _model, _words, letter_dirs, word_dirs = planted
    sae = letter_sae(letter_dirs, word_dirs)
    with torch.no_grad():
        sae.W_dec[0, 0] = float("inf")
    with pytest.raises(ValueError, match="W_dec holds 1 NaN or infinite values"):
        run(planted, sae)


def test_the_cache_key_reads_models_with_tensors_past_2_to_the_24_elements():
    """SmolLM2's embedding (28,311,552 values) broke the audit: a float32 linspace rounded the last index up
    past the end; GPT-2's (38,597,376) would have too."""
    from sdl_anchor.absorption.concepts import model_fingerprint

    big = torch.nn.Embedding(28_311_552 // 576, 576)
    first = model_fingerprint(big)
    with torch.no_grad():
        big.weight[-1, -1] += 1.0  # the last value is one of the sampled ones
    assert model_fingerprint(big) != first


def test_space_prefixed_word_tokens_stay_one_token_in_their_prompt():
    """A byte-level BPE vocabulary (SmolLM2, GPT-2) holds mostly " word" tokens; with the space stripped, the
    word began a prompt line bare and split in two, so SmolLM2 kept 3 of 300 words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sdl_anchor.absorption.concepts import first_letter_concepts

    words = ["apple", "banana", "cherry", "damson", "elder", "fig"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        special_tokens=["<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([" ".join(words) + " has the first letter: A B C D E F\n"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>")
    concepts = first_letter_concepts(tokenizer)
    spaced = [w for w in concepts.words if w.startswith(" ")]
    assert {w.strip() for w in spaced} >= set(words[1:])  # " banana" ... as the vocabulary spells them
    for (head, _), word in zip(concepts.prompts(0), concepts.words, strict=True):
        if word in spaced:
            prefix = head[: len(head) - len(word)]
            assert len(tokenizer(head)["input_ids"]) == len(tokenizer(prefix)["input_ids"]) + 1, word
    assert all(p == w.strip()[0].lower() for p, w in zip(concepts.parents, concepts.words, strict=True))
