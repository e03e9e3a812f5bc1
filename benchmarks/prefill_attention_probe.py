"""Where a long prefill's attention time goes, and what larger calls would save: the attention calls of a whole
prefill replayed alone on the GPU, in three arrangements, with the GPU's clock and power sampled throughout.

    python3 benchmarks/prefill_attention_probe.py --context 128K --chunk 8K --group 2 --resident 2 \
        --out $OUT/prefill-attention-probe.json

Replays, for every chunk [s, s + c) of a ``--context`` prefill and every one of ``--layers`` layers, the attention of
a Llama-3-8B-shaped layer (8 KV heads, 4 query heads each, head dim 128, bf16) over keys and values held in one
[H_kv, N, d] buffer per K and V (the values do not matter for the timing):

    engine       what the executor does: one cudnn-split call per KV-head set of the layer, ``--resident`` heads
                 then groups of ``--group`` heads (attention/split.py: the past's cuDNN blocks, the chunk-vs-itself
                 part, the merge), each into its rows of the layer's output
    layer-chunk  the chunk-vs-itself causal part once per layer for all 32 query heads (it needs no past), then per
                 head set only the past's parts, merged with that set's rows of the chunk part
    one-call     the whole layer in one cudnn-split call over all 8 KV heads (every head resident: the bound on what
                 fewer, larger calls can give)

Each arrangement's time comes from CUDA events per chunk; its rate is the attention FLOPs
4 H_q d (c s + c (c + 1) / 2) summed, over the time. ``nvidia-smi`` samples SM clock, power and temperature every
200 ms in the background; each arrangement's row carries the median and minimum SM clock and the median power of
its samples, so a rate lost to clocks shows as such. Prints one line per arrangement; writes the rows and the
per-chunk rates to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.attention import merge_triton  # noqa: E402
from executor.attention.split import _partial, attend_chunk_split, partial_cudnn, partial_flash, split_parts  # noqa: E402
from executor.attention.lse import pack_query_rows  # noqa: E402
from executor.settings import SplitOptions  # noqa: E402
from planner.units import parse_tokens  # noqa: E402

KV_HEADS, RATIO, HEAD_DIM = 8, 4, 128


def head_sets(resident: int, group: int) -> list[tuple[int, int]]:
    """(first KV head, count) of a layer's calls: the resident heads, then groups of ``group``."""
    sets = [(0, resident)] if resident else []
    first = resident
    while first < KV_HEADS:
        count = min(group, KV_HEADS - first)
        sets.append((first, count))
        first += count
    return sets


def layer_engine(q, keys, values, out, past, chunk, sets, options):
    for first, count in sets:
        rows = slice(first * RATIO, (first + count) * RATIO)
        attend_chunk_split(q[:, rows], keys[None, first:first + count, :past + chunk],
                           values[None, first:first + count, :past + chunk], scale=HEAD_DIM ** -0.5,
                           past_block_tokens=options.past_block_tokens,
                           chunk_backend=options.chunk_backend_for(chunk), out=out[:, rows])


def layer_chunk_once(q, keys, values, out, past, chunk, sets, options):
    """The causal square for all heads in one call, then each set's past parts merged with its rows of it."""
    chunk_keys = keys[None, :, past:past + chunk]
    chunk_values = values[None, :, past:past + chunk]
    square = partial_cudnn if options.chunk_backend_for(chunk) == "cudnn" else partial_flash
    chunk_out, chunk_lse = square(q, chunk_keys, chunk_values, scale=HEAD_DIM ** -0.5, causal=True)
    if past == 0:
        out.copy_(chunk_out)
        return
    for first, count in sets:
        rows = slice(first * RATIO, (first + count) * RATIO)
        k = keys[None, first:first + count, :past]
        v = values[None, first:first + count, :past]
        parts = split_parts(past, 0, block_tokens=options.past_block_tokens, past_backend="cudnn",
                            chunk_backend="flash")
        parts = [p for p in parts if p.key_end > p.key_start]
        if any(p.causal for p in parts):
            raise ValueError(f"past {past} is not a multiple of the block {options.past_block_tokens}: the probe "
                             "handles pasts without a tail only")
        packed = pack_query_rows(q[:, rows], count).contiguous() if len(parts) > 1 else None
        outs, lses = [chunk_out[:, rows]], [chunk_lse[:, rows]]
        for part in parts:
            part_out, part_lse = _partial(part, q[:, rows], k, v, HEAD_DIM ** -0.5, packed)
            outs.append(part_out)
            lses.append(part_lse)
        merge_triton.merge_into(out[:, rows], outs, lses)


