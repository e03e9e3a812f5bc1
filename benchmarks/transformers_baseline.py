"""The peer on the same work: transformers' own forward on a random-weight model of a built-in architecture.

Three modes: ``standard`` (the whole prompt in one forward, KV on the GPU),
``chunked`` (prefill in chunks, DynamicCache on the GPU) and ``offload`` (chunks, transformers' offloaded cache:
``DynamicCache(offloading=True)`` in 5.x). Greedy decode of N tokens after prefill. Prints one JSON line per
cell and appends it to --out. Runs uncapped (the peer gets the whole card); an out-of-memory is recorded, not
raised.

    python benchmarks/transformers_baseline.py --model llama-3-8b --cells standard:32K,chunked:128K,offload:128K \
        --new-tokens 16 --chunk-size 10K --out $OUT/baseline.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.model_spec import load_model_spec  # noqa: E402
from planner.units import GIB, parse_tokens  # noqa: E402


def build_model(model_name: str, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = load_model_spec(model_name)
    config_dict = spec.to_hf_config_dict()
    config = AutoConfig.for_model(**config_dict)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval(), spec


def make_cache(mode: str):
    from transformers import DynamicCache

    if mode == "offload":
        return DynamicCache(offloading=True)
    return DynamicCache()


def run_cell(model, vocab_size: int, mode: str, context: int, chunk: int, new_tokens: int, seed: int) -> dict:
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(0, vocab_size, (1, context), device="cuda", generator=generator)
    weights_bytes = torch.cuda.memory_allocated()
    cell = {"mode": mode, "context_tokens": context, "chunk_size": chunk if mode != "standard" else context}
    try:
        with torch.inference_mode():
            cache = make_cache(mode)
            torch.cuda.synchronize()
            start_s = time.perf_counter()
            step = context if mode == "standard" else chunk
            for begin in range(0, context, step):
                out = model(ids[:, begin:begin + step], past_key_values=cache, use_cache=True, logits_to_keep=1)
            next_id = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            prefill_s = time.perf_counter() - start_s
            generated = [int(next_id)]
            start_s = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(next_id, past_key_values=cache, use_cache=True)
                next_id = out.logits[:, -1:].argmax(-1)
                generated.append(int(next_id))
            torch.cuda.synchronize()
            decode_s = (time.perf_counter() - start_s) / max(new_tokens - 1, 1)
        cell.update(prefill_s=round(prefill_s, 3), decode_s_per_token=round(decode_s, 4),
                    gpu_peak_bytes=torch.cuda.max_memory_allocated(),
                    gpu_peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                    over_weights_gib=round((torch.cuda.max_memory_allocated() - weights_bytes) / GIB, 2),
                    generated_token_ids=generated)
    except torch.OutOfMemoryError:
        cell.update(error="out of memory", gpu_peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2))
    return cell


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--cells", required=True, help="MODE:CONTEXT,... with MODE standard|chunked|offload")
    parser.add_argument("--chunk-size", default="10K")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch
    import transformers

    model, spec = build_model(args.model, args.seed)
    header = {"peer": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0), "model": args.model, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(header), flush=True)
    for item in args.cells.split(","):
        mode, context_text = item.split(":")
        cell = run_cell(model, spec.vocab_size, mode, parse_tokens(context_text), parse_tokens(args.chunk_size),
                        args.new_tokens, args.seed)
        cell = {**header, **cell}
        print(json.dumps({k: v for k, v in cell.items() if k != "generated_token_ids"}), flush=True)
        with args.out.open("a") as sink:
            sink.write(json.dumps(cell) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
