"""Cross-layer transcoders (CLTs; Ameisen et al. 2025, "Circuit Tracing"; DESIGN.md section 3):
``<activation>_clt`` for the activations ``standard`` (ReLU + L1), ``topk``, ``batchtopk`` and ``jumprelu``.

A CLT over ``n_layers`` layers (positions ``l = 0 .. n_layers - 1`` of the layers it was trained on) has, for
each layer, an encoder reading that layer's MLP input ``x_l [d_in]`` into ``d_sae`` latents, and decoders
from those latents to the MLP output of the same and every later layer:

    a_l = act_l(x_l W_enc[l] + b_enc[l]),      y_m = sum_{l <= m} a_l W_dec[l][:, m - l] + b_dec[m].

Weights, in SAELens's orientation (rows of the decoder are latents), and the same tensors circuit-tracer's
``CrossLayerTranscoder`` holds:

* ``W_enc [n_layers, d_in, d_sae]`` (circuit-tracer's ``W_enc_{l}`` is ``W_enc[l].T``, ``[d_sae, d_model]``);
* ``b_enc [n_layers, d_sae]``, ``b_dec [n_layers, d_out]`` (``b_enc_{l}``, ``b_dec_{l}``);
* ``W_dec``: an ``nn.ParameterList`` whose ``W_dec[l]`` is ``[d_sae, n_layers - l, d_out]``, the latents of
  layer ``l`` writing to layers ``l, l + 1, ...`` (circuit-tracer's ``W_dec_{l}``, the same tensor); no
  parameter exists for a write to an earlier layer, so the decoder is block lower-triangular by construction;
* ``threshold [n_layers, d_sae]`` for a JumpReLU (circuit-tracer's ``threshold_{l}``).

``cfg.d_in``, ``cfg.d_out`` and ``cfg.d_sae`` are per layer, as for a transcoder set; the coder has
``n_latents = n_layers * d_sae`` latents in all. SAELens-facing tensors are flat, layer-major concatenations:
``encode`` maps ``[..., n_layers * d_in]`` to ``[..., n_latents]`` and ``decode`` that to
``[..., n_layers * d_out]`` (what :class:`~sdl_anchor.integrations.clt_training.CLTTrainer` feeds and
counts); ``encode_layers`` / ``decode_layers`` take and give ``[..., n_layers, width]``.

Training loss (``training_forward_pass``), each term SAELens's own formula over all layers' latents at once:
SAELens's MSE (squared error summed over every layer's output, averaged over the batch, i.e. the sum over
layers of each layer's SAELens MSE), plus the activation's own terms: ``standard``: the L1 penalty weighted by
each latent's whole decoder norm (across the layers it writes to), with SAELens's coefficient schedule;
``jumprelu``: SAELens's ``JumpReLU`` / ``Step`` straight-through functions, L0 loss (``step``, ``tanh`` or
``quadratic``) and optional pre-activation loss; ``topk``: SAELens's ``TopK`` on each layer's latents (``k``
per layer and token) and its AuxK loss (each layer's top ``d_out / 2`` dead latents reconstruct the residual
of every layer); ``batchtopk``: SAELens's ``BatchTopK`` on each layer's latents (``k * batch`` kept per
layer) with one threshold per layer, updated as SAELens does. With ``rescale_acts_by_decoder_norm`` (TopK
family) pre-activations are ranked times the latent's decoder norm and the norms are folded into the encoder on
save, as SAELens does.

Sparse-backward step (TopK and BatchTopK; :mod:`~sdl_anchor.integrations.clt_sparse_step`): the same loss terms,
gradients and threshold updates with only the encoder's forward products dense, each layer's kept latents
decoded sparsely into the layers they write. Config field ``sparse_backward`` (True, False, or None, the
default: on the CPU, where it is measured faster), decided by
:func:`~sdl_anchor.integrations.sparse_step.dense_step_reason` as for the other coders.

Saved inference architecture: ``cross_layer_transcoder`` (:class:`CrossLayerTranscoder`) with
``activation`` ``relu``, ``jumprelu`` (JumpReLU, and BatchTopK with its per-layer thresholds) or ``topk``.
Dead-latent resampling runs layer by layer (:mod:`~sdl_anchor.integrations.clt_resampling`).

Anchoring (paper section 4, Eq. 22, per layer; :class:`~sdl_anchor.anchoring.clt_anchors.CLTAnchors`): the
config's ``anchor_path`` names a CLT anchor file (or call :meth:`CLTTrainingSAE.set_anchors`) holding one
:class:`~sdl_anchor.AnchorSet` per layer; layer ``l``'s first ``k_l`` latents are tied, encoder column
``W_enc[l][:, j]`` to the anchor's input direction at layer ``l`` and decoder ``W_dec[l][j, 0]`` to its
direction at layer ``l``'s own output, or (anchors ``[k_l, (n_layers - l) * d_out]``) the whole decoder row
``W_dec[l][j]`` to its writes to layers ``l ..``. ``losses["anchor_loss"] = lambda * sum_l L_anchor^l``
(``anchor_coefficient``, ``anchor_warm_up_steps``, ``anchor_loss`` ``"mse"`` or ``"cosine"``, ``anchor_init``
as for the other coders); anchors are not weights and stay out of the saved model (:class:`~sdl_anchor.
integrations.clt_training.CLTBundle` saves them beside it). Resampling never touches anchored latents.
Not supported here: self-anchoring and the aligned encoder (the configs have no such fields), and (refused with
an error by the configs, runner and CLI) SAELens's own ``use_sparse_activations``, skip connections and
activation normalisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopK, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import (
    JumpReLU,
    JumpReLUTrainingSAEConfig,
    Step,
    _validate_jumprelu_config,
    calculate_pre_act_loss,
)
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    SAEMetadata,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopK, TopKTrainingSAEConfig, calculate_topk_aux_acts
from sae_lens.util import filter_valid_dataclass_fields
from torch import nn
from typing_extensions import override

from sdl_anchor.anchoring.clt_anchors import CLTAnchors
from sdl_anchor.anchoring.loss import ANCHOR_LOSSES, anchor_cosines
from sdl_anchor.anchoring.loss import anchor_loss as anchor_loss_fn
from sdl_anchor.integrations.clt_sparse_step import sparse_clt_step
from sdl_anchor.integrations.paired_trainer import check_training_target, take_training_target
from sdl_anchor.integrations.sparse_step import SparseBackwardConfigField, dense_step_reason

CLT_INFERENCE_ARCHITECTURE = "cross_layer_transcoder"
CLT_ACTIVATIONS = ("relu", "jumprelu", "topk")  # the saved (inference) activations


def check_positive_int(name: str, value: Any) -> None:
    """Raise ValueError unless ``value`` is an integer of at least 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_clt_fields(cfg: Any) -> None:
    """The checks every CLT config (training and inference) makes of its shared fields."""
    check_positive_int("n_layers", cfg.n_layers)
    check_positive_int("d_out", cfg.d_out)
    if cfg.apply_b_dec_to_input:
        raise ValueError("apply_b_dec_to_input must be False for a CLT: b_dec lives in the output space")
    if cfg.normalize_activations != "none":
        raise ValueError(
            "CLTs train on raw activations: normalize_activations must be 'none' "
            f"(got {cfg.normalize_activations!r}); normalise inputs and targets yourself if needed"
        )
    if cfg.reshape_activations != "none":
        raise ValueError(
            f"a CLT reads whole hooks: reshape_activations must be 'none', not {cfg.reshape_activations!r}"
        )


