"""Sustained prefill rates: attention and matmuls run back to back for seconds, against the short bursts the
kernel tables time.

The tables (attention.py, matmul.py) time each shape over a few calls. A prefill runs its kernels back to back for
seconds, and a GPU at its power limit lowers its clock: on the H200 of 2026-12-01 the SM clock was 1980 MHz at rest
and 1650 MHz under this section's loop at 690 W of its 700 W, and a 128K prefill's cuDNN calls reached 582 TFLOP/s
where the table's points at the same shapes read 640-690 (docs/measurements-h200.md). This section runs the two
kernel classes of a prefill interleaved as a layer does, per step:

    the MLP's up projection [c, D] @ [D, I] twice, then one cuDNN call of the packed past
    (q [1, G, r c, d] against k, v [1, G, s, d], non-causal: attention.py cudnn_packed)

with c = 4096, G = 8, r = 4, s = 32768 and, per head dim d of the preset, the model shape MODEL_SHAPES[d] (D, I)
(128: Llama-3-8B's 4096, 14336; 64: Llama-3.2-1B's 2048, 8192), random normal data, for ``sustain_s`` seconds
(SUSTAIN_S by preset). Every call is timed with CUDA events; the medians over the loop's second half are set against
the same calls timed alone the tables' way (ctx.time: warm-up, then a few repeats):

    attention_ratio = burst attention seconds / sustained attention seconds   (< 1 where the clock drops)
    matmul_ratio    = burst matmul seconds / sustained matmul seconds

The planner divides a prefill's attention and matmul times by them (planner/time_model.py; hw_lookup.py
sustained_ratios takes the nearest head dim); decode, bound by memory, is left alone. GPU only (nothing on a CPU,
or where cuDNN's attention does not run). ``fill="zeros"`` (benchmarks/sustained_probe.py) runs the attention over
zero K and V, as a prefill of only the last chunks over a zero-filled past did before ``headplan run --tail-chunks`` filled
its past with a random pattern: on the H200 that drew 550 W at 1890 MHz, so such probes ran faster than a real
prefill.
Leaves out: the clock itself (the probe samples nvidia-smi).
"""

from __future__ import annotations

import statistics
import time
from typing import Optional

import torch

from executor.profiler.attention import attention_flops, cudnn_available, cudnn_packed
from executor.profiler.context import ProfileContext
from hwprofiles.schema import SustainedPoint
from planner.units import format_rate

SECTION = "sustained"
SUSTAIN_S = {"full": 6.0, "quick": 3.0, "tiny": 0.2}
MODEL_SHAPES = {128: (4096, 14336), 64: (2048, 8192)}   # head dim -> (hidden D, intermediate I)
CHUNK_TOKENS, KV_HEADS, GQA, PAST_TOKENS = 4096, 8, 4, 32768
SYNC_EVERY_STEPS = 16           # bound how far the host runs ahead of the GPU (and the events kept in flight)


def measure_sustained(ctx: ProfileContext, *, fill: str = "randn", sustain_s: Optional[float] = None,
                      copy_bytes: int = 0) -> dict:
    """{"sustained_table": [SustainedPoint] (one per head dim of the preset with a MODEL_SHAPES entry), "rows":
    [dict] (the same with the burst rates, steps and seconds)}. ``copy_bytes`` > 0 (the probe): pinned
    host-to-device copies of that size run on a side stream through the loop, as a streamed prefill's fetches do."""
    empty = {"sustained_table": [], "rows": []}
    if not ctx.on_gpu:
        ctx.note("sustained prefill rates (sustained.py) skipped: no GPU; the planner takes the tables' rates")
        return empty
    if not cudnn_available(ctx):
        ctx.note("sustained prefill rates (sustained.py) skipped: cuDNN attention unavailable")
        return empty
    sustain_s = SUSTAIN_S.get(ctx.preset.mode, 3.0) if sustain_s is None else sustain_s
    points, rows = [], []
    for head_dim in ctx.preset.head_dims:
        if head_dim not in MODEL_SHAPES:
            continue
        row = _one_shape(ctx, head_dim, *MODEL_SHAPES[head_dim], fill=fill, sustain_s=sustain_s,
                         copy_bytes=copy_bytes)
        rows.append(row)
        points.append(SustainedPoint(**{key: row[key] for key in SustainedPoint.model_fields}))
    return {"sustained_table": points, "rows": rows}


