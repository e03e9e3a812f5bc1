"""Attention throughput table, with the kernels the executor runs (executor/attention/), and cuDNN's graph-build cost.

Shapes (GQA ratio r: 4, and the preset's extra shapes' ratios; G KV heads per call, head dim d, chunk of q_len queries):
- ``flash``: ``aten._scaled_dot_product_flash_attention(q, k, v, 0.0, is_causal=True)``, lower-right causal
  (query i sees keys up to k_len - q_len + i), GQA native: q [1, G*r, q_len, d], k/v [1, G, k_len, d] with
  k_len = past + q_len >= q_len. Used for prefill (whole chunk) and decode (q_len = 1).
- ``cudnn``: ``aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)``, the
  chunk-vs-past part, non-causal, the group's query heads packed into rows: q viewed as [1, G, r*q_len, d]
  against k/v [1, G, k_len, d] with k_len = past length. Recorded with q_heads = G*r and q_len = chunk. And the
  square causal chunk part (square_causal_sweep): q [1, G*r, c, d] against k/v [1, G, c, d], causal=True.
- CPU: ``F.scaled_dot_product_attention`` with KV heads repeated and an explicit lower-right mask, backend
  "cpu" (no flash/cuDNN kernels there).
FLOPs (hwprofiles.schema.AttentionPoint): 4 * q_heads * d * attended pairs; causal pairs = q_len * (k_len -
q_len) + q_len * (q_len + 1) / 2, non-causal q_len * k_len. Calls above the preset's FLOP cap or memory are
skipped; the sweep stops at the preset's time budget (noted). Leaves out: the executor's own merging of the
two parts by log-sum-exp (executor/attention/split.py).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from executor.profiler.config import GQA_RATIO
from executor.profiler.context import ProfileContext, compute_dtype
from executor.runtime.timing import host_seconds
from planner.units import format_rate
from hwprofiles.schema import AttentionPoint


def attention_flops(*, q_heads: int, head_dim: int, q_len: int, k_len: int, causal: bool) -> float:
    """FLOPs of one call, as the schema counts them (two matmuls of 2 FLOPs per multiply-add)."""
    if causal:
        pairs = q_len * (k_len - q_len) + q_len * (q_len + 1) / 2  # lower-right aligned triangle
    else:
        pairs = q_len * k_len
    return 4.0 * q_heads * head_dim * pairs


def flash_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Executor's flash path: q [1, Hq, Lq, d], k/v [1, Hkv, Lk, d] -> out [1, Hq, Lq, d], lower-right causal."""
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True)[0]


def cudnn_packed(q_packed: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Executor's cuDNN chunk-vs-past path: q [1, G, r*Lq, d], k/v [1, G, Lk, d], non-causal, with lse."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q_packed, k, v, None, True, 0.0, False, False)[0]


def cpu_causal_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A CPU call equivalent to flash_causal; expansion and mask are built once, outside the timing."""
    ratio = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(ratio, dim=1), v.repeat_interleave(ratio, dim=1)
    q_len, k_len = q.shape[2], k.shape[2]
    mask = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=k_len - q_len)
    return lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask)


def grid(ctx: ProfileContext, backend: str) -> Iterator[tuple[int, int, int, int, list[int]]]:
    """(head_dim, GQA ratio, kv_heads, q_len, k_lens ascending) per series, over the preset's attention shapes
    (config.Preset.attention_shapes), q_len by q_len in the preset's order (its priority). Causal flash needs k_len >= q_len (the square first-chunk case k_len =
    q_len is added); cuDNN's k_len is the past and skips decode."""
    preset = ctx.preset
    for q_len in preset.q_lens:  # outermost: a sweep stopped at its budget has every shape at the first q_lens
        for (head_dim, ratio), kv_heads_per_call in preset.attention_shapes():
            for kv_heads in kv_heads_per_call:
                if backend == "cudnn":
                    if q_len == 1:
                        continue
                    k_lens = list(preset.k_lens)
                else:
                    k_lens = sorted({k for k in preset.k_lens if k >= q_len} | ({q_len} if q_len > 1 else set()))
                yield head_dim, ratio, kv_heads, q_len, k_lens


def _ratio_tag(ratio: int) -> str:
    """" r8" in progress lines and notes for a GQA ratio other than GQA_RATIO (whose lines read as before)."""
    return "" if ratio == GQA_RATIO else f" r{ratio}"


