"""Several GPUs by heads against by layers against one GPU, on a host of 2 (or more) GPUs: one command.

    python benchmarks/tensor_parallel.py --out $OUT/$(date +%F)-h200x2 [--hw PROFILE] [--host-mem 240GiB]

1. measures the all-reduce by size over the visible GPUs (executor/profiler/allreduce.py) and writes
   ``profile-allreduce.json``: the --hw profile with that table added, so the plans by heads price their two
   all-reduces per layer from this machine rather than from the planner's assumed figure;
2. runs the cells (benchmarks/validate.py run_cell, each ``headplan run`` in its own process) with that profile:
       one GPU       MODEL:CONTEXT:GPU_MEM:c=CHUNK:tail=K
       by layers     ...:n=2:p=layers
       by heads      ...:n=2:p=heads
   the same chunk for all three (so the K timed chunks are the same work), the other knobs the planner's; each
   cell's prefill is its last K chunks at their real positions over a zero-filled past (--tail-chunks K), decode
   runs at the full context;
3. writes ``tensor-parallel.jsonl`` (one report per cell), ``tensor-parallel.json`` (the speed-ups against one
   GPU, measured and predicted, and each figure's measured / predicted - 1) and prints the summary.
Targets (by heads against one GPU, 8B at 256K under 24 GB per GPU): prefill >= 1.8x, offloaded decode >= 1.8x,
predictions within 10%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from validate import run_cell  # noqa: E402


def with_allreduce(profile_path: str, out: Path) -> Path:
    """The profile with the all-reduce table measured now over every visible GPU."""
    import torch

    from executor.profiler.allreduce import REPEATS, SIZES_BYTES, allreduce_points
    from hwprofiles import load_profile, write_profile
    from hwprofiles.schema import AllReducePoint

    gpus = torch.cuda.device_count()
    start_s = time.perf_counter()
    points = allreduce_points(gpus, "cuda", SIZES_BYTES, REPEATS)
    print(f"all-reduce over {gpus} GPUs ({time.perf_counter() - start_s:.1f} s): " + ", ".join(
        f"{p['size_bytes'] >> 10} KiB {p['seconds'] * 1e6:.0f} us ({p['bus_bytes_per_s'] / 1e9:.0f} GB/s)"
        for p in points), flush=True)
    profile = load_profile(profile_path)
    profile = profile.model_copy(update={
        "name": profile.name + "-allreduce", "allreduce_table": [AllReducePoint(**p) for p in points],
        "notes": (profile.notes + "; " if profile.notes else "") + f"allreduce_table measured "
                 f"{time.strftime('%Y-%m-%d')} by benchmarks/tensor_parallel.py"})
    path = out / "profile-allreduce.json"
    write_profile(profile, path)
    return path


def cells(args) -> dict[str, str]:
    base = f"{args.model}:{args.context}:{args.gpu_mem}:c={args.chunk}:tail={args.tail}"
    return {"one GPU": base, "by layers": f"{base}:n={args.gpus}:p=layers", "by heads": f"{base}:n={args.gpus}:p=heads"}


def figures(row: dict) -> dict:
    report = row.get("report") or {}
    measured, predicted = report.get("measured") or {}, report.get("predicted") or {}
    out = {"exit_code": row.get("exit_code"), "wall_s": row.get("wall_s"), "settings": report.get("settings")}
    for key in ("prefill_s", "decode_s_per_token", "gpu_peak_bytes"):
        out[key] = {"measured": measured.get(key), "predicted": predicted.get(key),
                    "error": (measured[key] / predicted[key] - 1) if measured.get(key) and predicted.get(key)
                    else None}
    out["per_gpu"] = [{k: g.get(k) for k in ("device", "resident_kv_heads", "host_store_bytes",
                                             "measured_gpu_peak_bytes", "measured_prefill_busy_s",
                                             "measured_decode_busy_s_per_token")} for g in report.get("gpus", [])]
    if "error_text" in row:
        out["error_text"] = row["error_text"][-800:]
    return out


def speedups(results: dict) -> dict:
    one = results.get("one GPU", {})
    out = {}
    for name in ("by layers", "by heads"):
        entry = {}
        for key in ("prefill_s", "decode_s_per_token"):
            for side in ("measured", "predicted"):
                base, this = (one.get(key) or {}).get(side), (results.get(name, {}).get(key) or {}).get(side)
                entry[f"{key}_{side}_speedup"] = base / this if base and this else None
        out[name] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hw", default="hwprofiles/catalog/h200-sxm-quick.json")
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--context", default="256K")
    parser.add_argument("--gpu-mem", default="24GB")
    parser.add_argument("--chunk", default="32K")
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--host-mem", default="240GiB")
    parser.add_argument("--timeout-s", type=float, default=170)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    profile = with_allreduce(args.hw, args.out)
    results, sink = {}, args.out / "tensor-parallel.jsonl"
    for name, cell in cells(args).items():
        print(f"{name}: {cell}", flush=True)
        row = run_cell(cell, str(profile), args.new_tokens, args.timeout_s, ["--host-mem", args.host_mem])
        row["label"] = name
        with sink.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        results[name] = figures(row)
        f = results[name]
        print(f"  exit {f['exit_code']} in {f['wall_s']} s; prefill (last {args.tail} chunks) "
              f"{f['prefill_s']['measured']} s (pred {f['prefill_s']['predicted']}), decode "
              f"{f['decode_s_per_token']['measured']} s/token (pred {f['decode_s_per_token']['predicted']})"
              + (f"\n  {f['error_text']}" if "error_text" in f else ""), flush=True)
    import torch

    summary = {"date": time.strftime("%Y-%m-%d"), "machine": f"{torch.cuda.device_count()}x "
               f"{torch.cuda.get_device_name(0)}", "torch": torch.__version__, "profile": str(profile),
               "cells": cells(args), "results": results, "speedups_vs_one_gpu": speedups(results)}
    (args.out / "tensor-parallel.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["speedups_vs_one_gpu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
