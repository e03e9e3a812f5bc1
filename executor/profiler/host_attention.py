"""Host attention: what the CPU's share of decode attention (engine/host_share.py) can do on this machine.

Four figures, each the executor's own code:
  host read      a sum over 2 x preset.host_copy_bytes of bf16 by all threads (bytes read per second): the ceiling
  kernel table   attention/host_attention.py over host rows of the Llama-3 8B shape (8 KV heads, 4 query heads
                 each, d 128, the executor's dtype), by key length (preset.host_attention_key_tokens) and threads
                 (1, half, all): KV bytes read per second of the call, host clock
  concurrency    (GPU) as a decode step runs the pair: the kernel on a worker thread while the main thread queues
                 group-sized pinned fetches with small launches between them (measure_concurrency), at a few
                 thread counts: each side's rate meanwhile and alone (the host's memory and cores serve both; a
                 desktop's DMA lost ~30% beside a CPU read)
  hand-off       one layer's submit -> worker -> collect -> float32 merge with 16 keys on the host (engine/
                 host_share.py end to end, the kernel nearly empty): the fixed cost per layer
  call cost      the job as a decode step calls it (engine/host_share.py HostShare, the scripted job): the worker
                 idle for a layer's gap between calls, the main thread issuing ~1 ms of small launches after each
                 submit, then joining; at two key lengths of the table. Per call, intercept = max(0, job seconds -
                 bytes / the table's rate at that length and the run's threads); median over the calls of both:
                 host_attention_call_s, the fixed cost per call the back-to-back table does not see (the thread
                 team waking after the idle gap, the tasks' set-up; the H200's run of 2026-12-01 fitted 1.4 ms)
Leaves out: NUMA placement (the executor's host store sits where the runner put it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Optional

import torch

from executor.attention.host_attention import host_partial_attention
from executor.attention.lse import merge_by_lse
from executor.engine.host_share import default_host_threads
from executor.profiler.context import ProfileContext
from hwprofiles.schema import CpuAttentionPoint, HostConcurrencyPoint
from planner.host_share import CONCURRENCY_KEY_TOKENS
from planner.units import MIB

SECTION = "host-attn"
KV_HEADS, RATIO, HEAD_DIM = 8, 4, 128
GROUP_COPY_BYTES = 64 * MIB
"""one group's K or V fetch in decode (2 heads x 128K keys x d 128 x 2 bytes)"""


def _dtype(ctx: ProfileContext) -> torch.dtype:
    return torch.bfloat16 if ctx.on_gpu else torch.float32


def run_threads() -> int:
    """The executor's default kernel threads (engine/host_share.py default_host_threads: cores - 1), which the
    planner reads the table at (planner/host_share.py run_host_threads: host_read_threads - 1)."""
    return default_host_threads()


