"""Feature anchoring as a concern shared by every training architecture of ours (paper section 4, Eq. 22;
DESIGN.md section 5): the config fields (:class:`AnchorConfigFields`) and the training behaviour
(:class:`AnchoredMixin`).

Config fields:

* ``anchor_path``: a safetensors :class:`~sdl_anchor.AnchorSet` file whose ``k`` directions anchor the first
  ``k`` latents (or call :meth:`AnchoredMixin.set_anchors`);
* ``anchor_coefficient`` (lambda, default 0.1) and ``anchor_warm_up_steps`` (a SAELens
  ``TrainCoefficientConfig``);
* ``anchor_loss``: ``"mse"`` (the paper's Eq. 22) or ``"cosine"`` (directions only);
* ``anchor_init``: start the anchored latents at their anchors;
* ``self_anchor_coefficient``: self-anchoring of every other latent, its encoder column tied to a direction
  of its own (:func:`~sdl_anchor.anchoring.loss.self_anchor_loss`; 0 = off), ``self_anchor_target``: its
  decoder row (``"decoder"``) or the centred mean input it fired on over the last ~50 steps (``"inputs"``,
  :class:`~sdl_anchor.anchoring.firing_inputs.FiringInputMeans`; the transcoders' choice);
  ``self_anchor_start_step``: the training step self-anchoring starts at (0: from the start; later lets the
  decoder find the features first, for the L1/L0-penalty SAEs whose training a tie to a random decoder stalls);
* ``aligned_encoder``: a hard tie instead of a loss, the aligned-encoder baseline (tied weights in the spirit
  of "Aligned Training", arXiv 2605.18629): after every optimizer step each unanchored latent's encoder column
  and decoder row are both set to the mean of their two unit directions, norms kept
  (:meth:`AnchoredMixin.align_encoder_`). It needs the encoder and decoder in one space (SAEs, crosscoders).

``losses["anchor_loss"]`` and ``losses["self_anchor_loss"]`` join the architecture's own losses (SAELens logs
them as ``losses/anchor_loss`` and ``losses/self_anchor_loss``), with the metrics ``anchor_cosine`` and
``self_anchor_cosine``. Anchors are non-persistent buffers: they never enter a state dict, so the saved
inference model is the stock SAELens architecture and loads without this package. Without anchors and with
``self_anchor_coefficient = 0`` an anchored architecture trains exactly like its base.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput, TrainStepOutput

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.anchoring.firing_inputs import FiringInputMeans
from sdl_anchor.anchoring.loss import ANCHOR_LOSSES, anchor_loss, mean_anchor_cosine, self_anchor_loss
from sdl_anchor.integrations.cross_layer_transcoder import check_positive_int

DEFAULT_ANCHOR_LOSS = "mse"
SELF_ANCHOR_TARGETS = ("decoder", "inputs")
FIRING_INPUT_DECAY = 0.98  # per step: the mean firing input of the last ~50 steps


@dataclasses.dataclass(kw_only=True)
class AnchorConfigFields:
    """The anchoring fields of every training config of ours (module docstring)."""

    anchor_path: str | None = None
    anchor_coefficient: float = 0.1
    anchor_warm_up_steps: int = 0
    anchor_loss: str = DEFAULT_ANCHOR_LOSS
    anchor_init: bool = True
    self_anchor_coefficient: float = 0.0
    self_anchor_target: str = "decoder"
    self_anchor_start_step: int = 0
    aligned_encoder: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        _check_widths(self)
        if self.anchor_loss not in ANCHOR_LOSSES:
            raise ValueError(f"anchor_loss must be one of {ANCHOR_LOSSES}, got {self.anchor_loss!r}")
        if not self.anchor_coefficient >= 0:
            raise ValueError(f"anchor_coefficient must be non-negative, got {self.anchor_coefficient!r}")
        if self.anchor_warm_up_steps < 0:
            raise ValueError(f"anchor_warm_up_steps must be non-negative, got {self.anchor_warm_up_steps!r}")
        if not self.self_anchor_coefficient >= 0:
            raise ValueError(
                f"self_anchor_coefficient must be non-negative, got {self.self_anchor_coefficient!r}"
            )
        if isinstance(self.self_anchor_start_step, bool) or not (
            isinstance(self.self_anchor_start_step, int) and self.self_anchor_start_step >= 0
        ):
            raise ValueError(
                f"self_anchor_start_step must be a non-negative integer, got {self.self_anchor_start_step!r}"
            )
        if not isinstance(self.aligned_encoder, bool):
            raise ValueError(f"aligned_encoder must be True or False, got {self.aligned_encoder!r}")
        if self.self_anchor_target not in SELF_ANCHOR_TARGETS:
            raise ValueError(
                f"self_anchor_target must be one of {SELF_ANCHOR_TARGETS}, got {self.self_anchor_target!r}"
            )


def _check_widths(cfg: Any) -> None:
    """SAELens's configs take any d_in, d_sae and k; a bad one fails later, deep in torch (a negative tensor
    size) or trains silently at L0 0. Refuse it here, naming the field. (k above d_sae is refused at the
    first training step, :func:`check_k_fits`: SAELens's default k of 100 on a narrow coder that is built,
    saved or pickled but never trained is fine.)"""
    for field in ("d_in", "d_sae", "d_out"):
        if hasattr(cfg, field):
            check_positive_int(field, getattr(cfg, field))
    k = getattr(cfg, "k", None)
    if k is None:
        return
    batch_mean = isinstance(cfg, BatchTopKTrainingSAEConfig)  # BatchTopK's k is a mean over the batch
    if isinstance(k, bool) or not isinstance(k, (int, float) if batch_mean else int) or not k > 0:
        kind = "a positive number" if batch_mean else "a positive integer"
        raise ValueError(f"k must be {kind} (latents kept per input), got {k!r}")


def check_k_fits(cfg: Any) -> None:
    """Raise ValueError when a TopK-family coder keeps more latents per input than it has (``torch.topk``
    would fail with ``selected index k out of range``)."""
    k = getattr(cfg, "k", None)
    if k is not None and k > cfg.d_sae:
        raise ValueError(
            f"k={k} latents kept per input but the coder has d_sae={cfg.d_sae}; set k at most d_sae "
            "(SAELens's default k is 100)"
        )


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


class AnchoredMixin:
    """Adds the anchor loss, its coefficient, the anchor-cosine metric and anchor init to a TrainingSAE."""

    cfg: Any
    W_enc: torch.nn.Parameter
    W_dec: torch.nn.Parameter
    anchor_directions_in: torch.Tensor | None
    anchor_directions_out: torch.Tensor | None

    anchor_indices: torch.Tensor | None = None  # the anchored features' indices, when the anchors know them
    _firing_inputs: FiringInputMeans | None = (
        None  # the self-anchoring targets of self_anchor_target="inputs"
    )

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
        if cfg.aligned_encoder:
            if getattr(cfg, "d_out", cfg.d_in) != cfg.d_in or hasattr(self, "set_training_target"):
                raise ValueError(
                    "aligned_encoder ties each encoder column to its decoder row, which needs both in one "
                    f"space; a {cfg.architecture()} reads one space and writes another. Use "
                    "self_anchor_target='inputs' for transcoders instead"
                )
            self.align_encoder_()

    @property
    def anchor_k(self) -> int:
        return 0 if self.anchor_directions_in is None else self.anchor_directions_in.shape[0]

    def set_anchors(self, anchors: AnchorSet) -> None:
        """Anchor the first ``anchors.k`` latents (and, with ``anchor_init``, start them there)."""
        check_anchors_fit(anchors, self.W_enc.shape[0], self.W_dec.shape[1], self.W_dec.shape[0])
        device, dtype = self.W_enc.device, self.W_enc.dtype
        self.anchor_directions_in = anchors.directions_in.to(device, dtype)
        self.anchor_directions_out = anchors.directions_out.to(device, dtype)
        # which ground-truth features the anchors are (LRB anchors): scores leave them out
        self.anchor_indices = None if anchors.indices is None else anchors.indices.clone()
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

    @torch.no_grad()
    def align_encoder_(self) -> None:
        """The aligned-encoder tie (``aligned_encoder``): for every latent ``j >= k`` (the anchored ones keep
        their anchors), ``u_j = normalize(W_enc[:, j] / |W_enc[:, j]| + W_dec[j] / |W_dec[j]|)``, then
        ``W_enc[:, j] = |W_enc[:, j]| u_j`` and ``W_dec[j] = |W_dec[j]| u_j``: encoder and decoder share one
        direction (the paper's Theorem 3.2 global minimum has ``W_E = W_D^T``), each keeps its own norm."""
        k = self.anchor_k
        enc, dec = self.W_enc[:, k:], self.W_dec[k:]
        enc_norm, dec_norm = enc.norm(dim=0), dec.norm(dim=1)
        tiny = torch.finfo(enc.dtype).tiny
        shared = torch.nn.functional.normalize(
            enc.T / enc_norm.clamp_min(tiny)[:, None] + dec / dec_norm.clamp_min(tiny)[:, None], dim=1
        )
        enc.copy_((shared * enc_norm[:, None]).T)
        dec.copy_(shared * dec_norm[:, None])

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        coefficients = dict(super().get_coefficients())  # type: ignore[misc]
        coefficients["anchor"] = TrainCoefficientConfig(
            value=self.cfg.anchor_coefficient, warm_up_steps=self.cfg.anchor_warm_up_steps
        )
        return coefficients

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """The base step, plus ``losses["anchor_loss"] = lambda * L_anchor`` (Eq. 22) in the total loss and
        the ``anchor_cosine`` metric."""
        check_k_fits(self.cfg)
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
            if self.anchors_to_firing_inputs:  # before the start too: the firing means warm up
                self._update_firing_inputs(step_input, output)
            if step_input.n_training_steps < self.cfg.self_anchor_start_step:
                return output
            tie = self._self_anchor_loss()
            output.losses["self_anchor_loss"] = self.cfg.self_anchor_coefficient * tie
            output.loss = output.loss + output.losses["self_anchor_loss"]
            unanchored = self.cfg.d_sae - self.anchor_k
            output.metrics["self_anchor_cosine"] = lambda: 1.0 - tie.detach() / max(unanchored, 1)
        return output

    def _update_firing_inputs(self, step_input: TrainStepInput, output: TrainStepOutput) -> None:
        """Add this step's activations to the mean firing inputs (``self_anchor_target="inputs"``)."""
        if self._firing_inputs is None:
            self._firing_inputs = FiringInputMeans(
                self.cfg.d_sae, self.W_enc.shape[0], FIRING_INPUT_DECAY, like=self.W_enc.detach()
            )
        self._firing_inputs.update(output.feature_acts, step_input.sae_in.to(self.W_enc.dtype))

    @property
    def anchors_to_firing_inputs(self) -> bool:
        """Whether self-anchoring pulls towards the mean firing inputs, training state a checkpoint must hold."""
        return self.cfg.self_anchor_coefficient > 0 and self.cfg.self_anchor_target == "inputs"

    def training_state(self) -> dict[str, torch.Tensor]:
        """Training state that lives on the coder and is no weight: the mean firing inputs of
        ``self_anchor_target="inputs"`` (empty before the first step, and for other targets). Checkpoints
        save it, so a resumed run pulls towards the targets the uninterrupted one would."""
        if self._firing_inputs is None:
            return {}
        return {f"firing_inputs.{name}": t for name, t in self._firing_inputs.state().items()}

    def load_training_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`training_state`."""
        state = {k.split(".", 1)[1]: t for k, t in tensors.items() if k.startswith("firing_inputs.")}
        if not state:
            self._firing_inputs = None
            return
        self._firing_inputs = FiringInputMeans(
            self.cfg.d_sae, self.W_enc.shape[0], FIRING_INPUT_DECAY, like=self.W_enc.detach()
        )
        self._firing_inputs.load_state(state)

    def forget_latents(self, latents: torch.Tensor) -> None:
        """``latents`` were resampled: drop the firing inputs they were tied to (a resampled latent's
        self-anchoring target starts again from what it fires on next)."""
        if self._firing_inputs is not None:
            self._firing_inputs.forget(latents.to(self._firing_inputs.weights.device))

    def _self_anchor_loss(self) -> torch.Tensor:
        """Eq. of :func:`~sdl_anchor.anchoring.loss.self_anchor_loss` towards the decoder rows or the mean
        firing inputs."""
        if self.cfg.self_anchor_target == "decoder":
            return self_anchor_loss(self.W_enc, self.W_dec, start=self.anchor_k)
        assert self._firing_inputs is not None  # updated by this step first
        directions, seen = self._firing_inputs.directions()
        return self_anchor_loss(self.W_enc, directions, start=self.anchor_k, mask=seen)
