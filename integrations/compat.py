"""Every use of a private SAELens name, in one place (checked against SAELens 6.54.12).

SAELens has no public API for these six things, so we reach into its internals here and nowhere else.
``tests/test_compat.py`` checks each name against the installed SAELens and fails with a message naming
the name and this module when SAELens changes it:

* ``sae_lens.llm_sae_training_runner._parse_cfg_args``: SAELens's own command-line parser for its runner
  config (``sdl-anchor train`` takes every SAELens flag through it);
* ``LanguageModelSAETrainingRunner._set_sae_metadata``, ``._compile_llm_if_needed`` and
  ``._compile_sae_if_needed``: the runner's set-up steps, which
  :class:`~sdl_anchor.integrations.coder_runner.CoderTrainingRunner` repeats around its own
  multi-hook activation store;
* the ``tqdm`` global of ``sae_lens.training.sae_trainer``: ``SAETrainer.fit`` always draws a progress bar,
  which :func:`quiet_trainer` turns off for runs nested in a bench's own progress bar;
* ``SAETrainer._update_pbar(step_output, pbar, update_interval)``, which ``fit`` calls after every step:
  :class:`~sdl_anchor.integrations.paired_trainer.PairedSAETrainer` overrides it to move the bar every step;
* the ``load_model`` and ``tqdm`` globals of ``sae_lens.cache_activations_runner``: ``CacheActivationsRunner``
  loads its model by name, so :func:`cache_activations_with` hands it an already loaded model (a local
  checkpoint booted through ``TransformerBridge``) for the length of its construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any
from unittest.mock import patch

CHECKED_SAELENS_VERSIONS = ("6.54.12",)


def parse_runner_args(args: list[str]) -> Any:
    """A ``LanguageModelSAERunnerConfig`` from SAELens's runner flags (SAELens's own parser)."""
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    return _parse_cfg_args(args)


def set_sae_metadata(runner: Any) -> None:
    """The model name, hook and context the runner records in its SAE's metadata (SAELens's step)."""
    runner._set_sae_metadata()


def compile_llm_if_needed(runner: Any) -> None:
    """``torch.compile`` the runner's model when its config asks for it (SAELens's step)."""
    runner._compile_llm_if_needed()


def compile_sae_if_needed(runner: Any) -> None:
    """``torch.compile`` the runner's SAE when its config asks for it (SAELens's step)."""
    runner._compile_sae_if_needed()


@contextlib.contextmanager
def quiet_trainer() -> Iterator[None]:
    """Inside the block, ``SAETrainer.fit`` draws no progress bar."""
    import sae_lens.training.sae_trainer as trainer_module
    from tqdm.auto import tqdm

    with patch.object(trainer_module, "tqdm", partial(tqdm, disable=True)):
        yield


def cache_activations_with(model: Any, config: Any, dataset: Any, progress: bool = True) -> Any:
    """Run SAELens's ``CacheActivationsRunner(config, override_dataset=dataset)`` on ``model`` (already
    loaded) instead of the model the config names; returns the cached dataset."""
    import sae_lens.cache_activations_runner as runner_module
    from sae_lens import CacheActivationsRunner
    from tqdm.auto import tqdm

    with patch.object(runner_module, "load_model", lambda **kwargs: model):
        runner = CacheActivationsRunner(config, override_dataset=dataset)
    with (
        contextlib.nullcontext()
        if progress
        else patch.object(runner_module, "tqdm", partial(tqdm, disable=True))
    ):
        return runner.run()
