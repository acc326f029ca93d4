"""Run inside circuit-tracer's own virtual environment (it pins transformers<=4.57.3), by
:mod:`sdl_anchor.eval.circuit_tracer_check`; imports nothing of sdl_anchor.

``python circuit_tracer_runner.py EXPORT_DIR TOKENS_JSON OUT_DIR``: loads the exported transcoder set (or
cross-layer transcoder) with circuit-tracer's ``ReplacementModel.from_pretrained("gpt2", EXPORT_DIR)`` (the hub
cache named by HF_HOME), computes the logits of the model with every MLP output replaced by circuit-tracer's
own transcoder of that layer (for a CLT: the sum of what every layer up to it writes there, each from its own
input in that pass; ``OUT_DIR/replacement_logits.safetensors``), and an attribution graph of the prompt
(``OUT_DIR/graph.pt``); prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    import torch
    from circuit_tracer import ReplacementModel, attribute
    from safetensors.torch import save_file

    export_dir, tokens_file, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), Path(sys.argv[3])
    tokens = torch.tensor(json.loads(tokens_file.read_text()))[None]
    started = time.perf_counter()
    model = ReplacementModel.from_pretrained(
        "gpt2", str(export_dir), device=torch.device("cpu"), dtype=torch.float32
    )
    loaded = time.perf_counter() - started
    config = model.transcoders
    input_hook, output_hook = model.feature_input_hook, model.original_feature_output_hook
    kind = type(config).__name__  # TranscoderSet or CrossLayerTranscoder
    seen: dict[int, torch.Tensor] = {}
    hooks = []
    for layer in range(model.cfg.n_layers):

        def read(acts, hook, layer=layer):
            seen[layer] = acts
            return acts

        def write(acts, hook, layer=layer):
            if kind != "CrossLayerTranscoder":
                return config[layer](seen[layer]).to(acts.dtype)
            # a CLT: what every layer up to this one writes here, from that layer's input in this pass
            out = config.b_dec[layer]
            for source in range(layer + 1):
                features = config.encode_layer(seen[source], source)
                out = out + features @ config._get_decoder_vectors(source)[:, layer - source]
            return out.to(acts.dtype)

        hooks += [(f"blocks.{layer}.{input_hook}", read), (f"blocks.{layer}.{output_hook}", write)]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits[0].contiguous()}, str(out / "replacement_logits.safetensors"))
    started = time.perf_counter()
    graph = attribute(tokens[0], model, max_n_logits=3, batch_size=16, max_feature_nodes=64)
    graph.to_pt(str(out / "graph.pt"))
    print(
        json.dumps(
            {
                "loaded_seconds": loaded,
                "attribution_seconds": time.perf_counter() - started,
                "n_layers": model.cfg.n_layers,
                "transcoders": kind,
                "input_hook": input_hook,
                "output_hook": output_hook,
                "active_features": int(graph.active_features.shape[0]),
                "adjacency_shape": list(graph.adjacency_matrix.shape),
                "logit_targets": len(graph.logit_targets),
            }
        )
    )


if __name__ == "__main__":
    main()
