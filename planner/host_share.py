"""The CPU's share F of decode attention over the offloaded KV (executor/engine/host_share.py), as the planner prices
it, and the choice of F. No torch.

Per decode token at past s, each offloaded head's past splits by token range: [0, F s) attended on the CPU where
it lies in host RAM, [F s, s) streamed over PCIe as before. Both run at once and share the host's memory:
    rates         cpu = kernel rate (profile cpu_attention_table at the host share's key length and the run's
                  threads, run_host_threads: cores - 1) x the task balance of the layer's call over its offloaded
                  heads / that of the table's 8-head call (kernel_balance) x cpu_factor;
                  h2d = the streamed share's transfer rate x dma_factor
    contention    from the profile's host_concurrency_table point nearest the run's threads:
                  dma_factor = h2d_concurrent / h2d_alone,
                  cpu_factor = kernel_concurrent / table rate at that point's threads and CONCURRENCY_KEY_TOKENS
                  (the concurrency probe runs the kernel as decode does, on a worker thread beside the fetches:
                  its absolute rate is the level, the back-to-back table only the shape over key length; on the
                  H200, 2026-12-01, 37.2 GB/s beside the fetches where the table read 55.2 and the same worker
                  alone 43.6, and the runs' kernels read 25-38 GB/s)
                  (no table: 1 and 1, said in the plan's note)
    per layer l   host_l = call + 2 (H_kv - r_l) F s d b / cpu + handoff
                  (call: host_attention_call_s, the job's fixed cost per call as a decode step calls it, after
                  the worker idled for a layer's gap, which the back-to-back table does not see; on the H200,
                  2026-12-01, the run's job seconds per layer fitted 1.4 ms + bytes / 40 GB/s; None: 0.
                  handoff: host_share_handoff_s)
                  the layer ends when both shares have: P_l = max(P_gpu_l((1 - F) s, h2d), host_l + post_l)
                  (post_l: the layer's projections and elementwise work, the GPU's path from the merge to the
                  next layer's query, when the CPU has nothing to attend; the GPU waits for the CPU's result on
                  the stream, so the host's issue runs ahead as without a share)
    per token     sum of P_l (planner/time_model.py); the streamed bytes fall by the factor (1 - F)
Choice: F on a grid of 0, 1/20, ..., 1 and the balance point F* = cpu / (cpu + h2d) (equal time on both sides);
the fastest decode wins, F = 0 unless another share is at least MIN_GAIN faster (a share costs a CPU thread pool
and hand-offs for nothing otherwise), and F = 0 without CPU-attention figures in the profile (older profiles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from hwprofiles.schema import HardwareProfile
from planner.host_time import HOST_OPS_PER_LAYER

MIN_BLOCK_TOKENS = 2048
"""shortest key block worth its own kernel task (each task re-reads the r query rows and writes r outputs)"""
SHARE_GRID = tuple(i / 20 for i in range(21))
MIN_GAIN = 0.02
"""a share other than 0 must predict a decode step at least 2% faster"""
CONCURRENCY_KEY_TOKENS = 131072
"""keys per head of the profiler's concurrency probe (executor/profiler/host_attention.py measure_concurrency: 8
heads, at most this many keys); the planner compares its kernel rate with the table's at this length"""


def task_balance(tasks: int, threads: int) -> float:
    """ATen's parallel_for hands each of T threads ceil(tasks / T) contiguous tasks, so a call lasts as long as
    the busiest thread: balance = tasks / (T ceil(tasks / T)) (1: every thread equally busy)."""
    if tasks <= 0:
        return 1.0
    threads = max(threads, 1)
    return tasks / (threads * math.ceil(tasks / threads))


def key_blocks(key_tokens: int, kv_heads: int, threads: int) -> int:
    """Blocks n the S keys of each of H heads are cut into (the H n kernel tasks, executor/attention/
    host_attention.py): n <= ceil(S / MIN_BLOCK_TOKENS) and <= ceil(8 T / H); the best task_balance(H n, T) wins,
    then about 4 tasks per thread, then fewer blocks. (Earlier, n was min(by length, ceil(4 T / H)):
    6 offloaded heads on 16 threads made 66 tasks, 5 on the busiest thread where 4.1 is the mean, 18% lost; on
    the H200 the 128K run's kernel read 31.8 GB/s against 48.8 in the profile's 8-head table.)"""
    if key_tokens <= 0:
        return 0
    heads, threads = max(kv_heads, 1), max(threads, 1)
    most = max(1, min(math.ceil(key_tokens / MIN_BLOCK_TOKENS), math.ceil(8 * threads / heads)))
    return min(range(1, most + 1), key=lambda n: (-round(task_balance(heads * n, threads), 3),
                                                   abs(heads * n / threads - 4), n))


def kernel_balance(key_tokens: float, kv_heads: int, threads: int) -> float:
    """task_balance of the kernel's call over ``kv_heads`` heads of ``key_tokens`` keys on ``threads`` threads."""
    blocks = key_blocks(int(key_tokens), kv_heads, threads)
    return task_balance(kv_heads * blocks, threads)