def _one_shape(ctx: ProfileContext, head_dim: int, hidden: int, intermediate: int, *, fill: str, sustain_s: float,
               copy_bytes: int) -> dict:
    dtype = torch.bfloat16
    make = ctx.randn if fill == "randn" else (lambda *shape, dtype: torch.zeros(*shape, device=ctx.device,
                                                                                   dtype=dtype))
    q = ctx.randn(1, KV_HEADS, GQA * CHUNK_TOKENS, head_dim, dtype=dtype)
    k = make(1, KV_HEADS, PAST_TOKENS, head_dim, dtype=dtype)
    v = make(1, KV_HEADS, PAST_TOKENS, head_dim, dtype=dtype)
    x = ctx.randn(CHUNK_TOKENS, hidden, dtype=dtype)
    w = ctx.randn(hidden, intermediate, dtype=dtype)
    out = torch.empty(CHUNK_TOKENS, intermediate, device=ctx.device, dtype=dtype)
    attention = lambda: cudnn_packed(q, k, v)  # noqa: E731
    matmul = lambda: torch.matmul(x, w, out=out)  # noqa: E731
    attention_flop = attention_flops(q_heads=KV_HEADS * GQA, head_dim=head_dim, q_len=CHUNK_TOKENS,
                                     k_len=PAST_TOKENS, causal=False)
    matmul_flop = 2.0 * CHUNK_TOKENS * hidden * intermediate

    torch.cuda.synchronize(ctx.device)
    time.sleep(1.0)                  # let the clock recover from the work before
    burst_attention = ctx.time(attention, warmup=max(2, ctx.preset.warmup)).median_s
    burst_matmul = ctx.time(matmul).median_s

    side = torch.cuda.Stream(ctx.device) if copy_bytes else None
    source = torch.empty(copy_bytes, dtype=torch.uint8, pin_memory=True) if copy_bytes else None
    target = torch.empty(copy_bytes, dtype=torch.uint8, device=ctx.device) if copy_bytes else None
    marks: list[tuple[torch.cuda.Event, torch.cuda.Event, torch.cuda.Event]] = []
    started_s = time.perf_counter()
    while time.perf_counter() - started_s < sustain_s:
        for _ in range(SYNC_EVERY_STEPS):
            if side is not None and side.query():   # one copy in flight at a time, as a fetch
                with torch.cuda.stream(side):
                    target.copy_(source, non_blocking=True)
            begin, middle, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            begin.record()
            matmul()
            matmul()
            middle.record()
            attention()
            end.record()
            marks.append((begin, middle, end))
        marks[-1][2].synchronize()
    torch.cuda.synchronize(ctx.device)
    elapsed_s = time.perf_counter() - started_s
    kept = marks[len(marks) // 2:]
    sustained_matmul = statistics.median([b.elapsed_time(m) / 2e3 for b, m, _ in kept])
    sustained_attention = statistics.median([m.elapsed_time(e) / 1e3 for _, m, e in kept])
    row = {"head_dim": head_dim, "hidden_size": hidden, "intermediate_size": intermediate,
           "attention_ratio": burst_attention / sustained_attention, "matmul_ratio": burst_matmul / sustained_matmul,
           "attention_flops_per_s": attention_flop / sustained_attention,
           "matmul_flops_per_s": matmul_flop / sustained_matmul,
           "attention_burst_flops_per_s": attention_flop / burst_attention,
           "matmul_burst_flops_per_s": matmul_flop / burst_matmul,
           "fill": fill, "copy_bytes": copy_bytes, "steps": len(marks), "seconds": elapsed_s,
           "wall_end": time.time()}
    for name in ("attention", "matmul"):
        ctx.progress(SECTION, f"{name} d{head_dim} burst / sustained ({fill}{', copies' if copy_bytes else ''})",
                     f"{format_rate(row[f'{name}_burst_flops_per_s'], 'FLOP')} / "
                     f"{format_rate(row[f'{name}_flops_per_s'], 'FLOP')} (x{row[f'{name}_ratio']:.3f})")
    del q, k, v, x, w, out, source, target
    ctx.free_memory()
    return row
