"""cudnn-split against the flash kernel at Llama-3-8B prefill shapes on one GPU, and the choice of the
default past block size. Writes $OUT/attention_split.json (or ./attention_split.json) and prints a table last.

1. rates: TFLOP/s of one head group's chunk attention (useful FLOPs 4 * Hq * d * (c * s + c (c + 1) / 2)),
   flash lower-right vs cudnn-split, groups of 1, 2, 4, 8 KV heads (4 query heads each), chunk 8K-16K,
   past 0..512K; max |split - flash| beside each.
2. graph build: first call at a new cuDNN shape minus a steady call, a few shapes (median).
3. block size: a simulated prefill (pasts 0, c, 2c, ...) of one group of one layer for each candidate B
   (and "whole": one cuDNN call over the whole past, a new shape per chunk). A model run repeats the
   steady time L * H_kv / G times but builds each graph once, so the score is
       run_s(B) = steady_s(B) * 32 layers * (8 / G) groups + new_shapes(B) * build_s
   and the recommended default is the B with the least run_s summed over the simulated group sizes.

Bounded to < 4 minutes and < ~6 GiB of GPU memory on an H100 (KV of 8 heads x 528K tokens = 2.2 GiB).
Usage: PYTHONPATH=. python benchmarks/attention_split_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from executor.attention.split import (attend_chunk_split, cudnn_available, cudnn_shapes_seen,  # noqa: E402
                                      partial_cudnn, partial_flash, past_block_spans)
from executor.attention.lse import LseAccumulator  # noqa: E402
from executor.runtime.timing import host_seconds, measure  # noqa: E402

HEAD_DIM, RATIO, LAYERS, KV_HEADS = 128, 4, 32, 8  # Llama-3-8B
K = 1024
DEVICE, DTYPE = "cuda", torch.bfloat16  # a CPU dry run of the script logic swaps these


def useful_flops(query_heads: int, chunk: int, past: int) -> float:
    """4 * Hq * d * pairs; pairs = c * s (past) + c (c + 1) / 2 (lower-right causal chunk)."""
    return 4.0 * query_heads * HEAD_DIM * (chunk * past + chunk * (chunk + 1) / 2)


def make_buffers(kv_heads: int, capacity: int, max_chunk: int):
    """Random bf16 q [1, 4G, c_max, d] and one K/V buffer [2, 1, G, capacity, d] (the executor's layout)."""
    q = torch.randn(1, RATIO * kv_heads, max_chunk, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    kv = torch.randn(2, 1, kv_heads, capacity, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    return q, kv[0], kv[1]


def whole_past_split(q, k, v, *, scale):
    """One cuDNN call over the whole past (a new key length each chunk) + flash causal chunk, merged."""
    past = k.shape[2] - q.shape[2]
    parts = LseAccumulator()
    if past:
        parts.add(*partial_cudnn(q, k[:, :, :past], v[:, :, :past], scale=scale, causal=False))
    parts.add(*partial_flash(q, k[:, :, past:], v[:, :, past:], scale=scale, causal=True))
    return parts.result()[0].to(q.dtype)


def rate_table(groups, chunks, pasts, block, repeats):
    rows = []
    for kv_heads in groups:
        q_all, k_buf, v_buf = make_buffers(kv_heads, max(pasts) + max(chunks), max(chunks))
        for chunk in chunks:
            q = q_all[:, :, :chunk]
            for past in pasts:
                k, v = k_buf[:, :, :past + chunk], v_buf[:, :, :past + chunk]
                scale = 1 / math.sqrt(HEAD_DIM)
                flash = partial_flash(q, k, v, scale=scale, causal=True)[0]
                split = attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block)
                diff = (split.float() - flash.float()).abs().max().item()
                flops = useful_flops(q.shape[1], chunk, past)
                t_flash = measure(lambda: partial_flash(q, k, v, scale=scale, causal=True), warmup=1,
                                  repeats=repeats, device=DEVICE).median_s
                t_split = measure(lambda: attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block),
                                  warmup=1, repeats=repeats, device=DEVICE).median_s
                rows.append(dict(kv_heads=kv_heads, query_heads=q.shape[1], chunk=chunk, past=past, block=block,
                                 flash_tflops=round(flops / t_flash / 1e12, 1),
                                 split_tflops=round(flops / t_split / 1e12, 1),
                                 speedup=round(t_flash / t_split, 2), max_abs_diff_vs_flash=diff))
                print(f"rate G={kv_heads} c={chunk} s={past}: flash {rows[-1]['flash_tflops']} "
                      f"split {rows[-1]['split_tflops']} TFLOP/s diff {diff:.2e}", flush=True)
        del q_all, k_buf, v_buf
        torch.cuda.empty_cache()
    return rows


def graph_build_cost(count: int = 4) -> dict:
    """First call at a key length never used elsewhere (odd multiples of 2K) minus a steady call."""
    q, k_buf, v_buf = make_buffers(1, 2 * K * (2 * count + 3), 10 * K)
    extras = []
    for i in range(count):
        keys = 2 * K * (2 * i + 3)
        k, v = k_buf[:, :, :keys], v_buf[:, :, :keys]
        first = host_seconds(lambda: partial_cudnn(q, k, v, scale=0.1, causal=False), device=DEVICE)
        steady = host_seconds(lambda: partial_cudnn(q, k, v, scale=0.1, causal=False), device=DEVICE)
        extras.append(first - steady)
    extras.sort()
    return dict(build_s_samples=[round(x, 4) for x in extras], build_s_median=extras[len(extras) // 2])


def cudnn_call_shapes(context: int, chunk: int, block: int) -> set[tuple[int, int]]:
    """Distinct (query rows, key length) of the cuDNN past parts over a prefill: one graph build each."""
    shapes = set()
    for past in range(0, context, chunk):
        c = min(chunk, context - past)
        shapes.update((c, end - start) for start, end in past_block_spans(past, block))
    return shapes


def simulate_prefill(kv_heads, context, chunk, blocks, build_s):
    """Steady time of one group's attention over a whole prefill, per block size; graph builds counted."""
    q_all, k_buf, v_buf = make_buffers(kv_heads, context, chunk)
    scale = 1 / math.sqrt(HEAD_DIM)
    variants = [("flash", None)] + [(f"B={b}", b) for b in blocks] + [("whole", None)]
    results = []
    for name, block in variants:
        shapes_before, steady_s = cudnn_shapes_seen(), 0.0
        for past in range(0, context, chunk):
            c = min(chunk, context - past)
            q, k, v = q_all[:, :, :c], k_buf[:, :, :past + c], v_buf[:, :, :past + c]
            if name == "flash":
                fn = lambda: partial_flash(q, k, v, scale=scale, causal=True)  # noqa: E731
            elif name == "whole":
                fn = lambda: whole_past_split(q, k, v, scale=scale)  # noqa: E731
            else:
                fn = lambda: attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block)  # noqa: E731
            steady_s += measure(fn, warmup=1, repeats=1, device=DEVICE).median_s
        if name.startswith("B="):  # analytic count: independent of what earlier variants already built
            shapes = len(cudnn_call_shapes(context, chunk, block))
        else:
            shapes = len(cudnn_shapes_seen() - shapes_before) if name == "whole" else 0
        groups_per_run = LAYERS * KV_HEADS // kv_heads
        results.append(dict(variant=name, block=block, kv_heads=kv_heads, context=context, chunk=chunk,
                            steady_s_one_group_layer=round(steady_s, 4), cudnn_shapes=shapes,
                            run_attention_s=round(steady_s * groups_per_run + shapes * build_s, 3)))
        print(f"sim G={kv_heads} T={context} c={chunk} {name}: steady {steady_s:.4f} s, shapes {shapes}, "
              f"run {results[-1]['run_attention_s']} s", flush=True)
    del q_all, k_buf, v_buf
    torch.cuda.empty_cache()
    return results


def recommend(sim_rows, blocks) -> int:
    """The block size with the least predicted run attention time summed over the simulated runs."""
    total = {b: sum(r["run_attention_s"] for r in sim_rows if r["block"] == b and r["variant"].startswith("B="))
             for b in blocks}
    return min(total, key=total.get)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run, ~30 s)")
    args = parser.parse_args()
    if not cudnn_available():
        sys.exit("cuDNN attention is not usable here; nothing to compare")
    started = time.perf_counter()
    torch.manual_seed(0)
    blocks = [1024, 2048, 4096, 8192, 16384]
    if args.quick:
        rates = rate_table([1, 8], [10 * K], [0, 128 * K], 2048, repeats=2)
        sims_spec = [(1, 128 * K, 10 * K)]
    else:
        rates = rate_table([1, 2, 4, 8], [8 * K, 10 * K, 16 * K], [0, 32 * K, 128 * K, 512 * K], 2048, repeats=3)
        sims_spec = [(1, 512 * K, 10 * K), (1, 128 * K, 16 * K), (8, 256 * K, 10 * K)]
    build = graph_build_cost()
    sims = []
    for kv_heads, context, chunk in sims_spec:
        sims += simulate_prefill(kv_heads, context, chunk, blocks, build["build_s_median"])
    best = recommend(sims, blocks)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  cudnn=torch.backends.cudnn.version(), head_dim=HEAD_DIM, ratio=RATIO, rates=rates,
                  graph_build=build, prefill_simulation=sims, recommended_past_block_tokens=best,
                  peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  wall_s=round(time.perf_counter() - started, 1))
    out_dir = Path(os.environ.get("OUT", "."))
    (out_dir / "attention_split.json").write_text(json.dumps(result, indent=1))
    print_tables(result)