def _thread_counts() -> list[int]:
    """1 (the per-thread rate), half, the run's default and all of torch's threads."""
    most = torch.get_num_threads()
    return sorted({1, max(1, most // 2), run_threads(), most})


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


class _KernelLoop:
    """The kernel over ``keys`` on its own thread at ``threads`` threads (as engine/host_share.py runs it: a worker
    thread with its own OpenMP team, the main thread free to issue GPU work), called back to back for a window:
    the KV bytes per second of the kernel's own seconds."""

    def __init__(self, call, nbytes: int, threads: int):
        self._call, self._nbytes, self._threads = call, nbytes, threads

    def run(self, seconds: float, busy_main=None) -> float:
        """Kernel rate over a window of ``seconds``; ``busy_main()`` runs on the calling thread meanwhile (it is
        called until the window ends)."""
        result: dict = {}

        def loop() -> None:
            torch.set_num_threads(self._threads)
            self._call()                                              # the team's first call builds it
            calls, kernel_s, start = 0, 0.0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                begin = time.perf_counter()
                self._call()
                kernel_s += time.perf_counter() - begin
                calls += 1
            result["rate"] = calls * self._nbytes / kernel_s

        worker = threading.Thread(target=loop, name="headplan-profile-host-attention")
        worker.start()
        while worker.is_alive():
            if busy_main is None:
                worker.join(timeout=0.01)
            else:
                busy_main()
        worker.join()
        return result["rate"]


def _issue_like_decode(ctx: ProfileContext, copy_group, launches: int):
    """The main thread's part in a decode layer with a host share: queue one group's fetch (pinned rows ->
    device, the run's group size) and ``launches`` small kernels on the compute stream, as the offload loop
    issues them; returns the (start, end) events of the fetch. Waits (host) when the copy stream is ~8 fetches
    ahead, so the link is busy the whole window and the queue never grows without bound."""
    pending: list = []
    scratch = torch.zeros(64, device=ctx.device)

    def step():
        while len(pending) >= 8:
            pending.pop(0)[1].synchronize()
        pending.append(copy_group())
        for _ in range(launches):
            scratch.add_(1.0)
        return pending[-1]
    return step


def measure_concurrency(ctx: ProfileContext, keys: torch.Tensor, values: torch.Tensor,
                        query: torch.Tensor) -> list[HostConcurrencyPoint]:
    """The pair as a decode step with a host share runs it (GPU only): the kernel on a worker thread at a few
    thread counts (the run's default, cores - 1, among them) over 8 heads x 128K keys, while the main thread
    queues group-sized pinned fetches (GROUP_COPY_BYTES, strided rows of a store-like buffer) with small kernel
    launches between them. Each side's rate meanwhile (the DMA's from CUDA events around each fetch, so idle
    gaps do not count) and alone (the kernel on the same worker after its warm-up call; the fetches with the
    host idle). Alone and together alternate twice; medians."""
    device, most = ctx.device, torch.get_num_threads()
    rows = GROUP_COPY_BYTES // (2 * HEAD_DIM * 2)                       # tokens of one head's K or V per fetch
    source = torch.empty((2, 2 * rows, HEAD_DIM), dtype=torch.bfloat16, pin_memory=True)
    source.view(torch.uint8)[..., ::4096].fill_(1)
    target = torch.empty((2, rows, HEAD_DIM), dtype=torch.bfloat16, device=device)
    stream = torch.cuda.Stream(device)
    fetch_bytes = target.numel() * target.element_size()
    timings: list = []

    def copy_group():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            for head in range(2):                                      # one copy per head's rows, as the store's
                target[head].copy_(source[head, rows:], non_blocking=True)   # fetch (engine/offload.py)
            end.record(stream)
        timings.append((start, end))
        return start, end

    def dma_rate() -> float:
        torch.cuda.synchronize(device)
        busy_s = sum(start.elapsed_time(end) for start, end in timings) / 1e3
        rate = len(timings) * fetch_bytes / busy_s
        timings.clear()
        return rate

    tokens = min(keys.shape[1], CONCURRENCY_KEY_TOKENS)
    kernel_bytes = 2 * KV_HEADS * tokens * HEAD_DIM * keys.element_size()
    for _ in range(8):
        copy_group()
    dma_rate()
    window_s = 0.25
    points = []
    counts = sorted({max(1, most // 2), run_threads(), most})
    try:
        for threads in counts:
            loop = _KernelLoop(_kernel_call(keys, values, query, tokens, threads), kernel_bytes, threads)
            alone, during, h2d_alone, h2d_during = [], [], [], []
            for _ in range(2):
                alone.append(loop.run(window_s))
                issue = _issue_like_decode(ctx, copy_group, launches=20)
                deadline = time.perf_counter() + window_s
                while time.perf_counter() < deadline:
                    issue()
                h2d_alone.append(dma_rate())
                during.append(loop.run(window_s, busy_main=issue))
                h2d_during.append(dma_rate())
            point = HostConcurrencyPoint(cpu_threads=threads, h2d_bytes_per_s=_median(h2d_during),
                                         cpu_read_bytes_per_s=_median(during),
                                         h2d_alone_bytes_per_s=_median(h2d_alone),
                                         cpu_alone_bytes_per_s=_median(alone))
            points.append(point)
            ctx.progress(SECTION, f"H2D fetches + kernel ({threads} thr, worker) at once",
                         f"{point.h2d_bytes_per_s / 1e9:.1f} + {point.cpu_read_bytes_per_s / 1e9:.1f} GB/s (alone "
                         f"{point.h2d_alone_bytes_per_s / 1e9:.1f} + {point.cpu_alone_bytes_per_s / 1e9:.1f})")
    finally:
        torch.set_num_threads(most)
    return points


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@contextlib.contextmanager
def _share_rig(ctx: ProfileContext, capacity_tokens: int):
    """(HostShare, StreamSet, query [1, 32, 1, 128]) over a one-layer host store of 8 heads x ``capacity_tokens``
    (uniform rows, pinned on a GPU), F = 1, the run's default threads: the executor's own path end to end."""
    from executor.engine.host_share import HostShare
    from executor.kv.host_store import HostKVStore
    from executor.kv.layout import KVLayout
    from executor.runtime.streams import StreamSet
    from executor.settings import ExecutionSettings

    layout = KVLayout.build(num_layers=1, kv_heads=KV_HEADS, query_heads=KV_HEADS * RATIO, head_dim=HEAD_DIM,
                            settings=ExecutionSettings(chunk_size=1, heads_per_group=KV_HEADS,
                                                       resident_kv_heads=0, capacity_tokens=capacity_tokens))
    dtype = _dtype(ctx)
    with HostKVStore(layout, dtype, pin=ctx.on_gpu, available_bytes=None) as host:
        host.keys[0].uniform_(-1, 1)
        host.values[0].uniform_(-1, 1)
        share = HostShare(layout, host, share=1.0, device=ctx.device)
        try:
            yield share, StreamSet(ctx.device, 1), torch.randn(1, KV_HEADS * RATIO, 1, HEAD_DIM, dtype=dtype,
                                                               device=ctx.device)
        finally:
            share.close()


def measure_handoff(ctx: ProfileContext) -> float:
    """Seconds per layer of the host share's hand-off (module docstring): median over preset.repeats x 20 layers."""
    with _share_rig(ctx, 32) as (share, streams, query):
        gpu_out = torch.zeros_like(query)
        gpu_lse = torch.zeros(1, KV_HEADS * RATIO, 1, device=ctx.device)

        def layers() -> None:
            for _ in range(20):
                share.submit(0, query, 16, streams, scale=HEAD_DIM ** -0.5)
                host_out, host_lse, _ = share.collect(0)
                merge_by_lse([gpu_out, host_out], [gpu_lse, host_lse])
            if ctx.on_gpu:
                torch.cuda.synchronize(ctx.device)
            share.take_timings(wait=True)   # the stream wait's timelines (none with the join)
        stats = ctx.time(layers, warmup=1, repeats=max(3, ctx.preset.repeats // 2), on_host=True)
    handoff_s = stats.median_s / 20
    ctx.progress(SECTION, "hand-off per layer (16 keys)", f"{handoff_s * 1e6:.0f} us", stats)
    return handoff_s


ISSUE_S = 1e-3
"""the main thread's Python and small launches per decode layer beside the job, and again in the gap after it"""
CALL_COST_MAX_TOKENS = 131072


def _issue_for(scratch: torch.Tensor, seconds: float) -> None:
    """A decode layer's module code for ``seconds`` of the host clock: small ATen calls (launches on a GPU), each
    after a little pure Python (the modules' own code, holding the GIL: the worker's job competes for it)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sum(range(64))
        scratch.add_(1.0)


def call_cost_lengths(ctx: ProfileContext, table: list[CpuAttentionPoint]) -> list[int]:
    """The two longest table lengths up to 128K keys with a point at the run's threads (the decode cells' keys per
    head: 46K and 236K on the H200)."""
    lengths = sorted({p.key_tokens for p in table if p.threads == run_threads() and
                      p.key_tokens <= CALL_COST_MAX_TOKENS})
    return lengths[-2:]


def measure_call_cost(ctx: ProfileContext, table: list[CpuAttentionPoint]) -> Optional[float]:
    """host_attention_call_s (module docstring): median over calls at two key lengths of max(0, job seconds -
    bytes / table rate); None without a table point at the run's threads."""
    lengths = call_cost_lengths(ctx, table)
    if not lengths:
        return None
    rate_at = {p.key_tokens: p.bytes_per_s for p in table if p.threads == run_threads()}
    calls = max(8, ctx.preset.repeats * 2)
    intercepts: list[float] = []
    with _share_rig(ctx, max(lengths)) as (share, streams, query):
        scratch = torch.zeros(64, device=ctx.device)
        element = share.host.dtype.itemsize
        for tokens in lengths:
            nbytes = 2 * KV_HEADS * tokens * HEAD_DIM * element
            timings = []
            for call in range(calls + 2):                              # the first two: warm-up
                share.submit(0, query, tokens, streams, scale=HEAD_DIM ** -0.5)
                _issue_for(scratch, ISSUE_S)                           # the layer's GPU share being issued
                _, _, timing = share.collect(0)
                if timing is None:                                     # the stream wait: the job's own timeline
                    (timing,) = share.take_timings(wait=True)
                _issue_for(scratch, ISSUE_S)                           # the rest of the layer: the worker idles
                if call >= 2:
                    timings.append(timing)
            if ctx.on_gpu:
                torch.cuda.synchronize(ctx.device)
            own = [max(0.0, t.kernel_s - nbytes / rate_at[tokens]) for t in timings]
            intercepts += own
            ctx.progress(SECTION, f"job as decode calls it, {tokens // 1024}K keys x {KV_HEADS} heads",
                         f"{_median([t.kernel_s for t in timings]) * 1e3:.2f} ms (back to back "
                         f"{nbytes / rate_at[tokens] * 1e3:.2f}; intercept {_median(own) * 1e3:.2f} ms; start "
                         f"delay {_median([t.start_delay_s for t in timings]) * 1e3:.2f} ms)")
    call_s = _median(intercepts)
    ctx.progress(SECTION, "fixed cost per host-share call", f"{call_s * 1e3:.2f} ms")
    return call_s


def measure_host_attention(ctx: ProfileContext) -> dict:
    """The section: host read, kernel table, concurrency (GPU), hand-off and call cost; the profile's host-attention
    fields."""
    result = measure_host_read(ctx)
    longest = max(ctx.preset.host_attention_key_tokens)
    dtype = _dtype(ctx)
    keys = torch.empty(KV_HEADS, longest, HEAD_DIM, dtype=dtype).uniform_(-1, 1)   # host rows, as the store's
    values = torch.empty(KV_HEADS, longest, HEAD_DIM, dtype=dtype).uniform_(-1, 1)
    query = torch.randn(KV_HEADS, RATIO, HEAD_DIM, dtype=dtype)
    result["cpu_attention_table"] = measure_kernel_table(ctx, keys, values, query)
    result["host_concurrency_table"] = measure_concurrency(ctx, keys, values, query) if ctx.on_gpu else []
    result["host_share_handoff_s"] = measure_handoff(ctx)
    del keys, values
    result["host_attention_call_s"] = measure_call_cost(ctx, result["cpu_attention_table"])
    return result
