"""Run SAEBench 0.6.0's absorption eval on a model and SAEs saved by ``absorption_vs_saebench``.

Executed by the Python of a separate virtual environment that has ``sae-bench==0.6.0`` (it pins numpy<2),
never imported by sdl-anchor. SAEBench loads models with ``HookedTransformer.from_pretrained_no_processing``
(the hub); here that call returns the saved local model. SAEBench caches its probe and the model's
activations inside its own install, keyed only by "custom" and the layer, so a stale cache from another
model would be reused; the runner deletes that cache before each SAE, so SAEBench runs cold, as ours does.
Prints one JSON line per SAE: its wall time and SAEBench's headline metrics.

``python saebench_absorption_runner.py MODEL_DIR RESULTS_DIR SAE_DIR [SAE_DIR ...]``
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    import torch
    from sae_bench.evals.absorption import main as absorption
    from sae_bench.evals.absorption.common import PROBES_DIR
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_lens import SAE
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    model_dir, results_dir, *sae_dirs = (Path(a) for a in sys.argv[1:])
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    model = HookedTransformer(HookedTransformerConfig(**config), tokenizer=tokenizer)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    absorption.HookedTransformer.from_pretrained_no_processing = staticmethod(lambda *args, **kwargs: model)
    config = AbsorptionEvalConfig(model_name="toy", llm_batch_size=64, llm_dtype="float32")
    for sae_dir in sae_dirs:
        shutil.rmtree(PROBES_DIR, ignore_errors=True)
        random.seed(0)
        torch.manual_seed(0)
        sae = SAE.load_from_disk(str(sae_dir))
        sae.cfg.metadata.model_name = "toy"  # SAEBench requires a model name in the SAE's config
        out = results_dir / sae_dir.name
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        absorption.run_eval(config, [(sae_dir.name, sae)], "cpu", str(out), force_rerun=True)
        seconds = time.perf_counter() - started
        result = json.loads(next(out.glob("*.json")).read_text())
        print(json.dumps({"sae": sae_dir.name, "seconds": seconds, **result["eval_result_metrics"]["mean"]}))


if __name__ == "__main__":
    main()