@dataclasses.dataclass(kw_only=True)
class CLTConfigFields:
    """The CLT's fields on a SAELens training config: ``n_layers`` (set by the runner from its layers),
    ``d_out`` (per-layer output width, default ``d_in``); ``d_in`` and ``d_sae`` are per layer."""

    n_layers: int = 1
    d_out: int | None = None
    apply_b_dec_to_input: bool = False
    anchor_path: str | None = None
    anchor_coefficient: float = 0.1
    anchor_warm_up_steps: int = 0
    anchor_loss: str = "mse"
    anchor_init: bool = True

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in  # type: ignore[attr-defined]
        _check_clt_fields(self)
        if self.anchor_loss not in ANCHOR_LOSSES:
            raise ValueError(f"anchor_loss must be one of {ANCHOR_LOSSES}, got {self.anchor_loss!r}")
        if not self.anchor_coefficient >= 0:
            raise ValueError(f"anchor_coefficient must be non-negative, got {self.anchor_coefficient!r}")
        if isinstance(self.anchor_warm_up_steps, bool) or not (
            isinstance(self.anchor_warm_up_steps, int) and self.anchor_warm_up_steps >= 0
        ):
            raise ValueError(
                f"anchor_warm_up_steps must be a non-negative integer, got {self.anchor_warm_up_steps!r}"
            )
        super().__post_init__()  # type: ignore[misc]

    def inference_activation(self) -> str:
        """The activation the saved model uses (one of :data:`CLT_ACTIVATIONS`)."""
        raise NotImplementedError

    def get_inference_config_class(self) -> type[SAEConfig]:
        return CrossLayerTranscoderConfig

    def get_inference_sae_cfg_dict(self) -> dict[str, Any]:
        """The saved :class:`CrossLayerTranscoderConfig`: the shared fields, the inference activation and,
        for TopK, ``k``."""
        names = {field.name for field in dataclasses.fields(CrossLayerTranscoderConfig)} - {"metadata"}
        result = {name: getattr(self, name) for name in names if hasattr(self, name)}
        result["activation"] = self.inference_activation()
        result["k"] = int(self.k) if result["activation"] == "topk" else None  # type: ignore[attr-defined]
        result["architecture"] = CLT_INFERENCE_ARCHITECTURE
        result["metadata"] = self._metadata_with_training_info()  # type: ignore[attr-defined]
        if result["k"] is None and getattr(self, "k", None) is not None:
            # BatchTopK saves as JumpReLU: keep its k with the training details, where the conversion to
            # per-latent thresholds (jumprelu_conversion) finds it
            result["metadata"]["training_architecture_details"]["k"] = self.k  # type: ignore[attr-defined]
        return result


