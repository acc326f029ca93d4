"""``sdl-anchor train``: SAELens's runner flags, plus sdl-anchor's architectures, hooks, resampling and output.

Every flag SAELens's ``LanguageModelSAETrainingRunner`` takes works as in SAELens (``--architecture``,
``--d_sae``, ``--k``, ``--model_name``, ``--hook_name``, ``--dataset_path``, ``--training_tokens``,
``--log_to_wandb`` ...), with sdl-anchor's architectures registered (``anchored_topk``,
``topk_transcoder``, ``topk_crosscoder`` ...) and their fields (``--anchor_path``, ``--d_out``,
``--n_sources``). sdl-anchor adds:

  --out DIR              where the trained coder (DIR/sae, SAELens's format) and DIR/train.json go
                         (or SAELens's --output_path DIR: the coder in DIR, with DIR/train.json)
  --hook-names A,B       a transcoder's input and output hooks, or a crosscoder's sources
  --layers all|0,1,...   a transcoder set: one transcoder per layer, trained from the same forward passes
                         (DIR/set: layer_<L>/ in SAELens's format and manifest.json); with a cross-layer
                         transcoder --architecture (<activation>_clt, e.g. batchtopk_clt), one CLT over
                         those layers (DIR/clt: SAELens's format and manifest.json; sdl_anchor.cli.train_clt)
  --layer-hooks IN,OUT   the hooks inside each block a set's transcoders read and write
                         (default ln2.hook_normalized,hook_mlp_out)
  --resampling S         dead-latent resampling: none (default), anthropic or theory
  --resample-every N     steps between resampling events (default: a schedule of the run's length)
  --duplicate-cosine C   theory resampling also merges a feature's co-firing copies (decoder cosine > C;
                         useful at large k, e.g. 0.8)
  --model-path DIR       a local Hugging Face checkpoint (with its tokenizer) instead of the hub
  --wandb-project P      log to W&B project P (offline, with a warning, when there are no credentials)
  --overwrite            replace DIR/train.json and DIR/sae

Training runs through :class:`~sdl_anchor.integrations.coder_runner.CoderTrainingRunner` (SAELens's
runner for SAEs, transcoders and crosscoders). The run claims DIR/sae first (a lock beside it: a second
run into the same output exits 2 and touches nothing), writes the coder into a folder of its own inside DIR
and renames it to DIR/sae only when training finished, so a failed run leaves no half-written coder.

``torchrun --nproc_per_node N -m sdl_anchor train ...`` (or ``torchrun ... $(which sdl-anchor)
train ...``) trains data-parallel: ``--train_batch_size_tokens`` is the global batch, split over the
ranks, each reading its own shard of the dataset; rank 0 alone logs and writes (train.json records
``world_size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESAMPLING = ("none", "anthropic", "theory")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdl-anchor train", add_help=False)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--hook-names", type=lambda v: [h for h in v.split(",") if h])
    parser.add_argument("--layers")
    parser.add_argument("--layer-hooks", type=lambda v: [h for h in v.split(",") if h])
    parser.add_argument("--resampling", default="none")
    parser.add_argument("--resample-every", type=int)
    parser.add_argument("--duplicate-cosine", type=float)
    parser.add_argument("--model-path", type=Path)
    parser.add_argument("--wandb-project")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _check_architecture(runner_args: list[str]) -> None:
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    name = _flag_value(runner_args, "--architecture")
    if name is not None and name not in SAE_TRAINING_CLASS_REGISTRY:
        known = ", ".join(sorted(SAE_TRAINING_CLASS_REGISTRY))
        raise ValueError(f"unknown architecture {name!r}; known architectures: {known}")


def _is_clt(runner_args: list[str]) -> bool:
    """Whether ``--architecture`` names a cross-layer transcoder (``<activation>_clt``)."""
    return (_flag_value(runner_args, "--architecture") or "").endswith("_clt")


def _destinations(ours: argparse.Namespace, runner_args: list[str]) -> tuple[Path, Path]:
    """Where the coder and train.json go: DIR/sae and DIR/train.json for ``--out DIR``, or SAELens's
    ``--output_path DIR`` and DIR/train.json."""
    output_path = _flag_value(runner_args, "--output_path")
    if ours.out is not None and output_path is not None:
        raise ValueError("give either --out (sdl-anchor) or --output_path (SAELens), not both")
    if ours.out is not None:
        folder = "sae" if ours.layers is None else "clt" if _is_clt(runner_args) else "set"
        return ours.out / folder, ours.out / "train.json"
    if not output_path:
        raise ValueError("give --out DIR (the trained coder goes to DIR/sae, its summary to DIR/train.json)")
    return Path(output_path), Path(output_path) / "train.json"


def _check_flags(
    ours: argparse.Namespace, runner_args: list[str], coder_path: Path, summary_path: Path
) -> None:
    """Contradictory flags and existing results, before anything is loaded."""
    if ours.hook_names is not None and _flag_value(runner_args, "--hook_name") is not None:
        raise ValueError("give either --hook-names or --hook_name, not both")
    if ours.layers is not None and ours.hook_names is not None:
        raise ValueError("--layers trains a set on each block's --layer-hooks; drop --hook-names")
    if ours.layer_hooks is not None and (ours.layers is None or len(ours.layer_hooks) != 2):
        raise ValueError("--layer-hooks IN,OUT (two hooks inside each block) goes with --layers")
    if ours.layers is not None:
        for flag in ("--resume_from_checkpoint", "--from_pretrained_path"):
            if _flag_value(runner_args, flag) is not None:
                raise ValueError(
                    f"{flag} is not supported with --layers: a transcoder set trains every layer from scratch "
                    "and writes no resumable checkpoint; train the set afresh, or one layer at a time with "
                    "--hook-names"
                )
        architecture = _flag_value(runner_args, "--architecture") or ""
        if not architecture.endswith("_transcoder") and not _is_clt(runner_args):
            raise ValueError(
                f"--layers trains a transcoder set or a cross-layer transcoder: give a transcoder or CLT "
                f"--architecture (e.g. topk_transcoder, batchtopk_clt), not {architecture or 'the default'}"
            )
    if _is_clt(runner_args):
        from sdl_anchor.cli.train_clt import check_clt_flags

        check_clt_flags(ours, runner_args)
    if ours.resampling not in RESAMPLING:
        raise ValueError(f"unknown --resampling {ours.resampling!r}; use one of {', '.join(RESAMPLING)}")
    if ours.resample_every is not None and ours.resampling == "none":
        raise ValueError("--resample-every needs --resampling anthropic or theory")
    if ours.duplicate_cosine is not None and ours.resampling != "theory":
        raise ValueError(
            "--duplicate-cosine merges duplicated latents in theory resampling: add --resampling theory"
        )
    log_flag = _flag_value(runner_args, "--log_to_wandb")
    if ours.wandb_project is not None and log_flag is not None and log_flag.lower() in ("false", "0", "no"):
        raise ValueError("--wandb-project asks for W&B logging but --log_to_wandb turns it off")
    if ours.wandb_project is not None and _flag_value(runner_args, "--wandb_project") is not None:
        raise ValueError("give either --wandb-project or --wandb_project, not both")
    checkpoint_path = _flag_value(runner_args, "--checkpoint_path")
    if checkpoint_path:
        checkpoints, coder = Path(checkpoint_path).resolve(), coder_path.resolve()
        if checkpoints == coder or coder in checkpoints.parents:
            raise ValueError(
                f"--checkpoint_path {checkpoint_path} lies inside the trained coder's folder {coder_path}, which "
                "the finished coder replaces (the checkpoints would be deleted); put them elsewhere, e.g. "
                f"{coder_path.parent / 'checkpoints'}"
            )
    _check_existing(ours, coder_path, summary_path)


def _check_existing(ours: argparse.Namespace, coder_path: Path, summary_path: Path) -> None:
    for path in (summary_path, coder_path):
        if path.exists() and not ours.overwrite:
            raise ValueError(f"{path} already exists; pass --overwrite or choose another --out")


def _check_sizes(sae_config: Any) -> None:
    """``--d_in``, ``--d_sae`` and ``--k`` that no SAE can have, before a model loads (SAELens builds
    configs with ``k=-1`` or ``d_sae=0``, and ``k > d_sae`` fails only after the model has loaded)."""
    for flag in ("d_in", "d_sae"):
        value = getattr(sae_config, flag, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {value!r}")
    k = getattr(sae_config, "k", None)
    if k is not None:
        if isinstance(k, bool) or not k > 0:
            raise ValueError(f"--k must be positive (how many latents each input keeps), got {k!r}")
        if k > sae_config.d_sae:
            raise ValueError(
                f"--k {k} is larger than --d_sae {sae_config.d_sae}: an SAE cannot keep more latents than it "
                "has; lower --k or raise --d_sae"
            )


def _coder_config(config: Any, hook_names: list[str] | None, output_path: Path, wandb_project: str | None):
    """SAELens's parsed runner config as a CoderRunnerConfig with our hooks, output and W&B settings."""
    from sae_lens import LanguageModelSAERunnerConfig

    from sdl_anchor.integrations.coder_runner import CoderRunnerConfig

    values = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(LanguageModelSAERunnerConfig) if f.init
    }
    values["output_path"] = str(output_path)
    if values.get("checkpoint_path") is not None:
        # SAELens's config appended its unique id to the path when the flags were parsed, and the new config
        # appends one again: keep the user's path, so that checkpoints land in PATH/<id>, not PATH/<id>/<id>
        values["checkpoint_path"] = values["checkpoint_path"].rsplit("/", 1)[0]
    if wandb_project is not None:
        values["logger"] = dataclasses.replace(config.logger, log_to_wandb=True, wandb_project=wandb_project)
    return CoderRunnerConfig(**values, hook_names=hook_names or [config.hook_name])


