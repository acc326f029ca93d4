"""Loading the models and SAEs users name: SAELens releases, TransformerLens models, local checkpoints.

``load_sae`` reads a saved SAELens folder or ``SAE.from_pretrained(release, sae_id)``; ``load_model`` loads a
model the one way training does (SAELens's ``load_model``: ``HookedTransformer.from_pretrained_no_processing``
with the run's ``model_from_pretrained_kwargs``), or boots a local Hugging Face checkpoint through
TransformerLens's ``TransformerBridge`` as ``train --model-path`` does, so an audit, class-mean anchors and
training read the same activations. ``model_kwargs_of(sae)`` gives the kwargs an SAE records. Both turn
the failures a user can fix (a release or id SAELens does not list, a model
name TransformerLens does not know, a file missing from an offline hub cache) into a ValueError or
FileNotFoundError that says what is missing and how to fix it, instead of a traceback from deep inside.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def missing_hub_file(err: BaseException) -> str | None:
    """The file an offline hub lookup could not find, named from the exception chain (None if it is not
    such an error)."""
    seen = err
    while seen is not None:
        name = type(seen).__name__
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "EntryNotFoundError"):
            text = str(seen)
            for marker in ("Cannot reach ", "/resolve/"):
                if marker in text:
                    return text.split(marker, 1)[1].split(":", 1)[0].split(" ", 1)[0]
            return text.splitlines()[0]
        if "couldn't connect to 'https://huggingface.co'" in str(
            seen
        ) or "does not appear to have a file" in str(seen):
            return str(seen).splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


def offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return (
            f"HF_HUB_OFFLINE is set, so only the hub cache under HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')} "
            "is read: download it there first (online), or unset HF_HUB_OFFLINE"
        )
    return "check the network, or download it into the Hugging Face cache first"


def load_sae(sae_path: str | Path | None, release: str | None, sae_id: str | None, device: str) -> Any:
    """A SAELens inference SAE from a saved folder, or from a release and id (the hub, or its cache)."""
    from sae_lens import SAE

    if sae_path is not None:
        folder = Path(sae_path)
        if not folder.is_dir():
            raise ValueError(f"--sae-path {folder} is not a folder")
        if not (folder / "cfg.json").exists():
            raise ValueError(
                f"{folder} has no cfg.json, so it is not a saved SAELens SAE (save one with sae.save_model(path))"
            )
        return SAE.load_from_disk(str(folder), device=device)
    if release is None or sae_id is None:
        raise ValueError("give --sae-path DIR, or both --release and --sae-id")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = sorted(name for name in directory if release.split("-")[0] in name)[:8]
        raise ValueError(
            f"SAELens lists no release {release!r}"
            + (f"; similar releases: {', '.join(close)}" if close else "")
            + " (the full list: sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory())"
        )
    if sae_id not in directory[release].saes_map:
        ids = list(directory[release].saes_map)
        raise ValueError(
            f"release {release!r} has no SAE {sae_id!r}; its ids are {', '.join(ids[:12])}"
            + (f" and {len(ids) - 12} more" if len(ids) > 12 else "")
        )
    try:
        loaded = SAE.from_pretrained(release, sae_id, device=device)
    except OSError as err:
        missing = missing_hub_file(err)
        if missing is None:
            raise
        raise FileNotFoundError(
            f"could not load SAE {sae_id!r} of release {release!r}: {missing} is not available; {offline_hint()}"
        ) from None
    return loaded[0] if isinstance(loaded, tuple) else loaded


def check_model_name(name: str) -> None:
    """Raise ValueError unless TransformerLens knows ``name`` (an official model name or alias)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"TransformerLens knows no model {name!r}; give one of its official names (e.g. gpt2, "
            "EleutherAI/pythia-70m), or a local Hugging Face checkpoint with --model-path"
        ) from None


def check_checkpoint_folder(model_path: str | Path) -> None:
    """Raise ValueError unless ``model_path`` is a Hugging Face checkpoint folder (it has a config.json)."""
    if not (Path(model_path) / "config.json").exists():
        raise ValueError(
            f"--model-path {model_path} has no config.json; give a Hugging Face checkpoint folder"
        )


TRAINING_MODEL_KWARGS: dict[str, Any] = {"center_writing_weights": False}
"""What SAELens's runner config passes a HookedTransformer when the user names no kwargs (its
``LanguageModelSAERunnerConfig.__post_init__``); with ``from_pretrained_no_processing`` it changes nothing."""


def model_kwargs_of(sae: Any) -> dict[str, Any]:
    """The ``model_from_pretrained_kwargs`` an SAE was trained with (``cfg.metadata``), as SAELens's own
    evaluator reads them; training's default where the SAE records none."""
    metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
    recorded = getattr(metadata, "model_from_pretrained_kwargs", None)
    return dict(recorded) if recorded else dict(TRAINING_MODEL_KWARGS)


def load_model(
    name: str,
    model_path: str | Path | None,
    device: str,
    model_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A TransformerLens model as training loads it: ``name`` from the hub (or its cache) through SAELens's
    ``load_model`` (no weight processing, then ``model_kwargs``, default :data:`TRAINING_MODEL_KWARGS`), or
    the local checkpoint at ``model_path`` through ``TransformerBridge``."""
    if model_path is not None:
        check_checkpoint_folder(model_path)
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(str(model_path), device=device)
    from sae_lens.load_model import load_model as sae_lens_load_model

    check_model_name(name)
    kwargs = dict(TRAINING_MODEL_KWARGS if model_kwargs is None else model_kwargs)
    try:
        return sae_lens_load_model(
            "HookedTransformer", name, device=device, model_from_pretrained_kwargs=kwargs
        )
    except OSError as err:
        missing = missing_hub_file(err)
        if missing is None:
            raise
        raise FileNotFoundError(f"could not load model {name!r}: {missing}; {offline_hint()}") from None
    except TypeError as err:
        raise ValueError(f"model kwargs {kwargs} are not accepted by HookedTransformer: {err}") from None