class CLTWeightsMixin:
    """The CLT's parameters, pre-activations and decoder (module docstring), shared by the training and the
    inference classes."""

    cfg: Any
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.ParameterList
    b_dec: nn.Parameter
    dtype: torch.dtype
    device: torch.device

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def n_latents(self) -> int:
        """Latents over all layers: ``n_layers * d_sae``."""
        return self.cfg.n_layers * self.cfg.d_sae

    def _create_weights(self) -> None:
        L, d_in, d_sae, d_out = self.cfg.n_layers, self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
        kw = {"dtype": self.dtype, "device": self.device}
        self.W_enc = nn.Parameter(torch.zeros(L, d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, d_sae, **kw))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.zeros(d_sae, L - i, d_out, **kw)) for i in range(L)]
        )
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **kw))

    def decoder_norms(self) -> torch.Tensor:
        """``[n_layers, d_sae]``: each latent's decoder norm over every layer it writes to."""
        return torch.stack([w.flatten(1).norm(dim=1) for w in self.W_dec])

    def _decoder_scale(self) -> torch.Tensor | None:
        """The decoder norms the TopK family ranks by (``rescale_acts_by_decoder_norm``), else None."""
        if getattr(self.cfg, "rescale_acts_by_decoder_norm", False):
            return self.decoder_norms().clamp(min=1e-8)
        return None

    def split_layers(self, x: torch.Tensor, width: int, what: str) -> torch.Tensor:
        """``[..., n_layers * width] -> [..., n_layers, width]``, with an error naming the shape wanted."""
        if x.shape[-1] != self.n_layers * width:
            raise ValueError(
                f"a CLT over {self.n_layers} layers takes {what} [..., {self.n_layers} * {width}] (each layer's "
                f"activations concatenated in layer order), got {tuple(x.shape)}"
            )
        return x.unflatten(-1, (self.n_layers, width))

    def _check_stacked(self, x: torch.Tensor, width: int, what: str) -> None:
        if x.ndim < 2 or tuple(x.shape[-2:]) != (self.n_layers, width):
            raise ValueError(f"{what} must be [..., {self.n_layers}, {width}], got {tuple(x.shape)}")

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., n_layers, d_in] -> [..., n_layers, d_sae]``: ``x_l W_enc[l] + b_enc[l]``, times the decoder
        norms when the coder ranks by them."""
        hidden_pre = torch.einsum("...li,lis->...ls", x.to(self.W_enc.dtype), self.W_enc) + self.b_enc
        scale = self._decoder_scale()
        return hidden_pre if scale is None else hidden_pre * scale

    def layer_pre_activations(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """``x [..., d_in]`` of layer position ``layer`` -> its pre-activations ``[..., d_sae]``."""
        hidden_pre = x.to(self.W_enc.dtype) @ self.W_enc[layer] + self.b_enc[layer]
        scale = self._decoder_scale()
        return hidden_pre if scale is None else hidden_pre * scale[layer]

    def activate(self, hidden_pre: torch.Tensor, layers: slice) -> torch.Tensor:
        """The activation of the layers ``layers`` (a slice of layer positions) on their pre-activations
        ``[..., n, d_sae]``."""
        raise NotImplementedError

    def encode_layers(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., n_layers, d_in] -> latents [..., n_layers, d_sae]``."""
        self._check_stacked(x, self.cfg.d_in, "CLT inputs")
        return self.activate(self.pre_activations(x), slice(None))

    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer position ``layer``'s latents from its input ``x [..., d_in]`` alone (the splice's step)."""
        return self.activate(
            self.layer_pre_activations(x, layer).unsqueeze(-2), slice(layer, layer + 1)
        ).squeeze(-2)

    def decoder_input(self, acts: torch.Tensor, layers: int | slice = slice(None)) -> torch.Tensor:
        """What multiplies the decoder: the latents of ``layers`` (a position or a slice of positions),
        divided by the decoder norms they were ranked with."""
        scale = self._decoder_scale()
        return acts if scale is None else acts / scale[layers]

    def layer_contribution(self, acts: torch.Tensor, layer: int) -> torch.Tensor:
        """What layer ``layer``'s latents ``[..., d_sae]`` write to layers ``layer ..``: ``[..., n_layers - layer,
        d_out]``, no bias."""
        inputs = self.decoder_input(acts, layer)
        return torch.einsum("...s,smo->...mo", inputs, self.W_dec[layer])

    def decode_layers(self, acts: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """``latents [..., n_layers, d_sae] -> outputs [..., n_layers, d_out]``: ``y_m = sum_{l <= m} a_l
        W_dec[l][:, m - l] (+ b_dec[m])``."""
        self._check_stacked(acts, self.cfg.d_sae, "CLT latents")
        inputs = self.decoder_input(acts)
        d_out = self.cfg.d_out
        total = None
        for layer in range(self.n_layers):
            written = inputs[..., layer, :] @ self.W_dec[layer].flatten(1)  # [..., (L - layer) * d_out]
            padded = nn.functional.pad(written, (layer * d_out, 0))
            total = padded if total is None else total + padded
        out = total.unflatten(-1, (self.n_layers, d_out))  # type: ignore[union-attr]
        return out + self.b_dec if bias else out

    def _encode_flat(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_layers(self.split_layers(x, self.cfg.d_in, "inputs")).flatten(-2)

    def _decode_flat(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return self.decode_layers(self.split_layers(feature_acts, self.cfg.d_sae, "latents")).flatten(-2)

    def log_histograms(self) -> dict[str, Any]:
        return {"weights/W_dec_norms": self.decoder_norms().detach().float().flatten().cpu().numpy()}


@dataclasses.dataclass
class CrossLayerTranscoderConfig(SAEConfig):
    """The saved CLT (:class:`CrossLayerTranscoder`): per-layer ``d_in``, ``d_sae``, ``d_out``, ``n_layers``,
    ``activation`` (``relu``, ``jumprelu`` or ``topk``) and, for TopK, ``k``."""

    n_layers: int = 1
    d_out: int | None = None
    activation: str = "relu"
    k: int | None = None
    apply_b_dec_to_input: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_out is None:
            self.d_out = self.d_in
        _check_clt_fields(self)
        if self.activation not in CLT_ACTIVATIONS:
            raise ValueError(f"activation must be one of {CLT_ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "topk":
            check_positive_int("k", self.k)
            if self.k > self.d_sae:  # type: ignore[operator]
                raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")

    @override
    @classmethod
    def architecture(cls) -> str:
        return CLT_INFERENCE_ARCHITECTURE

    @override
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> CrossLayerTranscoderConfig:
        config = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            config.metadata = SAEMetadata(**config_dict["metadata"])
        return config


class CrossLayerTranscoder(CLTWeightsMixin, SAE[CrossLayerTranscoderConfig]):
    """A trained CLT (module docstring), loadable with ``SAE.load_from_disk`` once sdl_anchor is imported."""

    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        self._create_weights()
        if self.cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(
                torch.zeros(self.cfg.n_layers, self.cfg.d_sae, dtype=self.dtype, device=self.device)
            )

    @override
    def get_activation_fn(self) -> Any:
        return TopK(self.cfg.k) if self.cfg.activation == "topk" else torch.relu

    @override
    def activate(self, hidden_pre: torch.Tensor, layers: slice) -> torch.Tensor:
        if self.cfg.activation == "jumprelu":
            return hidden_pre * (hidden_pre > self.threshold[layers])
        return self.activation_fn(hidden_pre)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n_layers * d_in] -> [..., n_latents]``."""
        return self.hook_sae_acts_post(self._encode_flat(self.hook_sae_input(x)))

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """``[..., n_latents] -> [..., n_layers * d_out]``."""
        return self.hook_sae_recons(self._decode_flat(feature_acts))