def _one_point(ctx: ProfileContext, backend: str, head_dim: int, kv_heads: int, q_len: int,
               k_len: int, ratio: int = GQA_RATIO) -> AttentionPoint:
    q_heads = kv_heads * ratio
    dtype = compute_dtype(ctx.device)
    q = ctx.randn(1, q_heads, q_len, head_dim, dtype=dtype)
    k = ctx.randn(1, kv_heads, k_len, head_dim, dtype=dtype)
    v = ctx.randn(1, kv_heads, k_len, head_dim, dtype=dtype)
    causal = backend != "cudnn"
    if backend == "cudnn":
        q_packed = q.view(1, kv_heads, ratio * q_len, head_dim)  # head h -> group h // r: a pure view
        call = lambda: cudnn_packed(q_packed, k, v)  # noqa: E731
    elif backend == "flash":
        call = lambda: flash_causal(q, k, v)  # noqa: E731
    else:
        call = cpu_causal_fn(q, k, v)
    stats = ctx.time(call, warmup=max(2, ctx.preset.warmup))  # first warm-up call builds cuDNN's graph
    flops = attention_flops(q_heads=q_heads, head_dim=head_dim, q_len=q_len, k_len=k_len, causal=causal)
    rate = stats.rate(flops)
    figure = format_rate(rate, "FLOP")
    if q_len == 1:
        kv_bytes = 2 * k.numel() * k.element_size()
        figure += f"  ({stats.rate(kv_bytes) / 1e9:.0f} GB/s KV read)"
    ctx.progress("attention", f"{backend} d{head_dim}{_ratio_tag(ratio)} G{kv_heads} q{q_len} k{k_len}", figure, stats)
    return AttentionPoint(backend=backend, head_dim=head_dim, q_heads=q_heads, kv_heads=kv_heads, q_len=q_len,
                          k_len=k_len, causal=causal, flops_per_s=rate, spread_rel=stats.spread_rel)


def _point_bytes(ctx: ProfileContext, head_dim: int, kv_heads: int, q_len: int, k_len: int,
                 ratio: int = GQA_RATIO) -> int:
    element_bytes = torch.tensor([], dtype=compute_dtype(ctx.device)).element_size()
    q_and_out = 2 * kv_heads * ratio * q_len * head_dim
    k_and_v = 2 * kv_heads * k_len * head_dim
    expanded = 0 if ctx.on_gpu else ratio * k_and_v + q_len * k_len  # CPU: repeated KV and the mask
    return (q_and_out + k_and_v + expanded) * element_bytes


def sweep(ctx: ProfileContext, backend: str, deadline_s: float) -> list[AttentionPoint]:
    """All points of one backend within the FLOP cap, memory and the deadline (ctx.elapsed_s())."""
    points = []
    for head_dim, ratio, kv_heads, q_len, k_lens in grid(ctx, backend):
        for k_len in k_lens:
            flops = attention_flops(q_heads=kv_heads * ratio, head_dim=head_dim, q_len=q_len, k_len=k_len,
                                    causal=backend != "cudnn")
            if flops > ctx.preset.attention_max_flop_per_call:
                break  # k_lens ascend: every later one is larger
            if not ctx.fits(_point_bytes(ctx, head_dim, kv_heads, q_len, k_len, ratio)):
                ctx.note(f"attention {backend} d{head_dim}{_ratio_tag(ratio)} G{kv_heads} q{q_len} k{k_len}+ "
                         "skipped: no memory")
                break
            if ctx.elapsed_s() > deadline_s:
                ctx.note(f"attention {backend} sweep stopped at its time budget (d{head_dim} G{kv_heads} "
                         f"q{q_len} k{k_len} onward not measured)")
                return points
            try:
                points.append(_one_point(ctx, backend, head_dim, kv_heads, q_len, k_len, ratio))
            except RuntimeError as exc:  # includes torch.OutOfMemoryError; a kernel refusing a shape
                ctx.note(f"attention {backend} d{head_dim}{_ratio_tag(ratio)} G{kv_heads} q{q_len} k{k_len} "
                         "failed, series "
                         f"skipped: {str(exc).splitlines()[0][:120]}")
                ctx.free_memory()
                break
            ctx.release_blocks()
    return points


def cudnn_available(ctx: ProfileContext) -> bool:
    """Whether the cuDNN attention op runs here (GPU with cuDNN's SDPA support); notes why not."""
    if not ctx.on_gpu:
        return False
    try:
        q = ctx.randn(1, 1, 2 * GQA_RATIO * 64, 64, dtype=torch.bfloat16)
        k = ctx.randn(1, 1, 128, 64, dtype=torch.bfloat16)
        cudnn_packed(q, k, k)
        torch.cuda.synchronize(ctx.device)
        return True
    except (RuntimeError, NotImplementedError) as exc:
        ctx.note(f"cuDNN attention unavailable, not profiled: {str(exc).splitlines()[0][:120]}")
        return False


