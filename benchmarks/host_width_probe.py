"""Probe: does the executor's decode host time per layer depend on the model's width or the context?

The profiler measures the executor's host time on a tiny-width Llama (executor/profiler/executor_host.py) and the
planner scales it by the layer count; host-bound decode cells on the H100 then ran 20-100% over the prediction.
This runs the same measurement (executor_host.decode_token_s: all heads resident, flash, median of repeats) on
2- and 4-layer random Llamas of three widths (the profiler's tiny one, Llama-3.2-1B's and Llama-3-8B's layer
shapes) and prompts of 32 and 8192 tokens, and prints per-layer and per-forward host seconds from the two depths:

    token_s(L) = model_s + L * layer_s      (L = 2, 4)

Writes $OUT/host_width_probe.json.   python benchmarks/host_width_probe.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTHS = {  # hidden, intermediate, query heads, KV heads, head dim
    "tiny": (256, 512, 8, 4, 32),
    "llama-3.2-1b": (2048, 8192, 32, 8, 64),
    "llama-3-8b": (4096, 14336, 32, 8, 128),
}


def build(width: str, layers: int, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, q_heads, kv_heads, head_dim = WIDTHS[width]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=q_heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                         vocab_size=512, max_position_embeddings=65536)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype=dtype).eval()


def main() -> int:
    import torch

    from executor.profiler import executor_host as eh

    device, dtype = torch.device("cuda"), torch.bfloat16
    rows = []
    for width in WIDTHS:
        kv_heads = WIDTHS[width][3]
        for prompt in (32, 8192):
            sizes = dataclasses.replace(eh.HostSizes(), decode_prompt_tokens=prompt, decode_tokens=32, repeats=3)
            token_s = {}
            for layers in (2, 4):
                model = build(width, layers, device, dtype)
                token_s[layers] = eh.decode_token_s(model, sizes, device, group=1, resident=layers * kv_heads)
                del model
                torch.cuda.empty_cache()
            layer_s = (token_s[4] - token_s[2]) / 2
            row = {"width": width, "prompt_tokens": prompt, "token_s_2_layers": token_s[2],
                   "token_s_4_layers": token_s[4], "layer_s": layer_s, "model_s": token_s[2] - 2 * layer_s,
                   "predicted_32_layers_s": token_s[2] + 30 * layer_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(os.environ.get("OUT", "/tmp")) / "host_width_probe.json"
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