class CLTTrainingSAE(CLTWeightsMixin, TrainingSAE[Any]):
    """The training side shared by every ``<activation>_clt`` (module docstring); subclasses give the
    activation, its coefficients and its sparsity losses."""

    _training_target: torch.Tensor | None = None
    anchors: CLTAnchors | None = None
    anchor_indices: torch.Tensor | None = None  # the anchored ground-truth features (scores leave them out)

    def __init__(self, cfg: Any, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        self.anchors = None
        if cfg.anchor_path is not None:
            from pathlib import Path

            if not Path(cfg.anchor_path).is_file():
                raise FileNotFoundError(
                    f"the {cfg.architecture()} config names anchor_path={cfg.anchor_path!r}, which does not "
                    "exist; write the anchors there with CLTAnchors.save, or set anchor_path=None"
                )
            self.set_anchors(CLTAnchors.load(cfg.anchor_path))

    @property
    def anchor_ks(self) -> list[int]:
        """Anchored latents of each layer (the first ``k_l`` of layer ``l``; zeros without anchors)."""
        return [0] * self.n_layers if self.anchors is None else self.anchors.ks

    def set_anchors(self, anchors: CLTAnchors) -> None:
        """Anchor each layer's first ``k_l`` latents to that layer's anchors (module docstring) and, with
        ``anchor_init``, start them there."""
        if not isinstance(anchors, CLTAnchors):
            raise ValueError(
                f"a CLT takes CLTAnchors (one AnchorSet per layer), not {type(anchors).__name__}; build them "
                "with CLTAnchors([...]) or bench.anchors(...) of an LRB 'clt' bench"
            )
        anchors.check_fits(self.n_layers, self.cfg.d_in, self.cfg.d_out, self.cfg.d_sae)
        self.anchors = anchors.to(self.W_enc.device)
        self.anchor_indices = None if anchors.indices is None else anchors.indices.clone()
        if self.cfg.anchor_init:
            self.init_anchored_latents()

    def _anchored_decoder(self, layer: int) -> torch.Tensor:
        """The decoder rows layer ``layer``'s output anchors tie: ``W_dec[l][:, 0]`` (own output) or
        ``W_dec[l]`` flattened (every layer it writes to)."""
        assert self.anchors is not None
        if self.anchors.writes_later_layers(layer, self.cfg.d_out):
            return self.W_dec[layer].flatten(1)
        return self.W_dec[layer][:, 0]

    @torch.no_grad()
    def init_anchored_latents(self) -> None:
        """Point each layer's anchored encoder columns and decoder rows (or own-output slices) at the
        anchors, keeping the norms they were initialised with (as the other coders do)."""
        if self.anchors is None:
            return
        for layer, anchors in enumerate(self.anchors.layers):
            k, enc = anchors.k, self.W_enc[layer]
            a_in = anchors.directions_in.to(enc.device, enc.dtype)
            a_out = anchors.directions_out.to(enc.device, enc.dtype)
            enc[:, :k] = nn.functional.normalize(a_in, dim=1).T * enc[:, :k].norm(dim=0, keepdim=True)
            dec = self._anchored_decoder(layer)
            dec[:k] = nn.functional.normalize(a_out, dim=1) * dec[:k].norm(dim=1, keepdim=True)

    def anchor_loss(self) -> torch.Tensor:
        """``sum_l L_anchor^l``: Eq. 22 (``anchor_loss="mse"``) or its direction form per layer, each on that
        layer's encoder ``W_enc[l]`` and its anchored decoder rows."""
        if self.anchors is None:
            raise ValueError("this CLT has no anchors; set them with set_anchors or the config's anchor_path")
        total = self.W_enc.new_zeros(())
        for layer, anchors in enumerate(self.anchors.layers):
            total = total + anchor_loss_fn(
                self.cfg.anchor_loss, self.W_enc[layer], self._anchored_decoder(layer),
                anchors.directions_in, anchors.directions_out,
            )  # fmt: skip
        return total

    @torch.no_grad()
    def anchor_cosine(self) -> torch.Tensor:
        """Mean over layers, anchors and both sides of the cosine between anchored weights and anchors."""
        assert self.anchors is not None
        cosines = []
        for layer, anchors in enumerate(self.anchors.layers):
            enc, dec = anchor_cosines(
                self.W_enc[layer],
                self._anchored_decoder(layer),
                anchors.directions_in,
                anchors.directions_out,
            )
            cosines += [enc, dec]
        return torch.cat(cosines).mean()

    def _anchor_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "anchor": TrainCoefficientConfig(
                value=self.cfg.anchor_coefficient, warm_up_steps=self.cfg.anchor_warm_up_steps
            )
        }

    @override
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Each latent's encoder column and its decoder row (over every layer it writes to) start as uniform
        random directions, of norm ``decoder_init_norm`` (SAELens's heuristic) or Kaiming-uniform scale."""
        self._create_weights()
        norm = self.cfg.decoder_init_norm
        for layer in range(self.cfg.n_layers):
            nn.init.kaiming_uniform_(self.W_enc.data[layer])
            nn.init.kaiming_uniform_(self.W_dec[layer].data.view(self.cfg.d_sae, -1))
            if norm is not None:
                self.W_enc.data[layer] *= norm / self.W_enc.data[layer].norm(dim=0, keepdim=True).clamp(
                    min=1e-12
                )
                flat = self.W_dec[layer].data.view(self.cfg.d_sae, -1)
                flat *= norm / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., n_layers * d_in] -> (latents, pre-activations)``, both ``[..., n_latents]``."""
        stacked = self.split_layers(self.hook_sae_input(x.to(self.dtype)), self.cfg.d_in, "inputs")
        hidden_pre = self.hook_sae_acts_pre(self.pre_activations(stacked))
        feature_acts = self.hook_sae_acts_post(self.activate(hidden_pre, slice(None)))
        return feature_acts.flatten(-2), hidden_pre.flatten(-2)

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """``[..., n_latents] -> [..., n_layers * d_out]``."""
        return self.hook_sae_recons(self._decode_flat(feature_acts))

    def set_training_target(self, target: torch.Tensor) -> None:
        """The next step's target, every layer's MLP output concatenated: ``[batch, n_layers * d_out]``
        (set by the trainer with each ``(x_in, x_out)`` batch)."""
        expected = f"CLT targets must be [batch, {self.n_layers} * {self.cfg.d_out}]"
        self._training_target = check_training_target(target, self.n_layers * self.cfg.d_out, expected)

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """SAELens's step structure: ``mse_loss`` (SAELens's ``mse_loss`` summed over every layer's output,
        mean over the batch) plus :meth:`calculate_aux_loss`, against the target set for this step."""
        target = self.take_training_target(step_input)
        feature_acts, hidden_pre = self.encode_with_hidden_pre(step_input.sae_in)
        sae_out = self.decode(feature_acts)
        losses = {"mse_loss": self.mse_loss_fn(sae_out, target).sum(dim=-1).mean()}
        losses.update(self.calculate_aux_loss(dataclasses.replace(step_input, sae_in=target), feature_acts,
                                              hidden_pre, sae_out))  # fmt: skip
        return self.step_output(step_input, target, sae_out, feature_acts, hidden_pre, losses)

    def take_training_target(self, step_input: TrainStepInput) -> torch.Tensor:
        """The target set for this step (cleared: each step needs its own), on the input's device."""
        target = take_training_target(
            self,
            step_input,
            "a CLT trains on (inputs, targets) pairs of every layer: train it with CrossLayerTranscoderRunner "
            "(sdl-anchor train --architecture ..._clt --layers ...)",
        )
        return target.to(step_input.sae_in.device, self.dtype)

    def step_output(
        self,
        step_input: TrainStepInput,
        target: torch.Tensor,
        sae_out: torch.Tensor,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        losses: dict[str, torch.Tensor],
    ) -> TrainStepOutput:
        """The step's output from its reconstruction and losses: adds the anchor loss, and the metrics (each
        layer's MSE, the anchors' cosine)."""
        if self.anchors is not None:
            coefficient = step_input.coefficients.get("anchor", self.cfg.anchor_coefficient)
            losses["anchor_loss"] = coefficient * self.anchor_loss()
        output = TrainStepOutput(
            sae_in=target,  # SAELens logs explained variance of sae_out against this
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=sum(losses.values()),  # type: ignore[arg-type]
            losses=losses,
        )
        if self.anchors is not None:
            output.metrics["anchor_cosine"] = self.anchor_cosine
        residual = (sae_out - target).detach().unflatten(-1, (self.n_layers, self.cfg.d_out))
        for layer in range(self.n_layers):
            output.metrics[f"mse_layer_{layer}"] = lambda layer=layer: (
                residual[:, layer].pow(2).sum(-1).mean()
            )
        return output

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The activation's own sparsity / auxiliary losses (``step_input.sae_in`` is the target here)."""
        return {}

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("a CLT's decoder norms are folded on save (rescale_acts_by_decoder_norm)")