def run_host_threads(profile: HardwareProfile) -> Optional[int]:
    """The kernel's thread count in a run: the executor's default leaves one core to the main thread, which
    issues the GPU's work while the kernel runs (executor/engine/host_share.py default_host_threads: cores - 1,
    the profile's host_read_threads - 1); the profile's table is read at that count when it has it, else at the
    most threads it measured (older profiles). None: no kernel points."""
    counts = {p.threads for p in profile.cpu_attention_table}
    if not counts:
        return None
    if profile.host_read_threads and profile.host_read_threads - 1 in counts:
        return profile.host_read_threads - 1
    return max(counts)


@dataclass(frozen=True)
class HostShareRates:
    """What the planner reads from a profile for the CPU share."""

    kernel_points: tuple[tuple[int, float], ...]
    """(key_tokens, bytes_per_s) of the kernel at ``threads``, sorted by key length"""
    threads: int
    """the run's kernel threads (run_host_threads)"""
    dma_factor: float
    cpu_factor: float
    handoff_s: float
    contention_measured: bool
    table_kv_heads: int = 8
    """KV heads of the table's calls (the kernel's task balance differs with another head count)"""
    call_s: float = 0.0
    """the job's fixed cost per layer (host_attention_call_s; 0 where the profile lacks it)"""
    call_measured: bool = False

    def cpu_bytes_per_s(self, key_tokens: float, kv_heads: Optional[int] = None) -> float:
        """Kernel rate at ``key_tokens`` keys per head (log-linear between points, clamped), under contention,
        for a call over ``kv_heads`` heads (default: the table's): the table's rate x task balance of that call
        / task balance of the table's call (kernel_balance)."""
        rate = table_rate(self.kernel_points, key_tokens)
        if kv_heads is not None and kv_heads != self.table_kv_heads:
            rate *= (kernel_balance(key_tokens, kv_heads, self.threads) /
                     kernel_balance(key_tokens, self.table_kv_heads, self.threads))
        return rate * self.cpu_factor


def table_rate(points: tuple[tuple[int, float], ...], key_tokens: float) -> float:
    """The kernel table's rate at ``key_tokens`` from sorted (key_tokens, bytes per second) points: log-linear
    between points, clamped at the ends."""
    if key_tokens <= points[0][0]:
        return points[0][1]
    if key_tokens >= points[-1][0]:
        return points[-1][1]
    for (k0, r0), (k1, r1) in zip(points, points[1:]):
        if k0 <= key_tokens <= k1:
            return r0 + math.log(key_tokens / k0) / math.log(k1 / k0) * (r1 - r0)
    raise AssertionError("unreachable: the points are sorted")


def host_share_rates(profile: HardwareProfile, *, head_dim: int, element_bytes: int) -> Optional[HostShareRates]:
    """The profile's CPU-share figures at the run's thread count, or None when it has no kernel points (F = 0).
    Contention: the host_concurrency_table point nearest that thread count: the DMA concurrent / alone, the kernel
    concurrent / the table's rate at CONCURRENCY_KEY_TOKENS (module docstring), each at most 1 (a side never speeds
    up beside the other: a ratio above 1 is the noise of the alone figure)."""
    table = [p for p in profile.cpu_attention_table if p.head_dim == head_dim] or list(profile.cpu_attention_table)
    same_dtype = [p for p in table if p.element_bytes == element_bytes]
    table = same_dtype or table
    if not table:
        return None
    threads = run_host_threads(profile)
    if threads not in {p.threads for p in table}:
        threads = max(p.threads for p in table)
    by_length: dict[int, list[float]] = {}
    heads = table[0].kv_heads
    for point in table:
        if point.threads == threads:
            by_length.setdefault(point.key_tokens, []).append(point.bytes_per_s)
            heads = point.kv_heads
    kernel = tuple(sorted((k, sum(v) / len(v)) for k, v in by_length.items()))
    dma_factor, cpu_factor, measured = 1.0, 1.0, False
    if profile.host_concurrency_table:
        point = min(profile.host_concurrency_table, key=lambda p: (abs(p.cpu_threads - threads), -p.cpu_threads))
        dma_factor = min(1.0, point.h2d_bytes_per_s / point.h2d_alone_bytes_per_s)
        cpu_factor = min(1.0, point.cpu_read_bytes_per_s / table_rate(kernel, CONCURRENCY_KEY_TOKENS))
        measured = True
    call_s = profile.host_attention_call_s
    return HostShareRates(kernel, threads, dma_factor, cpu_factor, profile.host_share_handoff_s or 0.0, measured,
                          heads, call_s or 0.0, call_s is not None)


def host_tokens(share: float, past_tokens: float) -> float:
    """s_h = floor(F s), the executor's rule (executor/engine/host_share.py host_tokens)."""
    return min(past_tokens, math.floor(share * past_tokens))


@dataclass(frozen=True)
class ShareChoice:
    share: float
    decode_s: float
    zero_share_decode_s: float
    reason: str