def _summary(runner: Any, sae: Any, seconds: float, sae_path: Path) -> dict[str, Any]:
    from sdl_anchor.anchoring.loss import mean_anchor_cosine
    from sdl_anchor.integrations.coder_hooks import coder_kind

    cfg = runner.cfg
    summary: dict[str, Any] = {
        "architecture": sae.cfg.architecture(),
        "kind": coder_kind(sae),
        "model": cfg.model_name,
        "hook_names": list(cfg.hook_names),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "training_tokens": cfg.training_tokens,
        "n_steps": cfg.training_tokens // cfg.train_batch_size_tokens,
        "wall_seconds": seconds,
        "sae_path": str(sae_path),
    }
    sae.eval()
    runner.evaluator.progress = "Evaluating the spliced coder"
    # SAELens's eval groups: {"model_performance_preservation": {...}}
    metrics = runner.evaluator(sae, None, None)
    summary["eval"] = {
        f"{group}/{name}": float(v) for group, values in metrics.items() for name, v in values.items()
    }
    if getattr(sae, "anchor_k", 0):
        cosine = mean_anchor_cosine(sae.W_enc, sae.W_dec, sae.anchor_directions_in, sae.anchor_directions_out)
        summary["anchor_cosine"] = float(cosine)
    resampling = getattr(sae.cfg.metadata, "resampling", None)
    if resampling:
        summary["resampling"] = resampling
    kernels = getattr(sae.cfg.metadata, "kernels", None)
    if kernels:  # the sparse step's kernel choice (sdl_anchor.kernel_choice)
        summary["kernels"] = kernels
    return summary


