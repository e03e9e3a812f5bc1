"""FlexAttention points at Gemma-2's shapes: the executor's soft-capped prefill call (attention/flex.py
attend_flex: the past part, the causal chunk part, their log-sum-exp merge), timed as backend "flex".

Shapes: head dim 256, GQA ratio 2 (Gemma-2-9B: 16 query heads on 8 KV heads; 2B has the same ratio), soft-cap 50,
G KV heads per call from the preset, chunks of q_len >= 1K queries against k_len = past + chunk keys, causal; and the decode call (q_len 1 over k_len
keys: the compiled flex decode kernel, which prices soft-capped decode; planner/attention_time.py).
FLOPs as the schema counts them (4 * q_heads * d * causal pairs). The first call of the process compiles
the kernel (torch.compile; seconds): its warm-up calls absorb that, and compile's automatic dynamic shapes keep
later key lengths from compiling again. Leaves out: the sliding layers' windowed calls (at most W - 1 + c keys:
small next to the full-attention layers at long context).
Also the GPU memory the compiled kernels take outside PyTorch's allocator (measure_flex_section): the device's used
bytes less the allocator's reserve, after the sweep against before it (the driver may grow a context's pools for the
kernels it loads and runs). On the H200 (2026-12-01) the quick sweep added 99 MB. A Gemma-2-9B run there used
2.56-2.70 GB outside the allocator (at 128K, 256K and 700K) where Llama runs use 0.79 GB: the flex kernels do not
explain that difference (benchmarks/flex_memory_probe.py: +2 MiB for every kind of call), and it is not priced yet.
"""

from __future__ import annotations

import time

from executor.profiler.context import ProfileContext, compute_dtype
from executor.profiler.attention import attention_flops
from hwprofiles.schema import AttentionPoint
from planner.units import format_rate

SECTION = "attention-flex"
GEMMA2_HEAD_DIM = 256
GEMMA2_GQA_RATIO = 2
GEMMA2_SOFTCAP = 50.0
BUDGET_SHARE = 0.35
"""of the preset's attention budget"""


def measure_flex_section(ctx: ProfileContext) -> dict:
    """{"points": the flex points (measure_flex), "flex_runtime_overhead_bytes": the non-allocator GPU bytes
    the sweep added (None without a GPU)}."""
    before = _outside_allocator_bytes(ctx)
    points = measure_flex(ctx)
    after = _outside_allocator_bytes(ctx)
    extra = None if before is None or after is None else max(0, after - before)
    if extra is not None:
        ctx.progress(SECTION, "GPU memory outside the allocator after the flex kernels", f"+{extra / 2**20:.0f} MiB")
    return {"points": points, "flex_runtime_overhead_bytes": extra}


def _outside_allocator_bytes(ctx: ProfileContext):
    """Device bytes in use less the allocator's reserve (context, libraries, driver pools), after freeing cached
    blocks; None without a GPU."""
    if not ctx.on_gpu:
        return None
    import torch

    from executor.profiler.runtime import device_used_bytes

    ctx.free_memory()
    return device_used_bytes(ctx.device) - int(torch.cuda.memory_reserved(ctx.device))