def flops(past: int, chunk: int, layers: int) -> float:
    return 4.0 * KV_HEADS * RATIO * HEAD_DIM * (chunk * past + chunk * (chunk + 1) / 2) * layers


def replay(name, layer_fn, context, chunk, layers, sets, options, device):
    keys = torch.randn(KV_HEADS, context, HEAD_DIM, device=device, dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    q = torch.randn(1, KV_HEADS * RATIO, chunk, HEAD_DIM, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    for past in (0, chunk):  # warm-up: graphs and kernels of the first two chunks' shapes
        layer_fn(q, keys, values, out, past, chunk, sets, options)
    torch.cuda.synchronize(device)
    per_chunk = []
    started = time.time()
    total_s = 0.0
    for past in range(0, context - chunk + 1, chunk):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(layers):
            layer_fn(q, keys, values, out, past, chunk, sets, options)
        end.record()
        end.synchronize()
        seconds = begin.elapsed_time(end) / 1e3
        total_s += seconds
        per_chunk.append({"past": past, "s": seconds, "tflops": flops(past, chunk, layers) / seconds / 1e12})
    total_flops = sum(flops(p["past"], chunk, layers) for p in per_chunk)
    del keys, values, q, out
    torch.cuda.empty_cache()
    return {"arrangement": name, "seconds": total_s, "tflops": total_flops / total_s / 1e12,
            "wall_start": started, "wall_end": time.time(), "per_chunk": per_chunk}


def clock_sampler(path: Path):
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu",
                                 "--format=csv,noheader,nounits", "-lms", "200"], stdout=path.open("w"),
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def read_samples(path: Path) -> list[tuple[float, float, float, float]]:
    samples = []
    for line in path.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        try:
            stamp = time.mktime(time.strptime(fields[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
            samples.append((stamp, float(fields[1]), float(fields[2]), float(fields[3])))
        except (ValueError, IndexError):
            continue
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", default="128K")
    parser.add_argument("--chunk", default="8K")
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--resident", type=int, default=2, help="resident KV heads per layer")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--arrangements", default="engine,layer-chunk,one-call")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("prefill_attention_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    context, chunk = parse_tokens(args.context), parse_tokens(args.chunk)
    device = torch.device("cuda")
    options = SplitOptions()
    functions = {"engine": (layer_engine, head_sets(args.resident, args.group)),
                 "layer-chunk": (layer_chunk_once, head_sets(args.resident, args.group)),
                 "one-call": (layer_engine, [(0, KV_HEADS)])}
    samples_path = Path(tempfile.mkstemp(suffix=".csv")[1])
    sampler = clock_sampler(samples_path)
    time.sleep(1.0)
    rows = []
    for name in args.arrangements.split(","):
        layer_fn, sets = functions[name]
        row = replay(name, layer_fn, context, chunk, args.layers, sets, options, device)
        row["head_sets"] = sets
        rows.append(row)
    if sampler is not None:
        sampler.terminate()
        sampler.wait()
    samples = read_samples(samples_path)
    for row in rows:
        inside = [s for s in samples if row["wall_start"] - 1 <= s[0] <= row["wall_end"] + 1]
        if inside:
            row.update(sm_clock_mhz_median=statistics.median(s[1] for s in inside),
                       sm_clock_mhz_min=min(s[1] for s in inside),
                       power_w_median=statistics.median(s[2] for s in inside),
                       temperature_c_max=max(s[3] for s in inside), samples=len(inside))
        print(f"{row['arrangement']:12s} {row['seconds']:7.3f} s  {row['tflops']:6.1f} TFLOP/s  clock "
              f"{row.get('sm_clock_mhz_median')} MHz (min {row.get('sm_clock_mhz_min')}), power "
              f"{row.get('power_w_median')} W", flush=True)
    args.out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(), "context": context, "chunk": chunk, "group": args.group,
        "resident": args.resident, "layers": args.layers, "past_block_tokens": options.past_block_tokens,
        "chunk_backend": options.chunk_backend_for(chunk), "rows": rows,
        "clock_samples": [list(s) for s in samples]}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
