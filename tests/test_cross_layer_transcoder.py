"""Cross-layer transcoders: a hand-set CLT reproduces a known cross-layer map (and its training loss is zero
there), the decoder is block lower-triangular (no parameter, and no gradient, from a layer's latents or input
to an earlier layer's output), save/load round trips in circuit-tracer's tensor layout, the spliced evaluation
matches the direct reconstruction, the CLI trains and saves one from one forward pass per batch, and bad input
is refused with a clear error."""

import json
import re

import pytest
import torch
from sae_lens import LoggingConfig
from sae_lens.saes.sae import SAE, TrainStepInput
from safetensors.torch import load_file

import sdl_anchor  # noqa: F401  (registers the CLT architectures)
from sdl_anchor import ResamplingConfig
from sdl_anchor.cli import main
from sdl_anchor.cli.train import count_forward_passes
from sdl_anchor.integrations.clt_resampling import CLTResamplingTrainer
from sdl_anchor.integrations.clt_training import (
    CLTBundle,
    CrossLayerTranscoderRunner,
    _splice_hooks,
    evaluate_spliced_clt,
)
from sdl_anchor.integrations.coder_runner import CoderRunnerConfig
from sdl_anchor.integrations.cross_layer_transcoder import (
    CLT_ARCHITECTURES,
    CrossLayerTranscoder,
    circuit_tracer_tensors,
)
from sdl_anchor.testing.toy_lm import tokenized_dataset, toy_language_model, word_level_tokenizer

L, D_IN, D_OUT, D_SAE = 3, 5, 4, 6
D_SAE_RESAMPLED = 8  # the resampling test's d_sae: layer 1's latents start at flat index 8
ARCHITECTURES = sorted(CLT_ARCHITECTURES)
CORPUS = ["the cat sat on the mat and the dog ran in the park while the birds sang"] * 20


def make_clt(name, n_layers=L, d_sae=D_SAE, **extra):
    sae_class, config_class = CLT_ARCHITECTURES[name]
    if "topk" in name:
        extra.setdefault("k", d_sae)
    return sae_class(config_class(d_in=D_IN, d_out=D_OUT, d_sae=d_sae, n_layers=n_layers, **extra))


def step_input(x, coefficients=None):
    return TrainStepInput(sae_in=x, coefficients=coefficients or {"l1": 0.0, "l0": 0.0}, dead_neuron_mask=None,
                          n_training_steps=0, is_logging_step=False)  # fmt: skip