def measure_flex(ctx: ProfileContext) -> list[AttentionPoint]:
    """The "flex" points within the FLOP cap, memory and BUDGET_SHARE of the attention budget (noted when cut),
    counted from the first point on (its warm-up compiles the kernel)."""
    from executor.attention.flex import attend_flex

    deadline_s = None  # set after the first point: its warm-up holds the compile, which the budget leaves out
    dtype, points = compute_dtype(ctx.device), []
    q_lens = [q for q in ctx.preset.q_lens if q >= 1024]
    for kv_heads in ctx.preset.kv_heads_per_call:
        q_heads = kv_heads * GEMMA2_GQA_RATIO
        for q_len in q_lens:
            for past in sorted({0, *ctx.preset.k_lens}):
                k_len = past + q_len
                flops = attention_flops(q_heads=q_heads, head_dim=GEMMA2_HEAD_DIM, q_len=q_len, k_len=k_len,
                                        causal=True)
                element_bytes = 2 * (2 * q_heads * q_len + 2 * kv_heads * k_len) * GEMMA2_HEAD_DIM
                if flops > ctx.preset.attention_max_flop_per_call or not ctx.fits(element_bytes + 10 * q_heads
                                                                                  * q_len * GEMMA2_HEAD_DIM):
                    break
                if deadline_s is not None and time.perf_counter() > deadline_s:
                    ctx.note(f"attention flex sweep stopped at its time budget (G{kv_heads} q{q_len} k{k_len} "
                             "onward not measured)")
                    return points + measure_flex_decode(ctx, dtype)  # the decode points are cheap: always taken
                q = ctx.randn(1, q_heads, q_len, GEMMA2_HEAD_DIM, dtype=dtype)
                k = ctx.randn(1, kv_heads, k_len, GEMMA2_HEAD_DIM, dtype=dtype)
                v = ctx.randn(1, kv_heads, k_len, GEMMA2_HEAD_DIM, dtype=dtype)
                try:
                    stats = ctx.time(lambda: attend_flex(q, k, v, scale=GEMMA2_HEAD_DIM ** -0.5,
                                                         softcap=GEMMA2_SOFTCAP, window=None),
                                     warmup=max(2, ctx.preset.warmup))
                except Exception as exc:  # noqa: BLE001 - a compile or kernel failure ends the series, noted
                    ctx.note(f"attention flex d{GEMMA2_HEAD_DIM} G{kv_heads} q{q_len} k{k_len} failed, series "
                             f"skipped: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
                    ctx.free_memory()
                    break
                if deadline_s is None:
                    deadline_s = time.perf_counter() + BUDGET_SHARE * ctx.preset.attention_budget_s
                rate = stats.rate(flops)
                ctx.progress(SECTION, f"flex d{GEMMA2_HEAD_DIM} G{kv_heads} q{q_len} k{k_len}",
                             format_rate(rate, "FLOP"), stats)
                points.append(AttentionPoint(backend="flex", head_dim=GEMMA2_HEAD_DIM, q_heads=q_heads,
                                             kv_heads=kv_heads, q_len=q_len, k_len=k_len, causal=True,
                                             flops_per_s=rate, spread_rel=stats.spread_rel))
                del q, k, v
                ctx.release_blocks()
    return points + measure_flex_decode(ctx, dtype)


DECODE_MAX_KV_BYTES = 4 << 30
"""the largest K + V one decode point reads (longer key lengths are extrapolated from the curve)"""


def measure_flex_decode(ctx: ProfileContext, dtype) -> list[AttentionPoint]:
    """q_len 1 "flex" points: one soft-capped query per query head over k_len keys (attend_flex's single decode
    call), for each preset KV head count and key length up to DECODE_MAX_KV_BYTES of K + V."""
    from executor.attention.flex import attend_flex

    points = []
    for kv_heads in ctx.preset.kv_heads_per_call:
        q_heads = kv_heads * GEMMA2_GQA_RATIO
        for k_len in ctx.preset.k_lens:
            kv_bytes = 2 * kv_heads * k_len * GEMMA2_HEAD_DIM * 2
            if kv_bytes > DECODE_MAX_KV_BYTES or not ctx.fits(kv_bytes + (64 << 20)):
                break
            q = ctx.randn(1, q_heads, 1, GEMMA2_HEAD_DIM, dtype=dtype)
            k = ctx.randn(1, kv_heads, k_len, GEMMA2_HEAD_DIM, dtype=dtype)
            v = ctx.randn(1, kv_heads, k_len, GEMMA2_HEAD_DIM, dtype=dtype)
            try:
                stats = ctx.time(lambda: attend_flex(q, k, v, scale=GEMMA2_HEAD_DIM ** -0.5, softcap=GEMMA2_SOFTCAP,
                                                     window=None), warmup=max(2, ctx.preset.warmup))
            except Exception as exc:  # noqa: BLE001 - a compile or kernel failure ends the series, noted
                ctx.note(f"attention flex decode G{kv_heads} k{k_len} failed, series skipped: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
                ctx.free_memory()
                break
            flops = 4.0 * q_heads * GEMMA2_HEAD_DIM * k_len
            rate = stats.rate(flops)
            ctx.progress(SECTION, f"flex decode d{GEMMA2_HEAD_DIM} G{kv_heads} k{k_len}",
                         f"{format_rate(rate, 'FLOP')}, {kv_bytes / stats.median_s / 1e9:.1f} GB/s of K+V", stats)
            points.append(AttentionPoint(backend="flex", head_dim=GEMMA2_HEAD_DIM, q_heads=q_heads, kv_heads=kv_heads,
                                         q_len=1, k_len=k_len, causal=True, flops_per_s=rate,
                                         spread_rel=stats.spread_rel))
            del q, k, v
            ctx.release_blocks()
    return points
