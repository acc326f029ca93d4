"""Anchored SAELens architectures (paper section 4; DESIGN.md sections 3 and 5), from one factory.

``make_anchored_architecture("topk")`` subclasses SAELens's own ``TopKTrainingSAE`` and its config, adding:

* config fields ``anchor_path`` (a safetensors :class:`~sdl_anchor.AnchorSet` file),
  ``anchor_coefficient`` (lambda) with ``anchor_warm_up_steps`` (a SAELens ``TrainCoefficientConfig``),
  ``anchor_loss`` ("mse" = the paper's Eq. 22, or "cosine" = the direction form) and ``anchor_init``
  (start the anchored latents at their anchors);
* ``losses["anchor_loss"] = lambda * L_anchor`` beside the architecture's own losses (so SAELens logs it as
  ``losses/anchor_loss``) and ``metrics["anchor_cosine"]`` (logged as ``metrics/anchor_cosine``).

Anchors are held as non-persistent buffers: they never enter a state dict, so the saved inference model is
the stock SAELens architecture (``topk``, ``jumprelu``, ...) and loads without this package. Without an
``anchor_path`` (and without :meth:`set_anchors`) an anchored architecture trains exactly like its base.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAEConfig, TrainStepInput, TrainStepOutput

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.anchoring.loss import ANCHOR_LOSSES, anchor_loss, mean_anchor_cosine, self_anchor_loss

DEFAULT_ANCHOR_LOSS = "mse"

ANCHOR_CONFIG_FIELDS: list[tuple[str, Any, dataclasses.Field[Any]]] = [
    ("anchor_path", str | None, dataclasses.field(default=None)),
    ("anchor_coefficient", float, dataclasses.field(default=0.1)),
    ("anchor_warm_up_steps", int, dataclasses.field(default=0)),
    ("anchor_loss", str, dataclasses.field(default=DEFAULT_ANCHOR_LOSS)),
    ("anchor_init", bool, dataclasses.field(default=True)),
    ("self_anchor_coefficient", float, dataclasses.field(default=0.0)),
]


TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")  # activations with the sparse-backward step
SPARSE_CONFIG_FIELDS: list[tuple[str, Any, dataclasses.Field[Any]]] = [
    ("sparse_backward", bool | None, dataclasses.field(default=None)),
]


def step_mixins(activation: str) -> tuple[type, ...]:
    """The training-step mixins an ``activation`` gets: the sparse-backward step for the TopK family."""
    from sdl_anchor.integrations.sparse_step import SparseTopKStepMixin

    return (SparseTopKStepMixin,) if activation in TOPK_FAMILY else ()


def step_config_fields(activation: str) -> list[tuple[str, Any, dataclasses.Field[Any]]]:
    """The config fields of :func:`step_mixins` (``sparse_backward`` for the TopK family)."""
    return SPARSE_CONFIG_FIELDS if activation in TOPK_FAMILY else []


def camel_name(name: str) -> str:
    special = {"topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU"}
    return "".join(special.get(part, part.capitalize()) for part in name.split("_"))


def validate_anchor_fields(cfg: Any) -> None:
    if cfg.anchor_loss not in ANCHOR_LOSSES:
        raise ValueError(f"anchor_loss must be one of {ANCHOR_LOSSES}, got {cfg.anchor_loss!r}")
    if not cfg.anchor_coefficient >= 0:
        raise ValueError(f"anchor_coefficient must be non-negative, got {cfg.anchor_coefficient!r}")
    if cfg.anchor_warm_up_steps < 0:
        raise ValueError(f"anchor_warm_up_steps must be non-negative, got {cfg.anchor_warm_up_steps!r}")
    if not cfg.self_anchor_coefficient >= 0:
        raise ValueError(f"self_anchor_coefficient must be non-negative, got {cfg.self_anchor_coefficient!r}")


def check_anchors_fit(anchors: AnchorSet, d_in: int, d_out: int, d_sae: int) -> None:
    """Raise ValueError when an anchor set cannot anchor a coder of these widths."""
    if anchors.d_in != d_in:
        raise ValueError(
            f"the anchors' input directions have d_in={anchors.d_in} but the SAE's d_in is {d_in}; "
            "build the anchors at the SAE's hook"
        )
    if anchors.d_out != d_out:
        raise ValueError(
            f"the anchors' output directions have d_out={anchors.d_out} but the SAE reconstructs d_out={d_out}"
        )
    if anchors.k > d_sae:
        raise ValueError(f"{anchors.k} anchors cannot fit in d_sae={d_sae} latents; use k <= d_sae")


def derive_training_config(
    base_config: type,
    class_name: str,
    architecture: str,
    fields: list[tuple[str, Any, dataclasses.Field[Any]]],
    *,
    post_init: Any,
    get_inference_config_class: Any,
    doc: str,
    module: str,
    **attributes: Any,
) -> type:
    """A keyword-only dataclass subclass of a SAELens training config, with extra ``fields``, its own
    ``architecture()`` name, validation and inference-config mapping."""
    return dataclasses.make_dataclass(
        class_name,
        fields,
        bases=(base_config,),
        kw_only=True,
        namespace={
            "architecture": classmethod(lambda cls: architecture),
            "get_inference_config_class": get_inference_config_class,
            "__post_init__": post_init,
            "__doc__": doc,
            "__module__": module,
            **attributes,
        },
    )


def make_anchored_architecture(activation: str) -> tuple[type, type]:
    """``(AnchoredTrainingSAE, AnchoredTrainingSAEConfig)`` built on SAELens's ``activation`` classes."""
    base_sae, base_config = get_sae_training_class(activation)
    architecture = f"anchored_{activation}"
    camel = camel_name(activation)

    def get_inference_config_class(self: Any) -> type:
        inherited = base_config.get_inference_config_class
        if inherited is TrainingSAEConfig.get_inference_config_class:
            return get_sae_class(activation)[1]
        return inherited(self)

    def post_init(self: Any) -> None:
        base_config.__post_init__(self)
        validate_anchor_fields(self)

    config_class = derive_training_config(
        base_config,
        f"Anchored{camel}TrainingSAEConfig",
        architecture,
        [*ANCHOR_CONFIG_FIELDS, *step_config_fields(activation)],
        post_init=post_init,
        get_inference_config_class=get_inference_config_class,
        doc=f"SAELens {base_config.__name__} plus feature anchoring (anchor_path, anchor_coefficient, "
        "anchor_warm_up_steps, anchor_loss, anchor_init).",
        module=__name__,
    )
    sae_class = type(
        f"Anchored{camel}TrainingSAE",
        (AnchoredMixin, *step_mixins(activation), base_sae),
        {"__doc__": f"SAELens {base_sae.__name__} with the anchor loss of Eq. 22.", "__module__": __name__},
    )
    return sae_class, config_class


