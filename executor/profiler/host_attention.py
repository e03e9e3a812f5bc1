"""Host attention: what the CPU's share of decode attention (engine/host_share.py) can do on this machine.

Four figures, each the executor's own code:
  host read      a sum over 2 x preset.host_copy_bytes of bf16 by all threads (bytes read per second): the ceiling
  kernel table   attention/host_attention.py over host rows of the Llama-3 8B shape (8 KV heads, 4 query heads
                 each, d 128, the executor's dtype), by key length (preset.host_attention_key_tokens) and threads
                 (1, half, all): KV bytes read per second of the call, host clock
  concurrency    (GPU) pinned host-to-device copies of 256 MiB queued on a side stream while the kernel runs on
                 the host over other memory, at a few thread counts: each side's rate meanwhile and alone
                 (the host's memory serves both; a desktop's DMA lost ~30% beside a CPU read)
  hand-off       one layer's submit -> worker -> collect -> float32 merge with 16 keys on the host (engine/
                 host_share.py end to end, the kernel nearly empty): the fixed cost per layer
Leaves out: NUMA placement (the executor's host store sits where the runner put it).
"""

from __future__ import annotations

import time

import torch

from executor.attention.host_attention import host_partial_attention
from executor.attention.lse import merge_by_lse
from executor.profiler.context import ProfileContext
from hwprofiles.schema import CpuAttentionPoint, HostConcurrencyPoint
from planner.units import MIB

SECTION = "host-attn"
KV_HEADS, RATIO, HEAD_DIM = 8, 4, 128
COPY_BYTES = 256 * MIB


def _dtype(ctx: ProfileContext) -> torch.dtype:
    return torch.bfloat16 if ctx.on_gpu else torch.float32