def planted_map(generator):
    """A known cross-layer map: latents a_l = relu(x_l A_l + c_l), outputs y_m = sum_{l<=m} a_l B[l][m] + e_m."""
    A = torch.randn(L, D_IN, D_SAE, generator=generator)
    c = torch.randn(L, D_SAE, generator=generator) * 0.1
    B = {(i, m): torch.randn(D_SAE, D_OUT, generator=generator) for i in range(L) for m in range(i, L)}
    e = torch.randn(L, D_OUT, generator=generator)

    def apply(x):  # x [batch, L, D_IN] -> [batch, L, D_OUT], written out term by term
        acts = [torch.relu(x[:, i] @ A[i] + c[i]) for i in range(L)]
        return torch.stack([sum(acts[i] @ B[i, m] for i in range(m + 1)) + e[m] for m in range(L)], dim=1)

    return A, c, B, e, apply


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_hand_set_clt_reproduces_a_known_cross_layer_map_and_trains_at_zero_loss_there(name):
    generator = torch.Generator().manual_seed(0)
    A, c, B, e, apply = planted_map(generator)
    # TopK family: k = d_sae keeps every positive latent, so the activation is a ReLU here
    clt = make_clt(name, rescale_acts_by_decoder_norm=False) if "topk" in name else make_clt(name)
    with torch.no_grad():
        clt.W_enc.copy_(A)
        clt.b_enc.copy_(c)
        clt.b_dec.copy_(e)
        for i in range(L):
            for m in range(i, L):
                clt.W_dec[i][:, m - i] = B[i, m]
        if name == "jumprelu_clt":
            clt.threshold.zero_()  # x * (x > 0): a ReLU
    x = torch.randn(64, L, D_IN, generator=generator)
    torch.testing.assert_close(clt.decode_layers(clt.encode_layers(x)), apply(x))
    clt.set_training_target(apply(x).flatten(1))
    output = clt.training_forward_pass(step_input(x.flatten(1)))
    assert float(output.losses["mse_loss"].detach()) < 1e-9
    assert output.feature_acts.shape == (64, L * D_SAE) and output.sae_out.shape == (64, L * D_OUT)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_decoder_is_block_lower_triangular_in_its_weights_and_gradients(name):
    torch.manual_seed(1)
    clt = make_clt(name)
    assert [tuple(w.shape) for w in clt.W_dec] == [(D_SAE, L - i, D_OUT) for i in range(L)]
    acts = torch.rand(8, L, D_SAE, requires_grad=True)
    x = torch.randn(8, L, D_IN, requires_grad=True)
    for m in range(L):
        for tensor, forward in ((acts, lambda: clt.decode_layers(acts)), (x, lambda: clt(x.flatten(1)))):
            tensor.grad = None
            out = forward()
            out = out if out.ndim == 3 else out.unflatten(-1, (L, D_OUT))
            out[:, m].pow(2).sum().backward()
            grad = tensor.grad.abs().sum(dim=(0, 2))  # per layer
            assert torch.all(grad[m + 1 :] == 0), f"layer {m}'s output depends on a later layer"
            if tensor is acts:
                assert torch.all(grad[: m + 1] > 0)
    # a training step's gradient: the last layer's latents reach only the last layer's output
    clt.zero_grad()
    x_in = torch.randn(32, L * D_IN)
    clt.set_training_target(torch.randn(32, L * D_OUT))
    clt.training_forward_pass(step_input(x_in)).loss.backward()
    assert clt.W_dec[L - 1].grad is not None and clt.W_dec[L - 1].grad.shape == (D_SAE, 1, D_OUT)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_and_load_round_trip_in_circuit_tracers_layout(name, tmp_path):
    torch.manual_seed(2)
    clt = make_clt(name, **({"k": 2} if "topk" in name else {}))
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.5)
        clt.b_dec.normal_()
        if name == "jumprelu_clt":
            clt.threshold.uniform_(0, 0.3)
        if name == "batchtopk_clt":
            clt.topk_threshold.copy_(torch.tensor([0.05, 0.1, 0.2]))
    clt.cfg.metadata.model_name = "toy"
    x = torch.randn(40, L * D_IN)
    clt.eval()
    if name == "batchtopk_clt":  # saved as JumpReLU with each layer's threshold on the ranked pre-activations
        pre = clt.pre_activations(x.unflatten(-1, (L, D_IN))).detach()
        acts = pre * (pre > clt.topk_threshold[:, None].float())
        expected = clt.decode_layers(acts).flatten(1)
    else:
        expected = clt(x)
    folder = CLTBundle(clt, [0, 1, 2]).save(tmp_path / "clt")
    assert sorted(p.name for p in folder.iterdir()) == [
        "cfg.json",
        "manifest.json",
        "sae_weights.safetensors",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    activation = {"standard_clt": "relu", "topk_clt": "topk"}.get(name, "jumprelu")
    assert manifest["architecture"] == name and manifest["activation"] == activation
    assert (manifest["n_layers"], manifest["d_in"], manifest["d_out"], manifest["d_sae"]) == (
        L,
        D_IN,
        D_OUT,
        D_SAE,
    )
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    # circuit-tracer's CLT files: W_enc_l = W_enc[l].T [d_sae, d_model], W_dec_l = W_dec.l [d_sae, L - l, d_model]
    assert tensors["W_enc"].shape == (L, D_IN, D_SAE) and tensors["b_enc"].shape == (L, D_SAE)
    assert tensors["b_dec"].shape == (L, D_OUT)
    assert all(tensors[f"W_dec.{i}"].shape == (D_SAE, L - i, D_OUT) for i in range(L))
    assert ("threshold" in tensors) == (activation == "jumprelu")
    back = CLTBundle.load(folder)
    assert isinstance(back.coder, CrossLayerTranscoder) and back.layers == [0, 1, 2]
    assert back.hooks == ("ln2.hook_normalized", "hook_mlp_out")
    torch.testing.assert_close(back.coder(x), expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(SAE.load_from_disk(str(folder))(x), expected.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["standard_clt", "jumprelu_clt", "batchtopk_clt"])
def test_circuit_tracers_tensors_give_the_same_reconstruction_by_its_formula(name, tmp_path):
    """circuit-tracer's CLT: a_l = act(x_l @ W_enc_l.T + b_enc_l) (JumpReLU: a * (a > threshold_l)),
    y_m = sum_{l <= m} a_l @ W_dec_l[:, m - l] + b_dec_m."""
    torch.manual_seed(4)
    clt = make_clt(name, **({"k": 3} if "topk" in name else {}))
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.3)
        clt.b_dec.normal_()
        if name == "jumprelu_clt":
            clt.threshold.uniform_(0, 0.2)
        if name == "batchtopk_clt":
            clt.topk_threshold.fill_(0.05)
    saved = CLTBundle.load(CLTBundle(clt, [0, 1, 2]).save(tmp_path / "clt")).coder
    files = circuit_tracer_tensors(saved)
    assert sorted(files) == sorted(f"W_{kind}_{i}.safetensors" for kind in ("enc", "dec") for i in range(L))
    x = torch.randn(7, L, D_IN)
    acts = []
    for i in range(L):
        enc = files[f"W_enc_{i}.safetensors"]
        assert enc[f"W_enc_{i}"].shape == (D_SAE, D_IN)
        pre = x[:, i] @ enc[f"W_enc_{i}"].T + enc[f"b_enc_{i}"]
        threshold = enc.get(f"threshold_{i}")
        acts.append(torch.relu(pre) if threshold is None else pre * (pre > threshold))
    y = torch.stack([
        sum(acts[i] @ files[f"W_dec_{i}.safetensors"][f"W_dec_{i}"][:, m - i] for i in range(m + 1))
        + files[f"W_enc_{m}.safetensors"][f"b_dec_{m}"]
        for m in range(L)
    ], dim=1)  # fmt: skip
    torch.testing.assert_close(y, saved.decode_layers(saved.encode_layers(x)))
    with pytest.raises(ValueError, match="ReLU and JumpReLU CLTs only"):
        circuit_tracer_tensors(
            CLTBundle.load(CLTBundle(make_clt("topk_clt", k=2), [0, 1, 2]).save(tmp_path / "t")).coder
        )


def test_bad_shapes_configs_and_folders_are_refused(tmp_path):
    clt = make_clt("topk_clt", k=2)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3 \* 5\]"):
        clt.encode(torch.randn(4, 2 * D_IN))
    with pytest.raises(ValueError, match=r"must be \[\.\.\., 3, 5\]"):
        clt.encode_layers(torch.randn(4, 2, D_IN))
    with pytest.raises(ValueError, match="CLT targets must be"):
        clt.set_training_target(torch.randn(4, D_OUT))
    with pytest.raises(ValueError, match="CrossLayerTranscoderRunner"):
        clt.training_forward_pass(step_input(torch.randn(4, L * D_IN)))
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        make_clt("standard_clt", n_layers=0)
    with pytest.raises(ValueError, match="k=9 is larger than d_sae=6"):
        make_clt("batchtopk_clt", k=9).encode(torch.randn(4, L * D_IN))
    with pytest.raises(ValueError, match="k must be positive"):
        make_clt("topk_clt", k=0)
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be False"):
        make_clt("jumprelu_clt", apply_b_dec_to_input=True)
    with pytest.raises(ValueError, match="2 layers given for a CLT over 3 layers"):
        CLTBundle(clt, [0, 1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLTBundle.load(tmp_path / "nothing")
    folder = CLTBundle(clt, [0, 1, 2]).save(tmp_path / "clt")
    (folder / "manifest.json").write_text(json.dumps({**json.loads((folder / "manifest.json").read_text()),
                                                      "layers": [2, 0]}))  # fmt: skip
    with pytest.raises(ValueError, match="'layers' must be increasing"):
        CLTBundle.load(folder)


@pytest.mark.parametrize("strategy", ["anthropic", "theory"])
def test_resampling_rewrites_only_the_dead_latents_own_layer_and_their_adam_moments(strategy):
    torch.manual_seed(3)
    clt = make_clt("jumprelu_clt", d_sae=8)
    config = runner_config(clt.cfg, tokens=64 * 40)
    config.train_batch_size_tokens = 64
    trainer = CLTResamplingTrainer(cfg=config.to_sae_trainer_config(), sae=clt, data_provider=iter(()),
                                   resampling=ResamplingConfig(strategy=strategy, every_n_steps=10))  # fmt: skip
    mix = torch.randn(L * D_IN, L * D_OUT) / 3
    for _ in range(6):
        x = torch.randn(64, L * D_IN)
        trainer.step((x, torch.relu(x @ mix)))
    dead = torch.tensor([1, 4])
    trainer.n_forward_passes_since_fired.zero_()
    trainer.n_forward_passes_since_fired[D_SAE_RESAMPLED + dead] = 10**6  # layer 1's latents 1 and 4
    before = {name: p.detach().clone() for name, p in clt.named_parameters()}
    moments = {name: trainer.optimizer.state[p]["exp_avg"].clone() for name, p in clt.named_parameters()}
    record = trainer.resample(1)
    assert record["resample/dead_before"] == 2 and record["resample/latents"] + record["resample/split"] >= 1
    after = dict(clt.named_parameters())
    for layer in (0, 2):  # other layers untouched, weights and Adam state
        torch.testing.assert_close(after["W_enc"][layer], before["W_enc"][layer], rtol=0, atol=0)
        torch.testing.assert_close(after[f"W_dec.{layer}"], before[f"W_dec.{layer}"], rtol=0, atol=0)
        torch.testing.assert_close(
            trainer.optimizer.state[after["W_enc"]]["exp_avg"][layer], moments["W_enc"][layer]
        )
    changed = (after["W_enc"][1] != before["W_enc"][1]).any(dim=0)
    assert changed[dead].all()
    if strategy == "anthropic":  # exactly the dead latents (theory also re-points the latents it splits)
        assert changed.sum() == 2
        assert (trainer.optimizer.state[after["W_enc"]]["exp_avg"][1][:, dead] == 0).all()
        assert (trainer.optimizer.state[after["W_dec.1"]]["exp_avg"][dead] == 0).all()
        assert (after["threshold"][1][dead] == clt.cfg.jumprelu_init_threshold).all()
    assert after["W_dec.1"].shape == (8, L - 1, D_OUT)


@pytest.fixture(scope="module")
def toy():
    model = toy_language_model(CORPUS, d_model=16, n_layers=3, n_ctx=16)
    return model, tokenized_dataset(model, CORPUS, 16)


def runner_config(sae, tokens=512, out=None):
    return CoderRunnerConfig(
        sae=sae, model_name="toy", dataset_path="unused", context_size=16, training_tokens=tokens, hook_names=[],
        train_batch_size_tokens=128, store_batch_size_prompts=16, n_batches_in_buffer=8, device="cpu",
        output_path=None if out is None else str(out), logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip


def test_one_forward_pass_per_batch_whatever_the_layers_and_the_splice_matches_the_reconstruction(toy):
    model, dataset = toy
    config_class = CLT_ARCHITECTURES["jumprelu_clt"][1]
    passes = []
    for layers in ("all", "1"):
        runner = CrossLayerTranscoderRunner(runner_config(config_class(d_in=16, d_sae=32)), layers=layers,
                                            override_model=model, override_dataset=dataset)  # fmt: skip
        counter = count_forward_passes(model)
        runner.run()
        model.reset_hooks(including_permanent=True)
        passes.append(counter["count"])
    assert passes[0] == passes[1] > 0  # three layers cost the forward passes of one
    # the splice: layer 2 alone replaced, from its own and the earlier layers' inputs in the same pass
    runner = CrossLayerTranscoderRunner(runner_config(config_class(d_in=16, d_sae=32), tokens=128),
                                        layers="all", override_model=model, override_dataset=dataset)  # fmt: skip
    clt = runner.run().coder.eval()
    tokens = model.to_tokens(CORPUS[0])
    seen = {}
    hooks = _splice_hooks(clt, [0, 1, 2], ("ln2.hook_normalized", "hook_mlp_out"), [2])
    hooks.append(("blocks.2.hook_mlp_out", lambda act, hook: seen.setdefault("out", act)))
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    _, cache = model.run_with_cache(tokens)
    x = torch.stack([cache[f"blocks.{i}.ln2.hook_normalized"] for i in range(3)], dim=-2)
    torch.testing.assert_close(seen["out"], clt.decode_layers(clt.encode_layers(x))[..., 2, :])
    result = evaluate_spliced_clt(clt, model, tokens, [0, 1, 2])
    assert set(result["layers"]) == {"0", "1", "2"} and result["clt"]["ce_loss_with_clt"] > 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 3-layer GPT-2 checkpoint (d_model 16) with a word-level tokenizer, and a text dataset."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("clt_cli")
    tokenizer = word_level_tokenizer(CORPUS)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=3, n_head=4)
                    ).save_pretrained(folder / "ckpt")  # fmt: skip
    tokenizer.save_pretrained(str(folder / "ckpt"))
    (folder / "data").mkdir()
    (folder / "data" / "train.txt").write_text("\n".join(CORPUS))
    return folder


def train_argv(checkpoint, out, *extra):
    return [
        "train", "--out", str(out), "--model-path", str(checkpoint / "ckpt"), "--model_name", "toy",
        "--dataset_path", str(checkpoint / "data"), "--context_size", "16", "--training_tokens", "512",
        "--train_batch_size_tokens", "128", "--store_batch_size_prompts", "16", "--n_batches_in_buffer", "8",
        "--device", "cpu", "--d_in", "16", "--d_out", "16", "--d_sae", "32", *extra,
    ]  # fmt: skip


def test_the_cli_trains_a_batchtopk_clt_over_every_layer_and_saves_it_loadable(checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(checkpoint, out, "--architecture", "batchtopk_clt", "--k", "4", "--layers", "all",
                      "--resampling", "theory", "--resample-every", "2")  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "train.json").read_text())
    assert summary["kind"] == "cross_layer_transcoder" and summary["architecture"] == "batchtopk_clt"
    assert summary["layers"] == [0, 1, 2] and summary["activation"] == "jumprelu" and summary["n_steps"] == 4
    assert summary["model_forward_passes"] > 0
    assert [event["resample/step"] for event in summary["resampling"]["events"]] == [2.0]
    kernels = summary["kernels"]  # the per-layer dense product's calibrated kernel, as other coders record
    assert kernels["step"] == "sparse" and kernels["dense_product"] in ("onednn", "addmm")
    assert kernels["cpu"] and kernels["threads"] == torch.get_num_threads()
    assert {
        "clt/ce_loss_score",
        "clt/ce_loss_with_clt",
        "layer_0/ce_loss_score",
        "layer_2/explained_variance",
    } <= set(summary["eval"])
    bundle = CLTBundle.load(out / "clt")
    assert bundle.coder.cfg.activation == "jumprelu" and bundle.coder.cfg.n_layers == 3
    assert bundle.coder.threshold.shape == (3, 32)
    assert not any(p.name.startswith(".clt.partial") for p in out.iterdir())