class StandardCLTTrainingSAE(CLTTrainingSAE):
    """ReLU latents with SAELens's L1 penalty, each latent weighted by its whole decoder norm."""

    cfg: StandardCLTTrainingSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Any:
        return torch.relu

    @override
    def activate(self, hidden_pre: torch.Tensor, layers: slice) -> torch.Tensor:
        return self.activation_fn(hidden_pre)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "l1": TrainCoefficientConfig(
                value=self.cfg.l1_coefficient, warm_up_steps=self.cfg.l1_warm_up_steps
            ),
            **self._anchor_coefficients(),
        }

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        weighted = feature_acts * self.decoder_norms().flatten()
        sparsity = weighted.norm(p=self.cfg.lp_norm, dim=-1)
        return {"l1_loss": (step_input.coefficients["l1"] * sparsity).mean()}


class TopKCLTTrainingSAE(CLTTrainingSAE):
    """SAELens's ``TopK`` on each layer's latents (``k`` per layer and token), with SAELens's AuxK loss."""

    cfg: TopKCLTTrainingSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Any:
        return TopK(self.cfg.k)

    def check_k(self) -> None:
        if self.cfg.k > self.cfg.d_sae:
            raise ValueError(
                f"k={self.cfg.k} is larger than d_sae={self.cfg.d_sae}: a CLT keeps k latents of each layer's "
                f"{self.cfg.d_sae}; lower k or raise d_sae"
            )

    @override
    def activate(self, hidden_pre: torch.Tensor, layers: slice) -> torch.Tensor:
        self.check_k()
        return self.activation_fn(hidden_pre)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return self._anchor_coefficients()

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """The sparse-backward step (:mod:`~sdl_anchor.integrations.clt_sparse_step`) unless
        ``dense_step_reason`` names a reason for the dense one."""
        if dense_step_reason(self) is not None:
            return super().training_forward_pass(step_input)
        target = self.take_training_target(step_input)
        sae_out, feature_acts, hidden_pre, losses = sparse_clt_step(self, step_input, target)
        return self.step_output(step_input, target, sae_out, feature_acts, hidden_pre, losses)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """SAELens's AuxK loss (``calculate_topk_aux_acts``), per layer: each layer's top ``d_out / 2`` dead
        latents, decoded through the CLT (no bias), reconstruct the residual of every layer."""
        dead = step_input.dead_neuron_mask
        if dead is None or (num_dead := int(dead.sum())) == 0:
            return {"auxiliary_reconstruction_loss": sae_out.new_tensor(0.0)}
        dead = dead.reshape(self.n_layers, self.cfg.d_sae).bool()
        residual = (step_input.sae_in - sae_out).detach()
        k_aux = min(self.cfg.d_out // 2, self.cfg.d_sae)
        scale = min(num_dead / (k_aux * self.n_layers), 1.0)
        pre = hidden_pre.unflatten(-1, (self.n_layers, self.cfg.d_sae))
        auxk_acts = calculate_topk_aux_acts(k_aux=k_aux, hidden_pre=pre, dead_neuron_mask=dead)
        auxk_acts = torch.where(dead, auxk_acts, 0.0)  # a layer with fewer dead latents than k_aux
        recons = self.decode_layers(auxk_acts, bias=False).flatten(-2)
        loss = (recons - residual).pow(2).sum(dim=-1).mean()
        return {"auxiliary_reconstruction_loss": self.cfg.aux_loss_coefficient * scale * loss}

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """Fold the decoder norms into the encoder (SAELens's ``_fold_norm_topk``, per layer)."""
        super().process_state_dict_for_saving_inference(state_dict)
        if not self.cfg.rescale_acts_by_decoder_norm:
            return
        norms = self.decoder_norms().detach().clamp(min=1e-8)
        state_dict["W_enc"] = state_dict["W_enc"] * norms[:, None, :]
        state_dict["b_enc"] = state_dict["b_enc"] * norms
        for layer in range(self.n_layers):
            state_dict[f"W_dec.{layer}"] = state_dict[f"W_dec.{layer}"] / norms[layer][:, None, None]


class BatchTopKCLTTrainingSAE(TopKCLTTrainingSAE):
    """SAELens's ``BatchTopK`` on each layer's latents (``k`` per token on average, per layer), one threshold per
    layer; saved as a JumpReLU CLT with those thresholds."""

    cfg: BatchTopKCLTTrainingSAEConfig  # type: ignore[assignment]
    topk_threshold: torch.Tensor

    def __init__(self, cfg: BatchTopKCLTTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        self.register_buffer(
            "topk_threshold", torch.zeros(cfg.n_layers, dtype=torch.double, device=self.device)
        )

    @override
    def get_activation_fn(self) -> Any:
        return BatchTopK(self.cfg.k)

    @override
    def activate(self, hidden_pre: torch.Tensor, layers: slice) -> torch.Tensor:
        self.check_k()
        return torch.stack(
            [self.activation_fn(hidden_pre[..., i, :]) for i in range(hidden_pre.shape[-2])], dim=-2
        )

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        self.update_topk_threshold(output.feature_acts)
        output.metrics["topk_threshold"] = lambda: self.topk_threshold.mean()
        return output

    @torch.no_grad()
    def update_topk_threshold(self, feature_acts: torch.Tensor) -> None:
        """SAELens's update (an EMA of the smallest positive activation), per layer; ``feature_acts``
        ``[batch, n_latents]`` dense, or sparse COO as the sparse step gives it."""
        lr = self.cfg.topk_threshold_lr
        if feature_acts.is_sparse:
            acts = feature_acts.coalesce()
            values = acts.values()
            positive = values > 0
            layer = acts.indices()[-1][positive] // self.cfg.d_sae
            smallest = values.new_full((self.n_layers,), torch.inf)
            smallest = smallest.scatter_reduce(0, layer, values[positive], "amin")
            fired = torch.zeros(self.n_layers, dtype=torch.bool, device=values.device)
            fired[layer] = True
        else:
            acts = feature_acts.unflatten(-1, (self.n_layers, self.cfg.d_sae)).transpose(0, 1).flatten(1)
            positive = acts > 0
            smallest = torch.where(positive, acts, torch.inf).amin(dim=1)
            fired = positive.any(dim=1)
        smallest = smallest.to(self.topk_threshold.dtype)
        updated = (1 - lr) * self.topk_threshold + lr * smallest
        self.topk_threshold = torch.where(fired, updated, self.topk_threshold)

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        thresholds = state_dict.pop("topk_threshold")
        state_dict["threshold"] = (thresholds[:, None] * torch.ones_like(self.b_enc)).to(self.b_enc.dtype)


class JumpReLUCLTTrainingSAE(CLTTrainingSAE):
    """SAELens's JumpReLU (``JumpReLU`` / ``Step`` straight-through functions) with a threshold per latent,
    and its L0 and pre-activation losses over every layer's latents."""

    cfg: JumpReLUCLTTrainingSAEConfig  # type: ignore[assignment]
    threshold: nn.Parameter

    def __init__(self, cfg: JumpReLUCLTTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        _validate_jumprelu_config(cfg)
        self.bandwidth = cfg.jumprelu_bandwidth
        self.threshold = nn.Parameter(
            torch.full((cfg.n_layers, cfg.d_sae), cfg.jumprelu_init_threshold, dtype=torch.float32,
                       device=self.device)
        )  # fmt: skip

    @override
    def get_activation_fn(self) -> Any:
        return torch.relu  # unused: activate applies SAELens's JumpReLU function

    @override
    def activate(self, hidden_pre: torch.Tensor, layers: slice) -> torch.Tensor:
        threshold = self.threshold[layers].to(hidden_pre.dtype)
        return JumpReLU.apply(hidden_pre, threshold, self.bandwidth, self.cfg.jumprelu_ste_to_input)  # type: ignore[return-value]

    @override
    def _apply(self, *args: Any, **kwargs: Any) -> JumpReLUCLTTrainingSAE:
        out = super()._apply(*args, **kwargs)
        threshold = self._parameters.get("threshold")
        if threshold is not None and threshold.dtype != torch.float32:
            threshold.data = threshold.data.float()  # as SAELens: Adam's small steps survive in float32
        return out

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        with torch.no_grad():
            self.threshold.data.clamp_(
                min=0.0
            )  # as SAELens: a negative threshold passes negative pre-activations
        return super().training_forward_pass(step_input)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "l0": TrainCoefficientConfig(
                value=self.cfg.l0_coefficient, warm_up_steps=self.cfg.l0_warm_up_steps
            ),
            **self._anchor_coefficients(),
        }

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """SAELens's ``JumpReLUTrainingSAE.calculate_aux_loss`` over the flat ``[batch, n_latents]`` latents."""
        threshold = self.threshold.to(hidden_pre.dtype).flatten()
        norms = self.decoder_norms().flatten()
        mode = self.cfg.jumprelu_sparsity_loss_mode
        if mode in ("step", "quadratic"):
            l0 = Step.apply(hidden_pre, threshold, self.bandwidth, self.cfg.jumprelu_ste_to_input).sum(dim=-1)  # type: ignore[union-attr]
            if mode == "quadratic":
                per_item = 2 / self.cfg.target_l0 * (l0 - self.cfg.target_l0) ** 2  # type: ignore[operator]
            else:
                per_item = l0
        elif mode == "tanh":
            per_item = torch.tanh(self.cfg.jumprelu_tanh_scale * feature_acts * norms).sum(dim=-1)
        else:
            raise ValueError(f"Invalid sparsity loss mode: {mode}")
        losses = {"l0_loss": (step_input.coefficients["l0"] * per_item).mean()}
        if self.cfg.pre_act_loss_coefficient is not None:
            losses["pre_act_loss"] = calculate_pre_act_loss(
                self.cfg.pre_act_loss_coefficient, threshold, hidden_pre, step_input.dead_neuron_mask, norms
            )
        return losses


def _check_topk_fields(cfg: Any) -> None:
    """The TopK family's CLT checks (``k <= d_sae`` is checked where the latents are chosen, and by the CLI
    before a model loads: SAELens's default ``k`` exceeds small ``d_sae``)."""
    if cfg.use_sparse_activations:
        raise ValueError("use_sparse_activations is not supported for CLTs; set it to False")
    if isinstance(cfg.k, bool) or not cfg.k > 0:
        raise ValueError(f"k must be positive (latents kept per layer and token), got {cfg.k!r}")


@dataclasses.dataclass(kw_only=True)
class StandardCLTTrainingSAEConfig(CLTConfigFields, StandardTrainingSAEConfig):
    """SAELens's ``StandardTrainingSAEConfig`` (ReLU + L1) as a CLT; saves as ``cross_layer_transcoder``
    with ``activation: relu``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "standard_clt"

    @override
    def inference_activation(self) -> str:
        return "relu"


@dataclasses.dataclass(kw_only=True)
class TopKCLTTrainingSAEConfig(CLTConfigFields, SparseBackwardConfigField, TopKTrainingSAEConfig):
    """SAELens's ``TopKTrainingSAEConfig`` as a CLT (``k`` per layer and token), with ``sparse_backward``;
    saves with ``activation: topk``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_clt"

    @override
    def inference_activation(self) -> str:
        return "topk"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_topk_fields(self)


@dataclasses.dataclass(kw_only=True)
class BatchTopKCLTTrainingSAEConfig(CLTConfigFields, SparseBackwardConfigField, BatchTopKTrainingSAEConfig):
    """SAELens's ``BatchTopKTrainingSAEConfig`` as a CLT (``k`` per layer, on average per token), with
    ``sparse_backward``; saves with ``activation: jumprelu`` and each layer's threshold."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "batchtopk_clt"

    @override
    def inference_activation(self) -> str:
        return "jumprelu"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_topk_fields(self)


@dataclasses.dataclass(kw_only=True)
class JumpReLUCLTTrainingSAEConfig(CLTConfigFields, JumpReLUTrainingSAEConfig):
    """SAELens's ``JumpReLUTrainingSAEConfig`` as a CLT; saves with ``activation: jumprelu``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "jumprelu_clt"

    @override
    def inference_activation(self) -> str:
        return "jumprelu"


@torch.no_grad()
def circuit_tracer_tensors(coder: CrossLayerTranscoder) -> dict[str, dict[str, torch.Tensor]]:
    """A saved CLT's tensors as circuit-tracer's ``load_clt`` reads them, by file name: for each layer
    position ``l``, ``W_enc_{l}.safetensors`` with ``W_enc_{l}`` (``W_enc[l].T``, ``[d_sae, d_model]``),
    ``b_enc_{l}``, ``b_dec_{l}`` and, for a JumpReLU, ``threshold_{l}`` (``[d_sae]``), and
    ``W_dec_{l}.safetensors`` with ``W_dec_{l}`` (``W_dec[l]``, ``[d_sae, n_layers - l, d_model]``). Only the
    ReLU and JumpReLU activations have a circuit-tracer equivalent (convert a TopK CLT first)."""
    if not isinstance(coder, CrossLayerTranscoder):
        raise ValueError(
            f"give the saved CLT (CrossLayerTranscoder, e.g. CLTBundle.load(folder).coder), not {type(coder).__name__}"
        )
    if coder.cfg.activation not in ("relu", "jumprelu"):
        raise ValueError(
            f"circuit-tracer loads ReLU and JumpReLU CLTs only; this one uses {coder.cfg.activation!r}: convert it "
            "to a JumpReLU CLT first"
        )
    files: dict[str, dict[str, torch.Tensor]] = {}
    for layer in range(coder.n_layers):
        encoder = {
            f"W_enc_{layer}": coder.W_enc[layer].T.contiguous(),
            f"b_enc_{layer}": coder.b_enc[layer].contiguous(),
            f"b_dec_{layer}": coder.b_dec[layer].contiguous(),
        }
        if coder.cfg.activation == "jumprelu":
            encoder[f"threshold_{layer}"] = coder.threshold[layer].contiguous()
        files[f"W_enc_{layer}.safetensors"] = {k: v.detach().cpu() for k, v in encoder.items()}
        files[f"W_dec_{layer}.safetensors"] = {
            f"W_dec_{layer}": coder.W_dec[layer].detach().cpu().contiguous()
        }
    return files


CLT_ARCHITECTURES: dict[str, tuple[type, type]] = {
    "standard_clt": (StandardCLTTrainingSAE, StandardCLTTrainingSAEConfig),
    "topk_clt": (TopKCLTTrainingSAE, TopKCLTTrainingSAEConfig),
    "batchtopk_clt": (BatchTopKCLTTrainingSAE, BatchTopKCLTTrainingSAEConfig),
    "jumprelu_clt": (JumpReLUCLTTrainingSAE, JumpReLUCLTTrainingSAEConfig),
}
CLT_INFERENCE_ARCHITECTURES: dict[str, tuple[type, type]] = {
    CLT_INFERENCE_ARCHITECTURE: (CrossLayerTranscoder, CrossLayerTranscoderConfig),
}
