"""Decode per token with sampling against greedy, and the generate() path against the run's own loop.

For each cell (Llama-3-8B shape, random weights, bfloat16, planned by the planner under the GPU budget):
    loop   greedy     headplan's own decode loop (run_plan), argmax (in the CUDA graph where every head is resident)
    loop   sampled    the same loop, temperature 0.7, top-p 0.9 (transformers' warpers, multinomial on the device)
    generate greedy   transformers' model.generate over executor.api.offloaded_cache (the same engine)
    generate sampled  the same, do_sample=True, temperature 0.7, top-p 0.9
The context is a timing probe: its first N - 1 tokens' K, V are zero-filled (decode reads the bytes, whatever they hold),
so each cell costs seconds, not a whole prefill; decode time is the full context's. Loop figures are the report's
decode_s_per_token (CUDA events); generate figures are the median interval between the streamer's put() calls
(host clock: what a user of generate sees). Writes $OUT/answer_decode.json (or --out) and prints a table.

    python benchmarks/answer_decode.py [--cells 128K:24GB,32K:24GB] [--tokens 33]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.units import parse_bytes, parse_tokens  # noqa: E402

SAMPLED = dict(temperature=0.7, top_p=0.9)


def _zero_fill(cache, tokens: int) -> None:
    """Rows [0, tokens) of every store zero-filled and counted (the timing probe's synthetic past)."""
    for engine in cache.engine.engines:
        for per_layer in (engine.gpu.resident_keys, engine.gpu.resident_values, engine.host.keys, engine.host.values):
            for rows in per_layer:
                rows[:, :tokens].zero_()
    cache.advance(tokens)


def generate_per_token_s(model, plan, ids, tokens: int, sampled: bool, seed: int, device: str = "cuda") -> float:
    """Median seconds between generated tokens of model.generate over the offloaded cache."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    from executor.api import offloaded_cache

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    with offloaded_cache(model, plan, device=device, new_tokens=tokens + 1) as cache:
        _zero_fill(cache, ids.shape[1] - 1)
        torch.manual_seed(seed)
        extra = dict(do_sample=True, **SAMPLED) if sampled else dict(do_sample=False)
        model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=tokens,
                       min_new_tokens=tokens, streamer=clock, **extra)
    gaps = [b - a for a, b in zip(clock.times[2:], clock.times[3:])]  # after the prompt put and the first token
    return statistics.median(gaps)


def loop_per_token_s(model, plan, ids, tokens: int, sampled: bool, seed: int,
                     device: str = "cuda") -> tuple[float, str]:
    from executor.api import run_plan
    from executor.settings import RunOptions, SamplingOptions

    sampling = SamplingOptions(seed=seed, **SAMPLED) if sampled else SamplingOptions()
    result = run_plan(model, plan, ids, new_tokens=tokens, device=device, options=RunOptions(sampling=sampling),
                      tail_chunks=1)
    return result.report.measured.decode_s_per_token, result.report.host.decode_step


def run_cell(spec, hardware, context_text: str, budget_text: str, tokens: int, device: str = "cuda") -> dict:
    import torch

    from executor.inputs.model_loader import build_random
    from executor.inputs.prompt import random_prompt_ids
    from executor.runtime.gpu_memory import apply_gpu_budget
    from planner.solver import make_plan

    context = parse_tokens(context_text)
    plan = make_plan(spec, hardware, context_tokens=context, decode_tokens=tokens,
                     gpu_mem_bytes=parse_bytes(budget_text), dtype="bfloat16")
    if device == "cuda":
        apply_gpu_budget(plan.memory.gpu_budget_bytes, hardware.runtime_overhead_bytes, "cuda")
    loaded = build_random(spec, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device, seed=0)
    ids = random_prompt_ids(context, spec.vocab_size, 0)
    row = {"context": context, "gpu_budget": budget_text, "plan": {"chunk": plan.chunk_size, "G": plan.heads_per_group,
           "R": plan.resident_kv_heads, "decode_graphs": plan.decode_graphs},
           "predicted_decode_s_per_token": plan.predicted.decode_s_per_token}
    for sampled in (False, True):
        name = "sampled" if sampled else "greedy"
        row[f"loop_{name}_s"], row["loop_decode_step"] = loop_per_token_s(loaded.model, plan, ids, tokens, sampled, 1,
                                                                           device)
        row[f"generate_{name}_s"] = generate_per_token_s(loaded.model, plan, ids, tokens, sampled, 1, device)
    row["sampling_cost_loop"] = row["loop_sampled_s"] / row["loop_greedy_s"] - 1
    row["sampling_cost_generate"] = row["generate_sampled_s"] / row["generate_greedy_s"] - 1
    row["generate_over_loop_greedy"] = row["generate_greedy_s"] / row["loop_greedy_s"] - 1
    row["generate_over_loop_sampled"] = row["generate_sampled_s"] / row["loop_sampled_s"] - 1
    del loaded
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--hw", default="h100-sxm-measured")
    parser.add_argument("--cells", default="128K:24GB,32K:24GB")
    parser.add_argument("--tokens", type=int, default=33)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script on a small model")
    args = parser.parse_args()
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch
    import transformers

    from hwprofiles.catalog import load_profile
    from planner.model_spec import load_model_spec

    spec, hardware = load_model_spec(args.model), load_profile(args.hw)
    rows = []
    for cell in args.cells.split(","):
        context, budget = cell.split(":")
        rows.append(run_cell(spec, hardware, context, budget, args.tokens, args.device))
        print(json.dumps(rows[-1]), flush=True)
    machine = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (dry run)"
    result = {"machine": machine, "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "transformers": transformers.__version__, "model": args.model,
              "profile": args.hw, "tokens": args.tokens, "sampled": SAMPLED, "cells": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "answer_decode.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['machine']}, {args.model}, decode ms per token")
    print(f"{'cell':>12} {'step':>6} {'loop greedy':>12} {'loop sampled':>13} {'gen greedy':>11} {'gen sampled':>12} "
          f"{'sampling cost loop':>19}")
    for r in rows:
        print(f"{r['context'] // 1024:>6}K {r['gpu_budget']:>5} {r['loop_decode_step']:>6} {r['loop_greedy_s'] * 1e3:12.1f} "
              f"{r['loop_sampled_s'] * 1e3:13.1f} {r['generate_greedy_s'] * 1e3:11.1f} "
              f"{r['generate_sampled_s'] * 1e3:12.1f} {r['sampling_cost_loop']:+19.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
