"""Presets of ``sdl-anchor bench lm`` (a real language model: SmolLM2-135M-Instruct by default).

Settings that are ours, fixed before any run and the same for every variant (none was tuned on this model):
SAELens's ``expected_average_only_in`` activation scaling; the beginning-of-sequence position left out of
training, scoring and splicing (its residual norm is tens of times the others', as usual in Llama-family
models); ``b_dec`` initialised at the scaled mean of the training activations (the residual stream's mean is
most of its norm); lr 1e-3 constant on the smoke and cpu presets (chosen once, before any cpu run, on the
smoke preset's layer-2 activations: stock TopK after 150 steps reached FVU 0.58 at SAELens's 3e-4 and 0.04 at
1e-3), 3e-4 on the gpu preset's long run; batch 1,024 tokens; Adam as SAELens sets it; SAELens's AuxK dead-latent window
1/16 of the run (so the stock TopK baseline's dead-latent loss is active in a short run, as in ``bench
lrb`` and ``bench synth``); theory and Anthropic resampling with ``ResamplingConfig``'s defaults; anchors:
the normalised, centred class means of the ``n_anchors`` most frequent word tokens of the training text
(the class: "this position holds that token"), the paper's Eq. 22 with lambda 0.1. Seed 0 is the development
seed, the others are held out; every seed's numbers are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("topk", "batchtopk")
# variant -> (class-mean anchors, resampling strategy or None, aligned encoder)
VARIANTS: dict[str, tuple[bool, str | None, bool]] = {
    "stock": (False, None, False),
    "anthropic": (False, "anthropic", False),
    "theory": (False, "theory", False),
    "anchored": (True, None, False),
    "anchored+theory": (True, "theory", False),
    "aligned+theory": (False, "theory", True),
}
CURVE_VARIANTS = ("stock", "anthropic", "theory")  # the paper's Figure 7: no, Anthropic's, theory resampling


@dataclass(frozen=True)
class LMPreset:
    name: str
    description: str
    layer: int
    train_tokens: int
    eval_tokens: int  # held-out activations: FVU, L0, dead latents, anchors' precision and recall
    ce_sequences: int  # held-out sequences spliced for CE loss and KL
    d_sae: int
    k: int
    seeds: tuple[int, ...]
    variants: dict[str, tuple[str, ...]]  # method -> variants
    audit_words: int | None  # first-letter audit: words scored (None: every single-token word)
    context_size: int = 128
    batch_size: int = 1024
    lr: float = 1e-3
    n_anchors: int = 16
    anchor_coefficient: float = 0.1
    model_batch_size: int = 8
    dead_window_fraction: int = 16
    device: str = "cpu"

    @property
    def n_steps(self) -> int:
        return self.train_tokens // self.batch_size


ALL_TOPK = tuple(VARIANTS)
PRESETS = {
    "smoke": LMPreset(
        name="smoke",
        description="seconds: the whole path on an early layer and a few thousand tokens (CI)",
        layer=2,
        train_tokens=8192,
        eval_tokens=2048,
        ce_sequences=4,
        d_sae=512,
        k=8,
        seeds=(0,),
        variants={"topk": ("stock", "theory", "anchored+theory")},
        audit_words=300,
        context_size=64,
        batch_size=512,
        n_anchors=4,
    ),
    "cpu": LMPreset(
        name="cpu",
        description="under 30 minutes on 2 CPU cores: the middle layer, 123k training tokens, seeds 0 and 1",
        layer=15,
        # sized to the 30 minutes with margin: 163,840 tokens and 32 CE sequences took 31 min 29 s on one host
        # and projected to 32 min 40 s on a slower one; 131,072 and 32 took 29 min 18 s there (2026-12-07), of
        # which splicing 32 sequences 12 s per SAE
        train_tokens=122_880,
        eval_tokens=16_384,
        ce_sequences=16,
        d_sae=4608,
        k=32,
        seeds=(0, 1),
        variants={"topk": ALL_TOPK, "batchtopk": ("stock", "theory", "anchored+theory")},
        audit_words=1000,
    ),
    "gpu": LMPreset(
        name="gpu",
        description="a realistic budget on one GPU: 20M training tokens (needs --corpus with that much text), "
        "width 18,432, k 64, seeds 0, 1, 2",
        layer=15,
        train_tokens=20_480_000,
        eval_tokens=262_144,
        ce_sequences=256,
        d_sae=18_432,
        k=64,
        seeds=(0, 1, 2),
        variants={"topk": ALL_TOPK, "batchtopk": ALL_TOPK},
        audit_words=None,
        batch_size=4096,
        lr=3e-4,
        model_batch_size=64,
        device="cuda",
    ),
}