def train(argv: list[str], usage: str) -> int:
    """Run ``sdl-anchor train`` (module docstring); return the exit code."""
    import sdl_anchor  # noqa: F401  (registers the architectures)
    from sdl_anchor.integrations.compat import parse_runner_args
    from sdl_anchor.io import exclusive_claim

    ours, runner_args = _parser().parse_known_args(argv)
    if not argv or "--help" in runner_args or "-h" in runner_args:
        print(usage)
        if argv:
            print("\nSAELens's runner flags:\n")
            try:
                parse_runner_args(["--help"])
            except SystemExit:
                pass
        return 0
    _check_architecture(runner_args)
    coder_path, summary_path = _destinations(ours, runner_args)
    _check_flags(ours, runner_args, coder_path, summary_path)
    try:
        config = parse_runner_args(runner_args)
    except SystemExit:  # argparse has printed what was wrong
        raise ValueError("could not parse the training flags (see the message above)") from None
    except Exception as err:  # simple_parsing reports bad flags as argparse errors
        raise ValueError(f"could not parse the training flags: {err}") from None
    _check_sizes(config.sae)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone writes
    if not main_rank:
        return _train_claimed(ours, config, coder_path, summary_path, main_rank=False)
    coder_path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_claim(coder_path.parent / f".{coder_path.name}.lock", str(coder_path)):
        # again: a run into the same output may have finished since the first check
        _check_existing(ours, coder_path, summary_path)
        for stale in coder_path.parent.glob(f".{coder_path.name}.partial*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by runs that died: the claim says none is live
        return _train_claimed(ours, config, coder_path, summary_path, main_rank=True)


def _train_claimed(
    ours: argparse.Namespace, config: Any, coder_path: Path, summary_path: Path, main_rank: bool
) -> int:
    """Train into this run's own partial folder, rename it onto ``coder_path``, write the summary."""
    from sdl_anchor.eval.wandb_logging import ensure_wandb_mode
    from sdl_anchor.integrations.coder_runner import CoderTrainingRunner
    from sdl_anchor.integrations.loading import check_model_name, load_model, missing_hub_file, offline_hint
    from sdl_anchor.integrations.paired_trainer import TrainingInterrupted
    from sdl_anchor.io import write_json
    from sdl_anchor.resampling import ResamplingConfig

    # this run's own folder (under torchrun every rank names the same one: the launcher's pid)
    run_id = os.getppid() if "RANK" in os.environ else os.getpid()
    partial = coder_path.with_name(f".{coder_path.name}.partial-{run_id}")
    coder_config = _coder_config(config, ours.hook_names, partial, ours.wandb_project)
    if coder_config.logger.log_to_wandb:
        os.environ.setdefault("WANDB_DIR", str(summary_path.parent))
        ensure_wandb_mode()
    resampling = None
    if ours.resampling != "none":
        resampling = ResamplingConfig(
            strategy=ours.resampling,
            every_n_steps=ours.resample_every,
            duplicate_cosine=ours.duplicate_cosine,
        )
    if ours.model_path is None and config.model_class_name == "HookedTransformer":
        check_model_name(config.model_name)
    model = None if ours.model_path is None else load_model(config.model_name, ours.model_path, config.device)
    started = time.perf_counter()
    if ours.layers is not None and config.sae.architecture().endswith("_clt"):
        from sdl_anchor.cli.train_clt import train_clt

        return train_clt(ours, coder_config, model, resampling, coder_path, summary_path, partial, started)
    if ours.layers is not None:
        return _train_set(ours, coder_config, model, resampling, coder_path, summary_path, partial, started)
    try:
        runner = CoderTrainingRunner(coder_config, override_model=model, resampling=resampling)
        sae = runner.run()
        if runner.context is not None:
            torch.distributed.destroy_process_group()
    except TrainingInterrupted as stop:
        if main_rank:
            shutil.rmtree(partial, ignore_errors=True)
            print(_interrupted_message(stop), file=sys.stderr)
        return 128 + stop.signal_number  # the shell's code for a process stopped by that signal
    except BaseException as err:
        if main_rank:
            shutil.rmtree(partial, ignore_errors=True)
        missing = missing_hub_file(err) if isinstance(err, OSError) else None
        if missing is not None:
            raise FileNotFoundError(
                f"could not load {config.model_name!r}: {missing}; {offline_hint()}"
            ) from None
        raise
    if not main_rank:
        return 0
    # the trained coder is kept first: whatever fails below, it is on disk
    shutil.rmtree(coder_path, ignore_errors=True)
    partial.rename(coder_path)
    print(f"wrote {coder_path}")
    try:
        summary = _summary(runner, sae, time.perf_counter() - started, coder_path)
        summary["world_size"] = 1 if runner.context is None else runner.context.world_size
    except BaseException as err:
        print(
            f"sdl-anchor: the trained coder is saved in {coder_path}, but its summary failed "
            f"({type(err).__name__}: {err}); {summary_path} was not written",
            file=sys.stderr,
        )
        raise
    path = write_json(summary_path, summary)
    print(
        f"trained the {summary['kind']} ({summary['architecture']}, d_sae {summary['d_sae']}) in {summary['wall_seconds']:.1f} s"
    )
    for key, value in summary["eval"].items():
        print(f"  {key}: {value:.4f}")
    print(f"wrote {path}")
    return 0


def _interrupted_message(stop: Any) -> str:
    """What an interrupted run saved, and the command that resumes it."""
    import signal

    name = signal.Signals(stop.signal_number).name
    head = f"sdl-anchor: interrupted by {name} after step {stop.steps_done} of {stop.total_steps}"
    if stop.checkpoint is None:
        return f"{head}; no --checkpoint_path, so nothing was saved"
    return (
        f"{head}; saved a resumable checkpoint in {stop.checkpoint} (weights, optimizer, scheduler, "
        "dead-latent, resampler and anchoring state, and the data position). Resume with the same command plus "
        f"--resume_from_checkpoint {stop.checkpoint}. The resumed run equals the uninterrupted one in every "
        "state it restores; its batches differ slightly, because SAELens restarts the activation store at "
        "the checkpoint's dataset position with an empty, freshly shuffled buffer"
    )


@dataclasses.dataclass(frozen=True)
class LayerCoderRun:
    """What differs between the coders ``--layers`` trains (a transcoder set, a cross-layer transcoder) for
    :func:`train_layer_coder`: the runner class, the summary's ``kind`` and the key of its saved path, its
    spliced evaluation ``evaluate(runner, saved_path)``, the entries ``record(runner)`` adds to the summary
    (resampling, kernels), and the sentence printed for it: a ``str.format`` template of ``n_layers``,
    ``architecture``, ``layers`` (comma-separated), ``seconds`` and ``training_passes`` (the model forward
    passes of training, as train.json records them)."""

    runner_class: Any
    kind: str
    path_key: str
    evaluate: Callable[[Any, Path], dict[str, float]]
    record: Callable[[Any], dict[str, Any]]
    sentence: str


def train_layer_coder(
    ours: argparse.Namespace,
    config: Any,
    model: Any,
    resampling: Any,
    coder_path: Path,
    summary_path: Path,
    partial: Path,
    started: float,
    run: LayerCoderRun,
) -> int:
    """Train ``run``'s coder over ``--layers`` into ``partial``, rename it onto ``coder_path``, write the
    summary; return the exit code. Under torchrun (the set's and the CLT's runners join the process group)
    every rank trains and rank 0 alone renames, evaluates and writes the summary (with ``world_size``)."""
    from sdl_anchor.integrations.transcoder_set import DEFAULT_LAYER_HOOKS
    from sdl_anchor.io import write_json

    hooks = tuple(ours.layer_hooks or DEFAULT_LAYER_HOOKS)
    try:
        runner = run.runner_class(
            config, layers=ours.layers, hooks=hooks, override_model=model, resampling=resampling
        )
        passes = count_forward_passes(runner.model)
        trained = runner.run()
        context = getattr(runner, "context", None)  # under torchrun: rank 0 alone writes
        if context is not None:
            torch.distributed.destroy_process_group()
    except BaseException:
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if context is not None and not context.is_main:
        return 0
    seconds = time.perf_counter() - started
    shutil.rmtree(coder_path, ignore_errors=True)
    partial.rename(coder_path)  # the coder is kept first: whatever fails below, it is on disk
    print(f"wrote {coder_path}")
    summary = {
        **trained.manifest(),
        "kind": run.kind,
        "training_tokens": config.training_tokens,
        "n_steps": config.training_tokens // config.train_batch_size_tokens,
        "model_forward_passes": passes["count"],
        "wall_seconds": seconds,
        "world_size": 1 if context is None else context.world_size,
        run.path_key: str(coder_path),
        "eval": run.evaluate(runner, coder_path),
    }
    summary.update(run.record(runner))
    path = write_json(summary_path, summary)
    print(
        run.sentence.format(
            n_layers=len(trained.layers),
            architecture=summary["architecture"],
            layers=",".join(map(str, trained.layers)),
            seconds=seconds,
            training_passes=summary["model_forward_passes"],
        )
    )
    for key, value in summary["eval"].items():
        print(f"  {key}: {value:.4f}")
    print(f"wrote {path}")
    return 0


def _train_set(
    ours: argparse.Namespace,
    config: Any,
    model: Any,
    resampling: Any,
    set_path: Path,
    summary_path: Path,
    partial: Path,
    started: float,
) -> int:
    """``sdl-anchor train --layers ...``: a transcoder set, saved to ``set_path``, and its summary."""
    from sdl_anchor.integrations.transcoder_set import TranscoderSetRunner

    def kernels(runner: Any) -> dict[str, Any]:
        chosen = [coder.cfg.metadata.kernels for coder in runner.saes.values() if coder.cfg.metadata.kernels]
        return {"kernels": chosen[0]} if chosen else {}  # one shape for every layer, so one choice

    run = LayerCoderRun(
        runner_class=TranscoderSetRunner,
        kind="transcoder_set",
        path_key="set_path",
        evaluate=lambda runner, _path: runner.set_evaluator(runner.saes, None, None, None),
        record=kernels,
        sentence="trained {n_layers} {architecture} transcoders (layers {layers}) in {seconds:.1f} s from "
        "{training_passes} model forward passes",
    )
    return train_layer_coder(ours, config, model, resampling, set_path, summary_path, partial, started, run)


def count_forward_passes(model: Any) -> dict[str, int]:
    """``{"count": n}``, kept up to date with the model's forward passes (a hook on its embedding)."""
    counter = {"count": 0}

    def count(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        counter["count"] += 1
        return activation

    model.add_perma_hook("hook_embed", count)
    return counter
