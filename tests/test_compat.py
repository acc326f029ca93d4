"""Each private SAELens name sdl_anchor.integrations.compat uses still exists and behaves as relied on."""

import inspect

import pytest
import sae_lens

from sdl_anchor.integrations import compat

REASON = (
    "SAELens {version} changed {name}, which sdl_anchor/integrations/compat.py uses (checked against "
    f"SAELens {', '.join(compat.CHECKED_SAELENS_VERSIONS)}); update compat.py for the new SAELens"
)


def _fail(name):
    pytest.fail(REASON.format(version=sae_lens.__version__, name=name))


def test_parse_cfg_args_still_parses_runner_flags():
    from sae_lens.config import LanguageModelSAERunnerConfig

    try:
        config = compat.parse_runner_args(["--d_in", "16", "--d_sae", "32", "--model_name", "gpt2"])
    except (ImportError, AttributeError, TypeError):
        _fail("sae_lens.llm_sae_training_runner._parse_cfg_args")
    if not isinstance(config, LanguageModelSAERunnerConfig) or config.sae.d_sae != 32:
        _fail("sae_lens.llm_sae_training_runner._parse_cfg_args")


@pytest.mark.parametrize("name", ["_set_sae_metadata", "_compile_llm_if_needed", "_compile_sae_if_needed"])
def test_runner_set_up_steps_still_exist_and_take_no_arguments(name):
    from sae_lens import LanguageModelSAETrainingRunner

    method = getattr(LanguageModelSAETrainingRunner, name, None)
    if method is None or list(inspect.signature(method).parameters) != ["self"]:
        _fail(f"LanguageModelSAETrainingRunner.{name}")


def test_trainer_fit_still_draws_its_bar_with_the_module_tqdm():
    import sae_lens.training.sae_trainer as trainer_module

    if not hasattr(trainer_module, "tqdm") or "tqdm(" not in inspect.getsource(trainer_module.SAETrainer.fit):
        _fail("the tqdm global of sae_lens.training.sae_trainer")
    with compat.quiet_trainer():
        assert trainer_module.tqdm(total=3).disable


def test_trainer_fit_still_moves_its_bar_through_update_pbar():
    from sae_lens.training.sae_trainer import SAETrainer

    method = getattr(SAETrainer, "_update_pbar", None)
    if method is None or list(inspect.signature(method).parameters)[:3] != ["self", "step_output", "pbar"]:
        _fail("SAETrainer._update_pbar")
    if "self._update_pbar(" not in inspect.getsource(SAETrainer.fit):
        _fail("SAETrainer._update_pbar (no longer called by fit)")