@pytest.mark.parametrize("architecture", ["batchtopk_clt", "topk_transcoder"])
def test_a_clt_and_a_transcoder_set_log_to_wandb(checkpoint, tmp_path, capsys, monkeypatch, architecture):
    """--layers runs (a CLT, a transcoder set) start one W&B run (offline here), log their losses to it and
    finish it."""
    from wandb_records import logged_history, offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the runs go into --out
    out = tmp_path / "run"
    argv = train_argv(checkpoint, out, "--architecture", architecture, "--k", "4", "--layers", "all",
                      "--wandb-project", "sdl-anchor-test", "--wandb_log_frequency", "1")  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (run,) = offline_runs(out)
    history = logged_history(run)
    assert any(key.endswith("mse_loss") for key in history), sorted(history)


def test_the_cli_trains_an_anchored_topk_clt_from_an_anchor_file(checkpoint, tmp_path, capsys):
    """``--anchor_path`` names a CLT anchor file (one AnchorSet per layer): each layer's first latents start at
    its anchors (``--anchor_init``), stay near them through training and theory resampling, and the saved
    CLT keeps the anchors beside it."""
    import torch.nn.functional as F

    from sdl_anchor import AnchorSet
    from sdl_anchor.anchoring.clt_anchors import CLTAnchors

    g = torch.Generator().manual_seed(3)
    anchors = CLTAnchors([AnchorSet(torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g))
                          for _ in range(3)])  # fmt: skip
    path = anchors.save(tmp_path / "anchors.safetensors")
    out = tmp_path / "run"
    argv = train_argv(checkpoint, out, "--architecture", "topk_clt", "--k", "4", "--layers", "all",
                      "--anchor_path", str(path), "--anchor_init", "True", "--anchor_coefficient", "1.0",
                      "--resampling", "theory", "--resample-every", "2")  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "train.json").read_text())
    assert summary["architecture"] == "topk_clt" and summary["layers"] == [0, 1, 2]
    bundle = CLTBundle.load(out / "clt")
    assert bundle.anchors is not None
    for layer, saved in enumerate(bundle.anchors.layers):
        assert torch.equal(saved.directions_in, anchors.layers[layer].directions_in)
        encoder = bundle.coder.W_enc[layer][:, :2].T  # [k, d_in]
        decoder = bundle.coder.W_dec[layer][:2, 0]  # [k, d_out]: the layer's own output
        assert (F.cosine_similarity(encoder, anchors.layers[layer].directions_in, dim=1) > 0.9).all(), layer
        assert (F.cosine_similarity(decoder, anchors.layers[layer].directions_out, dim=1) > 0.9).all(), layer


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--architecture", "topk_clt", "--k", "4", "--layers", "0,7"], r"layers 0..2, not \[7\]"),
        (["--architecture", "topk_clt", "--k", "4", "--hook_name", "blocks.0.hook_mlp_out"], "give --layers all"),
        (["--architecture", "topk_clt", "--k", "4", "--layers", "all", "--resampling", "theory",
          "--duplicate-cosine", "0.8"], "not supported for cross-layer transcoders"),
        (["--architecture", "topk_clt", "--k", "40", "--layers", "all"], "--k 40 is larger than --d_sae 32"),
        (["--architecture", "topk_sae_clt", "--layers", "all"], "unknown architecture 'topk_sae_clt'"),
    ],
)  # fmt: skip
def test_bad_cli_input_exits_2_with_a_message_and_writes_nothing(
    checkpoint, tmp_path, capsys, extra, message
):
    assert main(train_argv(checkpoint, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "bad" / "clt").exists() and not (tmp_path / "bad" / "train.json").exists()
