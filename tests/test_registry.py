"""Explicit classes: every registered config and coder pickles; registration is idempotent and refuses clashes."""

import importlib
import pickle

import pytest
import torch
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

import sdl_anchor as sa
from sdl_anchor.integrations import registry
from sdl_anchor.integrations.inference import INFERENCE_ARCHITECTURES

FIELDS = {
    "matryoshka": {"matryoshka_widths": [8, 32]},
    "crosscoder": {"n_sources": 2},
    "transcoder": {"d_out": 6},
}


def fields_for(name):
    return {k: v for key, extra in FIELDS.items() if key in name for k, v in extra.items()}


@pytest.mark.parametrize("name", sorted(registry.TRAINING_ARCHITECTURES))
def test_training_configs_and_coders_pickle(name):
    sae_class, config_class = SAE_TRAINING_CLASS_REGISTRY[name]
    assert (sae_class, config_class) == registry.TRAINING_ARCHITECTURES[name]
    assert sae_class.__module__.startswith("sdl_anchor.integrations.")
    assert getattr(importlib.import_module(sae_class.__module__), sae_class.__name__) is sae_class
    config = config_class(d_in=8, d_sae=32, **fields_for(name))
    assert config.architecture() == name
    assert pickle.loads(pickle.dumps(config)) == config
    assert pickle.loads(pickle.dumps(sae_class)) is sae_class
    assert pickle.loads(pickle.dumps(config_class)) is config_class
    # a coder travels as its config and state dict (SAELens's modules hold lambdas, stock ones included)
    coder = sae_class(config)
    clone = sae_class(pickle.loads(pickle.dumps(coder.cfg)))
    clone.load_state_dict(pickle.loads(pickle.dumps(coder.state_dict())))
    for key, value in coder.state_dict().items():
        torch.testing.assert_close(clone.state_dict()[key], value)


@pytest.mark.parametrize("name", sorted(INFERENCE_ARCHITECTURES))
def test_inference_configs_pickle(name):
    sae_class, config_class = SAE_CLASS_REGISTRY[name]
    extra = {"n_sources": 2} if "crosscoder" in name else {"d_out": 8, "apply_b_dec_to_input": False}
    config = config_class(d_in=8, d_sae=16, **extra)
    assert pickle.loads(pickle.dumps(config)) == config
    assert pickle.loads(pickle.dumps(sae_class)) is sae_class


def test_importing_twice_registers_nothing_new():
    before = (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY))
    importlib.reload(registry)
    importlib.reload(sa)
    assert (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY)) == before


def test_a_name_held_by_another_class_is_refused_with_both_named():
    original = SAE_TRAINING_CLASS_REGISTRY["topk_transcoder"]

    class OtherTopKTranscoder(torch.nn.Module):
        pass

    SAE_TRAINING_CLASS_REGISTRY["topk_transcoder"] = (OtherTopKTranscoder, original[1])
    try:
        with pytest.raises(ValueError, match="already holds 'topk_transcoder'.*OtherTopKTranscoder"):
            registry.register_all()
    finally:
        SAE_TRAINING_CLASS_REGISTRY["topk_transcoder"] = original
    assert sa.TopKTranscoderTrainingSAE is original[0]