def measure_cudnn_graph_build(ctx: ProfileContext) -> float | None:
    """Lower median seconds of the first cuDNN call at a new shape minus a steady call at that shape, after one
    untimed call (ONE_TIME_LOAD).

    The key lengths are new multiples of 2048, like the past blocks the executor's cudnn-split sends
    (executor/attention/split.py): misaligned lengths (e.g. 4160) build far slower (~0.5 s against ~0.05 s on
    an H100) and the executor never asks for them."""
    q_len, head_dim = min(max(ctx.preset.q_lens), 4096), ctx.preset.head_dims[0]
    q = ctx.randn(1, 1, GQA_RATIO * q_len, head_dim, dtype=torch.bfloat16)
    first = ctx.randn(1, 1, 2048 * 3, head_dim, dtype=torch.bfloat16)
    host_seconds(lambda: cudnn_packed(q, first, first), device=ctx.device)   # untimed: see ONE_TIME_LOAD
    build_s = []
    for index in range(ctx.preset.cudnn_graph_builds):
        k_len = 2048 * (2 * index + 5)  # 10K, 14K, 18K...: aligned like the executor's blocks, not in the sweep
        k = ctx.randn(1, 1, k_len, head_dim, dtype=torch.bfloat16)
        first_s = host_seconds(lambda: cudnn_packed(q, k, k), device=ctx.device)
        steady_s = host_seconds(lambda: cudnn_packed(q, k, k), device=ctx.device)
        build_s.append(max(first_s - steady_s, 0.0))
        ctx.progress("attention", f"cudnn graph build (new k_len {k_len})", f"{build_s[-1] * 1e3:.1f} ms")
    return lower_median(build_s)


# ONE_TIME_LOAD: in the profiler's process the first build of each kind (non-causal, causal) at the head dim took
# ~0.7 s on the H100 and the builds after it 46-69 ms (H100, 2026-11-22, before the untimed first call was added),
# while the executor's runs show no such first cost (the 16K chunk 0 of a 128K prefill ran 0.67 s in all, predicted
# 1.32 s with the 0.78 s figure). So each measurement starts with one untimed call of its kind at a shape no other
# measurement uses, and keeps the lower median.


def lower_median(values: list[float]) -> float | None:
    """The median of an odd count, the lower middle of an even one (two builds: the smaller); None if empty."""
    return sorted(values)[(len(values) - 1) // 2] if values else None


CAUSAL_BUILD_CHUNKS = (8192 + 2048, 8192 + 6144)   # square causal shapes no sweep or executor step has used
CAUSAL_LOAD_CHUNK = 8192 + 4096                     # untimed first causal call (ONE_TIME_LOAD)


def measure_cudnn_causal_graph_build(ctx: ProfileContext) -> float | None:
    """Lower median seconds of the first cuDNN call at a new square causal shape (q = k = c tokens, GQA heads as the
    split's chunk part passes them: 4 query heads on 1 KV head) minus a steady call at that shape. The planner
    prices the chunk part's graph builds with it (a 1B prefill of one 32K chunk ran ~0.46 s over its plan on the
    H100, most likely that build, against 53 ms measured for non-causal shapes)."""
    head_dim, build_s = ctx.preset.head_dims[0], []
    chunks = (CAUSAL_LOAD_CHUNK,) + CAUSAL_BUILD_CHUNKS[:max(1, ctx.preset.cudnn_graph_builds - 1)]
    for index, chunk in enumerate(chunks):
        q = ctx.randn(1, GQA_RATIO, chunk, head_dim, dtype=torch.bfloat16)
        k = ctx.randn(1, 1, chunk, head_dim, dtype=torch.bfloat16)

        def call():
            return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, k, None, True, 0.0, True, False)[0]

        first_s = host_seconds(call, device=ctx.device)
        if index == 0:   # ONE_TIME_LOAD: untimed
            continue
        steady_s = host_seconds(call, device=ctx.device)
        build_s.append(max(first_s - steady_s, 0.0))
        ctx.progress("attention", f"cudnn causal graph build (new c {chunk})", f"{build_s[-1] * 1e3:.1f} ms")
    return lower_median(build_s)


