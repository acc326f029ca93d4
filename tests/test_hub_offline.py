"""The hub paths users type, run unchanged against an offline hub cache (sdl_anchor.testing.hub_cache).

Every command runs in a subprocess whose environment sets HF_HOME and HF_HUB_OFFLINE before anything imports
huggingface_hub, exactly as a user on an air-gapped machine would run it.
"""

import json
import os
import subprocess
import sys

import pytest

from sdl_anchor.testing.hub_cache import offline_hub

WORDS_PER_LETTER = 30


def run(hub, *argv, cwd=None, timeout=420):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(hub.env, WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return offline_hub(
        tmp_path_factory.mktemp("hf_home"), words_per_letter=WORDS_PER_LETTER, absorbed_per_letter=12
    )


@pytest.fixture(scope="module")
def random_hub(tmp_path_factory):
    return offline_hub(
        tmp_path_factory.mktemp("hf_home_random"), words_per_letter=WORDS_PER_LETTER, planted=False
    )


def audit(hub, out, cache_dir, *extra):
    return run(
        hub, "-m", "sdl_anchor", "audit", "absorption", "--release", hub.sae_release, "--sae-id",
        hub.sae_ids[0], "--model", "gpt2", "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress", *extra,
    )  # fmt: skip


def test_audit_a_release_by_name_finds_the_planted_absorption(hub, tmp_path):
    done = audit(hub, tmp_path / "audit", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "audit" / "absorption.json").read_text())
    per_letter = report["per_letter"]
    flagged = []
    for letter in "abcdef":
        entry = per_letter[letter]
        assert "skipped" not in entry, entry
        assert entry["main_latents"] == ["abcdef".index(letter)]  # the letter's own latent
        flagged += [item["word"] for item in entry["absorbed_words"]]
        if hub.true_absorption(letter) == 0:
            assert entry["absorption_fraction"] == 0.0
    assert flagged and set(flagged) <= set(hub.absorbed)  # every word flagged was planted as absorbed
    assert sum(per_letter[letter]["absorption_fraction"] for letter in "abc") / 3 > 0.2