def _thread_counts() -> list[int]:
    most = torch.get_num_threads()
    return sorted({1, max(1, most // 2), most})


def measure_host_read(ctx: ProfileContext) -> dict:
    """{"host_read_bytes_per_s", "host_read_threads"}: a sum over 2 x preset.host_copy_bytes of bf16."""
    data = torch.empty(ctx.preset.host_copy_bytes, dtype=torch.bfloat16).uniform_(-1, 1)
    stats = ctx.time(lambda: data.sum(), warmup=1, repeats=max(3, ctx.preset.repeats // 2), on_host=True)
    rate = stats.rate(data.numel() * data.element_size())
    ctx.progress(SECTION, f"host read {data.numel() * 2 // MIB} MiB, {torch.get_num_threads()} threads",
                 f"{rate / 1e9:.1f} GB/s", stats)
    return {"host_read_bytes_per_s": rate, "host_read_threads": torch.get_num_threads()}


def _kernel_call(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, tokens: int, threads: int):
    return lambda: host_partial_attention(query, keys[:, :tokens], values[:, :tokens], scale=HEAD_DIM ** -0.5,
                                          threads=threads)


def measure_kernel_table(ctx: ProfileContext, keys: torch.Tensor, values: torch.Tensor,
                         query: torch.Tensor) -> list[CpuAttentionPoint]:
    """The kernel's KV bytes per second by key length and thread count (module docstring)."""
    points, most = [], torch.get_num_threads()
    try:
        for threads in _thread_counts():
            torch.set_num_threads(threads)
            for tokens in ctx.preset.host_attention_key_tokens:
                if tokens > keys.shape[1]:
                    continue
                stats = ctx.time(_kernel_call(keys, values, query, tokens, threads), warmup=1,
                                 repeats=max(3, ctx.preset.repeats // 2), on_host=True)
                nbytes = 2 * KV_HEADS * tokens * HEAD_DIM * keys.element_size()
                rate = stats.rate(nbytes)
                points.append(CpuAttentionPoint(threads=threads, kv_heads=KV_HEADS, ratio=RATIO, key_tokens=tokens,
                                                head_dim=HEAD_DIM, element_bytes=keys.element_size(),
                                                bytes_per_s=rate, spread_rel=stats.spread_rel))
                ctx.progress(SECTION, f"kernel {tokens // 1024}K keys x {KV_HEADS} heads, {threads} thr",
                             f"{rate / 1e9:.1f} GB/s", stats)
    finally:
        torch.set_num_threads(most)
    return points


def _kernel_rate_for(fn, nbytes: int, seconds: float) -> float:
    """Run ``fn`` repeatedly for about ``seconds``; bytes per second over the calls."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * nbytes / elapsed


def measure_concurrency(ctx: ProfileContext, keys: torch.Tensor, values: torch.Tensor,
                        query: torch.Tensor) -> list[HostConcurrencyPoint]:
    """Pinned H2D copies on a side stream beside the kernel on the host, at a few thread counts (GPU only)."""
    device, most = ctx.device, torch.get_num_threads()
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, pin_memory=True)
    source[:: 4096].fill_(1)
    target = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    stream = torch.cuda.Stream(device)
    tokens = keys.shape[1]
    kernel_bytes = 2 * KV_HEADS * tokens * HEAD_DIM * keys.element_size()

    def copies(count: int) -> tuple[torch.cuda.Event, torch.cuda.Event]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            for _ in range(count):
                target.copy_(source, non_blocking=True)
            end.record(stream)
        return start, end

    start, end = copies(8)
    end.synchronize()
    h2d_alone = 8 * COPY_BYTES / (start.elapsed_time(end) / 1e3)
    duration_s = 8 * COPY_BYTES * 4 / h2d_alone                     # the copies below take ~32 x 256 MiB
    points = []
    try:
        for threads in [t for t in _thread_counts() if t > 1] or [most]:
            torch.set_num_threads(threads)
            call = _kernel_call(keys, values, query, tokens, threads)
            cpu_alone = _kernel_rate_for(call, kernel_bytes, duration_s / 2)
            start, end = copies(32)
            cpu_during = _kernel_rate_for(call, kernel_bytes, duration_s * 0.8)   # inside the copies' window
            end.synchronize()
            h2d_during = 32 * COPY_BYTES / (start.elapsed_time(end) / 1e3)
            points.append(HostConcurrencyPoint(cpu_threads=threads, h2d_bytes_per_s=h2d_during,
                                               cpu_read_bytes_per_s=cpu_during, h2d_alone_bytes_per_s=h2d_alone,
                                               cpu_alone_bytes_per_s=cpu_alone))
            ctx.progress(SECTION, f"H2D + kernel ({threads} thr) at once",
                         f"{h2d_during / 1e9:.1f} + {cpu_during / 1e9:.1f} GB/s (alone {h2d_alone / 1e9:.1f} + "
                         f"{cpu_alone / 1e9:.1f})")
    finally:
        torch.set_num_threads(most)
    return points


def measure_handoff(ctx: ProfileContext) -> float:
    """Seconds per layer of the host share's hand-off (module docstring): median over preset.repeats x 20 layers."""
    from executor.engine.host_share import HostShare
    from executor.kv.host_store import HostKVStore
    from executor.kv.layout import KVLayout
    from executor.runtime.streams import StreamSet
    from executor.settings import ExecutionSettings

    layout = KVLayout.build(num_layers=1, kv_heads=KV_HEADS, query_heads=KV_HEADS * RATIO, head_dim=HEAD_DIM,
                            settings=ExecutionSettings(chunk_size=1, heads_per_group=KV_HEADS,
                                                       resident_kv_heads=0, capacity_tokens=32))
    dtype = _dtype(ctx)
    with HostKVStore(layout, dtype, pin=ctx.on_gpu, available_bytes=None) as host:
        share = HostShare(layout, host, share=1.0, device=ctx.device)
        streams = StreamSet(ctx.device, 1)
        query = torch.randn(1, KV_HEADS * RATIO, 1, HEAD_DIM, dtype=dtype, device=ctx.device)
        gpu_out = torch.zeros(1, KV_HEADS * RATIO, 1, HEAD_DIM, dtype=dtype, device=ctx.device)
        gpu_lse = torch.zeros(1, KV_HEADS * RATIO, 1, device=ctx.device)

        def layers() -> None:
            for _ in range(20):
                share.submit(0, query, 16, streams, scale=HEAD_DIM ** -0.5)
                host_out, host_lse, _ = share.collect(0)
                merge_by_lse([gpu_out, host_out], [gpu_lse, host_lse])
            if ctx.on_gpu:
                torch.cuda.synchronize(ctx.device)
        try:
            stats = ctx.time(layers, warmup=1, repeats=max(3, ctx.preset.repeats // 2), on_host=True)
        finally:
            share.close()
    handoff_s = stats.median_s / 20
    ctx.progress(SECTION, "hand-off per layer (16 keys)", f"{handoff_s * 1e6:.0f} us", stats)
    return handoff_s


def measure_host_attention(ctx: ProfileContext) -> dict:
    """The section: host read, kernel table, concurrency (GPU) and hand-off; the profile's host-attention fields."""
    result = measure_host_read(ctx)
    longest = max(ctx.preset.host_attention_key_tokens)
    dtype = _dtype(ctx)
    keys = torch.empty(KV_HEADS, longest, HEAD_DIM, dtype=dtype).uniform_(-1, 1)   # host rows, as the store's
    values = torch.empty(KV_HEADS, longest, HEAD_DIM, dtype=dtype).uniform_(-1, 1)
    query = torch.randn(KV_HEADS, RATIO, HEAD_DIM, dtype=dtype)
    result["cpu_attention_table"] = measure_kernel_table(ctx, keys, values, query)
    result["host_concurrency_table"] = measure_concurrency(ctx, keys, values, query) if ctx.on_gpu else []
    result["host_share_handoff_s"] = measure_handoff(ctx)
    return result