def print_tables(result) -> None:
    print(f"\n{result['device']}, torch {result['torch']}, cuDNN {result['cudnn']}; graph build "
          f"{result['graph_build']['build_s_median'] * 1e3:.0f} ms; peak {result['peak_gpu_gib']} GiB; "
          f"{result['wall_s']} s")
    print(f"{'variant':>8} {'G':>2} {'T':>7} {'c':>6} {'steady s':>9} {'shapes':>6} {'run attn s':>10}")
    for r in result["prefill_simulation"]:
        print(f"{r['variant']:>8} {r['kv_heads']:>2} {r['context']:>7} {r['chunk']:>6} "
              f"{r['steady_s_one_group_layer']:>9.4f} {r['cudnn_shapes']:>6} {r['run_attention_s']:>10.2f}")
    print(f"recommended past_block_tokens: {result['recommended_past_block_tokens']}\n")
    print(f"{'G':>2} {'c':>6} {'past':>7} {'flash TF/s':>10} {'split TF/s':>10} {'x':>5} {'max|diff|':>9}")
    for r in result["rates"]:
        print(f"{r['kv_heads']:>2} {r['chunk']:>6} {r['past']:>7} {r['flash_tflops']:>10} {r['split_tflops']:>10} "
              f"{r['speedup']:>5} {r['max_abs_diff_vs_flash']:>9.1e}")


if __name__ == "__main__":
    main()