def test_the_activation_cache_tells_two_checkpoints_of_one_name_apart(hub, random_hub, tmp_path):
    cache = tmp_path / "shared_cache"
    first = audit(random_hub, tmp_path / "random", cache)  # random weights: no letter passes the probe gate
    assert first.returncode == 2 and "probe gate" in first.stderr
    assert len(list(cache.glob("*.safetensors"))) == 1  # but its activations were cached
    second = audit(hub, tmp_path / "planted", cache)
    assert second.returncode == 0, second.stderr
    planted = json.loads((tmp_path / "planted" / "absorption.json").read_text())["per_letter"]
    alone = audit(hub, tmp_path / "alone", tmp_path / "own_cache")
    expected = json.loads((tmp_path / "alone" / "absorption.json").read_text())["per_letter"]
    assert alone.returncode == 0, alone.stderr
    for letter in "abcdef":
        assert planted[letter]["probe_f1"] == pytest.approx(expected[letter]["probe_f1"])
        assert planted[letter]["absorption_fraction"] == pytest.approx(
            expected[letter]["absorption_fraction"]
        )
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_class_mean_anchors_then_anchored_training_by_model_name(hub, tmp_path):
    words = [w for w in hub.words]
    prompts = {"early": words[: len(words) // 2], "late": words[len(words) // 2 :]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    anchors = run(
        hub, "-m", "sdl_anchor", "anchors", "class-means", "--model", "gpt2", "--hook", "blocks.0.hook_resid_post",
        "--prompts", str(tmp_path / "prompts.json"), "--out", str(tmp_path / "anchors"),
    )  # fmt: skip
    assert anchors.returncode == 0, anchors.stderr
    data = tmp_path / "text"
    data.mkdir()
    (data / "corpus.txt").write_text("\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 6)))
    trained = run(
        hub, "-m", "sdl_anchor", "train", "--out", str(tmp_path / "run"), "--architecture", "anchored_topk",
        "--anchor_path", str(tmp_path / "anchors" / "anchors.safetensors"), "--model_name", "gpt2",
        "--hook_name", "blocks.0.hook_resid_post", "--dataset_path", str(data), "--d_in", str(hub.d_model), "--d_sae", "128",
        "--k", "4", "--context_size", "16", "--training_tokens", "4096", "--train_batch_size_tokens", "256",
        "--store_batch_size_prompts", "16", "--n_batches_in_buffer", "32", "--log_to_wandb", "False",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["architecture"] == "anchored_topk" and summary["anchor_cosine"] > 0.5
    assert (tmp_path / "run" / "sae" / "cfg.json").exists()


RUNNER = """
import sys
from transformer_lens import HookedTransformer
import sdl_anchor as sa
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig, CoderTrainingRunner
from sdl_anchor.testing.toy_lm import tokenized_dataset

kind, out = sys.argv[1], sys.argv[2]
model = HookedTransformer.from_pretrained("gpt2")
d = model.cfg.d_model
words = [model.tokenizer.convert_ids_to_tokens(i) for i in range(10, 70)]
dataset = tokenized_dataset(model, [" ".join(words)] * 8, 16)
if kind == "transcoder":
    sae = sa.TopKTranscoderTrainingSAEConfig(d_in=d, d_out=d, d_sae=128, k=4)
    hooks = ["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"]
else:
    sae = sa.TopKCrosscoderTrainingSAEConfig(d_in=2 * d, n_sources=2, d_sae=128, k=4)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
cfg = CoderRunnerConfig(sae=sae, hook_names=hooks, model_name="gpt2", dataset_path="unused", context_size=16,
    training_tokens=2048, train_batch_size_tokens=128, store_batch_size_prompts=16, n_batches_in_buffer=32,
    output_path=out, device="cpu")
coder = CoderTrainingRunner(cfg, override_dataset=dataset).run()
print(type(coder).__name__, coder.cfg.metadata.hook_names)
"""


@pytest.mark.parametrize("kind", ["transcoder", "crosscoder"])
def test_coder_runner_loads_gpt2_by_name(hub, tmp_path, kind):
    done = run(hub, "-c", RUNNER, kind, str(tmp_path / kind))
    assert done.returncode == 0, done.stderr
    assert ("TopKTranscoder" if kind == "transcoder" else "TopKCrosscoder") in done.stdout
    assert (tmp_path / kind / "cfg.json").exists()


BAD_HUB_INPUT = [
    (["--release", "no-such-release", "--sae-id", "x", "--model", "gpt2"], "lists no release 'no-such-release'"),
    (["--release", "gpt2-small-res-jb", "--sae-id", "blocks.99.nope", "--model", "gpt2"], "has no SAE"),
    (["--release", "gpt2-small-res-jb", "--sae-id", "blocks.0.hook_resid_pre", "--model", "not-a-model"],
     "TransformerLens knows no model 'not-a-model'"),
    (["--release", "gpt2-small-res-jb", "--sae-id", "blocks.5.hook_resid_pre", "--model", "gpt2"],
     "HF_HUB_OFFLINE is set"),
]  # fmt: skip

# every bad command of BAD_HUB_INPUT through the CLI's main, in one offline process (one import, not four)
BAD_INPUT_RUNNER = """
import contextlib, io, json, sys
from sdl_anchor.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_hub_input_results(hub, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-hub-input")
    commands = [
        ["audit", "absorption", *argv, "--out", str(out / str(i))]
        for i, (argv, _) in enumerate(BAD_HUB_INPUT)
    ]
    done = run(hub, "-c", BAD_INPUT_RUNNER, json.dumps(commands))
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(BAD_HUB_INPUT)))
def test_bad_hub_input_exits_2_with_a_message_and_writes_nothing(bad_hub_input_results, case):
    out, results = bad_hub_input_results
    message = BAD_HUB_INPUT[case][1]
    assert results[case]["code"] == 2, results[case]["stderr"]
    assert message in results[case]["stderr"] and "Traceback" not in results[case]["stderr"]
    assert not (out / str(case)).exists()


def test_a_transcoder_set_trains_by_model_name_and_exports_for_circuit_tracer(hub, tmp_path):
    data = tmp_path / "text"
    data.mkdir()
    (data / "corpus.txt").write_text(
        "\n".join(" ".join(hub.words[i : i + 12]) for i in range(0, len(hub.words), 4))
    )
    d = str(hub.d_model)
    common = [
        "--architecture", "jumprelu_transcoder", "--model_name", "gpt2", "--dataset_path", str(data),
        "--d_in", d, "--d_out", d, "--d_sae", "64", "--context_size", "16", "--training_tokens", "2048",
        "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "16", "--n_batches_in_buffer", "32",
        "--log_to_wandb", "False",
    ]  # fmt: skip
    trained = run(
        hub, "-m", "sdl_anchor", "train", "--out", str(tmp_path / "run"), "--layers", "all", *common
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["layers"] == [0, 1] and summary["kind"] == "transcoder_set"
    assert {"set/ce_loss_score", "layer_0/ce_loss_score", "layer_1/explained_variance"} <= set(
        summary["eval"]
    )
    exported = run(hub, "-m", "sdl_anchor", "export", "circuit-tracer", str(tmp_path / "run" / "set"), "--out",
                   str(tmp_path / "ct"))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
    ]
    missing = run(
        hub, "-m", "sdl_anchor", "train", "--out", str(tmp_path / "bad"), "--layers", "0,5", *common
    )
    assert missing.returncode == 2 and "layers 0..1, not [5]" in missing.stderr
    assert not (tmp_path / "bad" / "set").exists() and not (tmp_path / "bad" / "train.json").exists()


SAME_ACTIVATIONS = """
import json, sys
import torch
from sae_lens.load_model import load_model as training_load_model
from transformer_lens import HookedTransformer
from sae_lens import TopKSAE, TopKSAEConfig
from sdl_anchor.integrations.compat import parse_runner_args
from sdl_anchor.integrations.loading import load_model, model_kwargs_of

hook, d = "blocks.1.hook_resid_post", int(sys.argv[1])
config = parse_runner_args(["--model_name", "gpt2", "--hook_name", hook, "--d_in", str(d), "--dataset_path", "x"])
trained_on = training_load_model(config.model_class_name, config.model_name, "cpu", config.model_from_pretrained_kwargs)
sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=16, k=2))
sae.cfg.metadata.model_from_pretrained_kwargs = config.model_from_pretrained_kwargs  # as training records it
models = {
    "training": trained_on,
    "audit": load_model("gpt2", None, "cpu", model_kwargs_of(sae)),
    "class_means": load_model("gpt2", None, "cpu", None),
    "processed": HookedTransformer.from_pretrained("gpt2"),  # what the audit loaded before issue 35
}
tokens = torch.arange(3, 40).reshape(1, -1)
acts = {name: m.run_with_cache(tokens, names_filter=hook)[1][hook] for name, m in models.items()}
gap = {name: float((a - acts["training"]).norm() / acts["training"].norm()) for name, a in acts.items()}
print(json.dumps(gap))
"""


def test_the_audit_and_class_mean_anchors_read_the_activations_training_reads(random_hub):
    done = run(random_hub, "-c", SAME_ACTIVATIONS, str(random_hub.d_model))
    assert done.returncode == 0, done.stderr
    gap = json.loads(done.stdout.strip().splitlines()[-1])
    assert gap["audit"] == 0.0 and gap["class_means"] == 0.0
    assert gap["processed"] > 0.05  # weight processing changes this model's activations: the check has teeth