def choose_share(decode_seconds: Callable[[float], float], rates: Optional[HostShareRates], *,
                 fixed: Optional[float], balance_share: float) -> ShareChoice:
    """F for the plan: ``fixed`` when given, else the fastest of the grid and ``balance_share`` (module doc).
    ``decode_seconds(F)``: the predicted decode step at share F."""
    zero_s = decode_seconds(0.0)
    if fixed is not None:
        if fixed > 0 and rates is None:
            return ShareChoice(fixed, decode_seconds(fixed), zero_s, f"CPU share {fixed:g} fixed by --cpu-share; the "
                               "profile has no CPU-attention figures, so its decode time is priced as streamed")
        return ShareChoice(fixed, decode_seconds(fixed), zero_s, f"CPU share {fixed:g} fixed by --cpu-share" +
                           (f" ({_call_note(rates)})" if rates is not None and fixed > 0 else ""))
    if rates is None:
        return ShareChoice(0.0, zero_s, zero_s, "CPU share 0: the profile has no CPU-attention figures (run "
                           "headplan profile with the host-attention section)")
    tried = sorted(set(SHARE_GRID) | {round(min(max(balance_share, 0.0), 1.0), 2)})
    times = {share: decode_seconds(share) for share in tried}
    best = min(times, key=lambda share: (times[share], share))
    contention = ("measured contention" if rates.contention_measured else
                  "no contention measured (assumed none)") + f", {_call_note(rates)}"
    if best == 0.0 or times[best] > zero_s * (1 - MIN_GAIN):
        return ShareChoice(0.0, zero_s, zero_s,
                           f"CPU share 0: the best share {best:g} would decode in {times[best] * 1e3:.1f} ms vs "
                           f"{zero_s * 1e3:.1f} ms streamed, under the {MIN_GAIN:.0%} it must gain ({contention})")
    return ShareChoice(best, times[best], zero_s,
                       f"CPU share {best:g}: decode {times[best] * 1e3:.1f} ms per token vs {zero_s * 1e3:.1f} ms "
                       f"with everything streamed ({zero_s / times[best]:.2f}x; balance point {balance_share:.2f}, "
                       f"{contention})")


def _call_note(rates: HostShareRates) -> str:
    """The per-call cost the plan priced, for its note."""
    if rates.call_measured:
        return f"{rates.call_s * 1e3:.2f} ms fixed cost per layer's CPU call (host_attention_call_s)"
    return "no fixed cost per CPU call measured (host_attention_call_s absent: priced 0)"


def scaled_cpu_rates(hardware, factor: float):
    """The profile with every CPU-attention kernel rate (table and concurrency probe) times ``factor``: the level
    the run measured, the table's shape over key length and threads kept."""
    table = [p.model_copy(update={"bytes_per_s": p.bytes_per_s * factor}) for p in hardware.cpu_attention_table]
    concurrency = [p.model_copy(update={"cpu_read_bytes_per_s": p.cpu_read_bytes_per_s * factor,
                                        "cpu_alone_bytes_per_s": p.cpu_alone_bytes_per_s * factor})
                   for p in hardware.host_concurrency_table]
    return hardware.model_copy(update={"cpu_attention_table": table, "host_concurrency_table": concurrency})


def host_share_terms(model, lookup, *, share: float, elem_bytes: int, past: np.ndarray) -> dict:
    """Decode's CPU share terms for the time model (planner/time_model.py; ``model`` a ModelSpec, ``lookup`` its
    RateLookup): keys per head on the CPU (s_h = floor(F s)), the kernel's contended rate, the DMA's contention
    factor, the per-layer hand-off and the host's issue time of a layer (the join's); s_h = 0 at F = 0 or without CPU figures.
    ``cpu_bytes_per_s(kv_heads)``: the kernel's rate per step for a layer's call over that many offloaded heads;
    ``call_s``: the job's fixed cost per layer's call."""
    none = {"tokens": np.zeros_like(past, dtype=float), "dma_factor": 1.0, "cpu_bytes_per_s": lambda heads: 1.0,
            "handoff_s": 0.0, "call_s": 0.0, "layer_host_s": 0.0}
    if share <= 0:
        return none
    key = ("host_share_rates", model.head_dim, elem_bytes)
    if key not in lookup.memo:
        lookup.memo[key] = host_share_rates(lookup.profile, head_dim=model.head_dim, element_bytes=elem_bytes)
    rates = lookup.memo[key]
    if rates is None:
        return none
    tokens = np.array([host_tokens(share, float(s)) for s in past])
    profile = lookup.profile
    layer_host_s = (profile.executor_decode_layer_host_s if profile.executor_decode_layer_host_s is not None
                    else HOST_OPS_PER_LAYER * profile.launch_overhead_s)
    return {"tokens": tokens, "dma_factor": rates.dma_factor,
            "cpu_bytes_per_s": lambda heads: np.array([rates.cpu_bytes_per_s(max(t, 1.0), heads) for t in tokens]),
            "handoff_s": rates.handoff_s, "call_s": rates.call_s, "layer_host_s": layer_host_s}