class AnchoredMixin:
    """Adds the anchor loss, its coefficient, the anchor-cosine metric and anchor init to a TrainingSAE."""

    cfg: Any
    W_enc: torch.nn.Parameter
    W_dec: torch.nn.Parameter
    anchor_directions_in: torch.Tensor | None
    anchor_directions_out: torch.Tensor | None

    def __init__(self, cfg: Any, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)  # type: ignore[call-arg]
        self.register_buffer("anchor_directions_in", None, persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("anchor_directions_out", None, persistent=False)  # type: ignore[attr-defined]
        if cfg.anchor_path is not None:
            path = Path(cfg.anchor_path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"the {cfg.architecture()} config names anchor_path={str(path)!r}, which does not exist; "
                    "write the anchors there with AnchorSet.save, or set anchor_path=None"
                )
            self.set_anchors(AnchorSet.load(path))

    @property
    def anchor_k(self) -> int:
        return 0 if self.anchor_directions_in is None else self.anchor_directions_in.shape[0]

    def set_anchors(self, anchors: AnchorSet) -> None:
        """Anchor the first ``anchors.k`` latents (and, with ``anchor_init``, start them there)."""
        check_anchors_fit(anchors, self.W_enc.shape[0], self.W_dec.shape[1], self.W_dec.shape[0])
        device, dtype = self.W_enc.device, self.W_enc.dtype
        self.anchor_directions_in = anchors.directions_in.to(device, dtype)
        self.anchor_directions_out = anchors.directions_out.to(device, dtype)
        if self.cfg.anchor_init:
            self.init_anchored_latents()

    @torch.no_grad()
    def init_anchored_latents(self) -> None:
        """Point ``W_enc[:, :k]`` at the input anchors and ``W_dec[:k]`` at the output anchors, keeping the
        norms SAELens initialised those latents with (unit-norm anchored latents among SAELens's 0.1-norm
        ones would win every TopK selection and starve the rest)."""
        k = self.anchor_k
        if k == 0:
            return
        enc_norm = self.W_enc[:, :k].norm(dim=0, keepdim=True)
        dec_norm = self.W_dec[:k].norm(dim=1, keepdim=True)
        self.W_enc[:, :k] = torch.nn.functional.normalize(self.anchor_directions_in, dim=1).T * enc_norm
        self.W_dec[:k] = torch.nn.functional.normalize(self.anchor_directions_out, dim=1) * dec_norm

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        coefficients = dict(super().get_coefficients())  # type: ignore[misc]
        coefficients["anchor"] = TrainCoefficientConfig(
            value=self.cfg.anchor_coefficient, warm_up_steps=self.cfg.anchor_warm_up_steps
        )
        return coefficients

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """The base step, plus ``losses["anchor_loss"] = lambda * L_anchor`` (Eq. 22) in the total loss and
        the ``anchor_cosine`` metric."""
        output = super().training_forward_pass(step_input)  # type: ignore[misc]
        if self.anchor_k:
            coefficient = step_input.coefficients.get("anchor", self.cfg.anchor_coefficient)
            output.losses["anchor_loss"] = coefficient * anchor_loss(
                self.cfg.anchor_loss,
                self.W_enc,
                self.W_dec,
                self.anchor_directions_in,
                self.anchor_directions_out,
            )
            output.loss = output.loss + output.losses["anchor_loss"]
            output.metrics["anchor_cosine"] = lambda: mean_anchor_cosine(
                self.W_enc, self.W_dec, self.anchor_directions_in, self.anchor_directions_out
            )
        if self.cfg.self_anchor_coefficient > 0:
            tie = self_anchor_loss(self.W_enc, self.W_dec, start=self.anchor_k)
            output.losses["self_anchor_loss"] = self.cfg.self_anchor_coefficient * tie
            output.loss = output.loss + output.losses["self_anchor_loss"]
            unanchored = self.cfg.d_sae - self.anchor_k
            output.metrics["self_anchor_cosine"] = lambda: 1.0 - tie.detach() / max(unanchored, 1)
        return output
