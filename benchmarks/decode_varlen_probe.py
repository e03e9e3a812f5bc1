"""Probe for a CUDA-graph decode step: can the flash kernel read the key length from the device?

A captured decode step must attend over [0, s + 1) while its shapes stay fixed. This probe checks, on the GPU,
``aten._flash_attention_forward`` in its varlen form (cu_seqlens_k = [0, T], ``seqused_k`` = [s + 1] on the
device) against the dense call on the sliced keys that the eager decode makes (``_scaled_dot_product_flash_
attention`` on k[:, :s + 1]):
  1. agreement (max |difference|) at several key lengths, keys stored [H_kv, T, d] as the resident store is;
  2. time per call (CUDA events, median of repeats) at 8K-512K keys, 8B shape (32 q / 8 KV heads, d = 128) and
     1B shape (d = 64): the varlen call must not be slower than the dense one;
  3. capture into a CUDA graph with ``seqused_k += 1`` inside the graph, replayed: each replay's output matches a
     dense call at its length.
Writes one JSON to --out.  Run: python benchmarks/decode_varlen_probe.py --out $OUT/decode-varlen-probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def dense(q, keys, values, length, scale):
    """The eager decode's call: q [1, Hq, 1, d], keys [H_kv, T, d] sliced to [0, length)."""
    return torch.ops.aten._scaled_dot_product_flash_attention(
        q, keys[None, :, :length], values[None, :, :length], 0.0, True, False, scale=scale)[0]


def varlen(q, keys, values, used, cu_q, cu_k, scale):
    """Varlen call: q [1, Hq, d] (total_q = 1), k [T, H_kv, d] (a transposed view), seqused_k = used."""
    out = torch.ops.aten._flash_attention_forward(
        q[0].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), cu_q, cu_k, 1, keys.shape[1], 0.0,
        False, False, scale=scale, seqused_k=used)[0]
    return out  # [1, Hq, d]


def time_call(fn, repeats=50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "rows": [], "graph": {}}
    for head_dim in (128, 64):
        for tokens in (8192, 32768, 131072, 524288):
            kv_heads, q_heads = 8, 32
            capacity = tokens + 16
            gen = torch.Generator(device=device).manual_seed(0)
            keys = torch.randn(kv_heads, capacity, head_dim, device=device, dtype=dtype, generator=gen)
            values = torch.randn(kv_heads, capacity, head_dim, device=device, dtype=dtype, generator=gen)
            q = torch.randn(1, q_heads, 1, head_dim, device=device, dtype=dtype, generator=gen)
            scale = head_dim ** -0.5
            cu_q = torch.tensor([0, 1], device=device, dtype=torch.int32)
            cu_k = torch.tensor([0, capacity], device=device, dtype=torch.int32)
            used = torch.tensor([tokens], device=device, dtype=torch.int32)
            ref = dense(q, keys, values, tokens, scale)[0, :, 0]
            got = varlen(q, keys, values, used, cu_q, cu_k, scale)[0]
            row = {"head_dim": head_dim, "tokens": tokens, "max_abs_diff": float((ref.float() - got.float()).abs().max()),
                   "dense_s": time_call(lambda: dense(q, keys, values, tokens, scale)),
                   "varlen_s": time_call(lambda: varlen(q, keys, values, used, cu_q, cu_k, scale))}
            row["kv_bytes"] = 2 * kv_heads * tokens * head_dim * 2
            row["dense_GBps"], row["varlen_GBps"] = row["kv_bytes"] / row["dense_s"] / 1e9, row["kv_bytes"] / row["varlen_s"] / 1e9
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            if head_dim == 128 and tokens == 32768:
                static_q, out = q.clone(), torch.empty(1, q_heads, head_dim, device=device, dtype=dtype)
                used.fill_(tokens - 4)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    varlen(static_q, keys, values, used, cu_q, cu_k, scale)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out.copy_(varlen(static_q, keys, values, used, cu_q, cu_k, scale))
                    used.add_(1)
                diffs = []
                for step in range(4):
                    graph.replay()
                    length = tokens - 4 + step
                    diffs.append(float((dense(q, keys, values, length, scale)[0, :, 0].float() - out.float()).abs().max()))
                torch.cuda.synchronize()
                result["graph"] = {"replays": 4, "max_abs_diff_per_replay": diffs, "used_after": int(used.item())}
                print(json.dumps(result["graph"]), flush=True)
            del keys, values
            torch.cuda.empty_cache()
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