def cudnn_square_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The cudnn-split chunk part on cuDNN (executor/attention/split.py partial_cudnn, causal): q [1, Hq, c, d],
    k/v [1, Hkv, c, d] (GQA as is), square causal, with lse."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False)[0]


def square_causal_sweep(ctx: ProfileContext, deadline_s: float) -> list[AttentionPoint]:
    """Points of backend "cudnn", causal, q_len = k_len = c: the chunk-vs-itself part, for every (head dim, GQA
    ratio) of the preset's attention shapes at its square_causal_kv_heads and square_causal_chunks. The planner
    prices the chunk part on the faster of these and flash's square points (planner/attention_time.py
    layer_chunk_backend), and the plan tells the executor which (SplitOptions.chunk_backend)."""
    points = []
    dtype = compute_dtype(ctx.device)
    for (head_dim, ratio), _kv_heads in ctx.preset.attention_shapes():
        for kv_heads in ctx.preset.square_causal_kv_heads:
            for chunk in ctx.preset.square_causal_chunks:
                what = f"cudnn causal d{head_dim}{_ratio_tag(ratio)} G{kv_heads} q{chunk} k{chunk}"
                if ctx.elapsed_s() > deadline_s:
                    ctx.note(f"attention {what} onward not measured: the sweep's time budget")
                    return points
                if not ctx.fits(_point_bytes(ctx, head_dim, kv_heads, chunk, chunk, ratio)):
                    ctx.note(f"attention {what} skipped: no memory")
                    break
                q = ctx.randn(1, kv_heads * ratio, chunk, head_dim, dtype=dtype)
                k = ctx.randn(1, kv_heads, chunk, head_dim, dtype=dtype)
                v = ctx.randn(1, kv_heads, chunk, head_dim, dtype=dtype)
                try:
                    stats = ctx.time(lambda: cudnn_square_causal(q, k, v), warmup=max(2, ctx.preset.warmup))
                except RuntimeError as exc:
                    ctx.note(f"attention {what} failed, series skipped: {str(exc).splitlines()[0][:120]}")
                    ctx.free_memory()
                    break
                flops = attention_flops(q_heads=kv_heads * ratio, head_dim=head_dim, q_len=chunk, k_len=chunk,
                                        causal=True)
                rate = stats.rate(flops)
                ctx.progress("attention", what, format_rate(rate, "FLOP"), stats)
                points.append(AttentionPoint(backend="cudnn", head_dim=head_dim, q_heads=kv_heads * ratio,
                                             kv_heads=kv_heads, q_len=chunk, k_len=chunk, causal=True,
                                             flops_per_s=rate, spread_rel=stats.spread_rel))
                del q, k, v
    ctx.free_memory()
    return points


def measure_square_causal_section(ctx: ProfileContext) -> list[AttentionPoint]:
    """square_causal_sweep alone (benchmarks/profile_section.py --section cudnn-causal), after one untimed causal
    call (ONE_TIME_LOAD); [] (noted) without cuDNN attention."""
    if not cudnn_available(ctx):
        return []
    measure_cudnn_causal_graph_build(ctx)
    return square_causal_sweep(ctx, ctx.elapsed_s() + ctx.preset.attention_budget_s)


def measure_attention(ctx: ProfileContext) -> dict:
    """{"points": [AttentionPoint], "cudnn_graph_build_s": float | None,
    "cudnn_causal_graph_build_s": float | None}."""
    deadline_s = ctx.elapsed_s() + ctx.preset.attention_budget_s
    if not ctx.on_gpu:
        return {"points": sweep(ctx, "cpu", deadline_s), "cudnn_graph_build_s": None,
                "cudnn_causal_graph_build_s": None}
    started_s = time.perf_counter()
    flash_share = 0.55 if ctx.preset.cudnn_graph_builds else 1.0  # cuDNN keeps the rest (and what is left)
    points = sweep(ctx, "flash", ctx.elapsed_s() + flash_share * ctx.preset.attention_budget_s)
    graph_build_s = causal_build_s = None
    if ctx.preset.cudnn_graph_builds and cudnn_available(ctx):
        graph_build_s = measure_cudnn_graph_build(ctx)
        causal_build_s = measure_cudnn_causal_graph_build(ctx)
        points += square_causal_sweep(ctx, deadline_s)
        points += sweep(ctx, "cudnn", deadline_s)
    ctx.progress("attention", f"{len(points)} points", f"in {time.perf_counter() - started_s:.1f} s")
    ctx.free_memory()
    return {"points": points, "cudnn_graph_build_s": graph_build_s, "cudnn_causal_graph_build_s": causal_build_s}
