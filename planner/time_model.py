"""Predicted prefill time per chunk and decode time per token of one configuration (docs/how-it-works.md), with the
resource that binds. Pure numpy over the chunks of the prompt; no torch.

Per chunk i (start s = i * c, length c_i), per layer with r resident heads and n offloaded groups of h heads:
    linear_s   = sum over q, k, v, o, gate, up, down of max(2 m K N / matmul_rate(m, N, K),
                 (m K + K N + m N) b / HBM)                             m = c_i  (roofline: decode reads weights)
    elem_s     = c_i * elementwise_bytes_per_token / elementwise rate   norms, RoPE, residuals, SwiGLU, layouts (the
                                                                        profile's measured rate of those ops, else HBM)
    attn(h)    = 4 h q d (c s + c (c + 1) / 2) / attention_rate(shape)   q = H_q / H_kv, lower-right causal
                 with "<backend>-step" points in the profile (the executor's measured per-group step:
                 strided q and output, slot views, split parts and merges): rate interpolated in them at
                 (h q heads, q_len c, k_len s + c, head_dim); else composed from the kernel table:
                 "flash": one call, rate at (h q heads, q_len c, k_len s + c, causal)
                 "cudnn-split": past (q_len c, k_len s, non-causal, cuDNN) + chunk (c x c causal, flash) +
                 the log-sum-exp merge (one pass: c h q d (parts + 1) b / HBM)
                 in prefill each call at most at the profile's sustained attention rate (the power limit):
                 max(attn, FLOPs / sustained rate) (sustained_attention); the matmuls' rates times the
                 sustained matmul ratio
    h2d(h)     = h * 2 d s b bytes, copied one head and K/V at a time (s d b per copy) at the measured
                 bandwidth for that size;  d2h(h) = h * 2 d c b;  t = max(h2d / BW_h2d, d2h / BW_d2h,
                 (h2d + d2h) / BW_bidir)                                 both directions share the link
    N          = linear_s + elem_s + attn(r)                            everything but the streamed groups
    a, t       = the mean attention and transfer time of one streamed group
    layer period P (two ping-pong slots, prefetch crossing layer boundaries), from the max-plus cycles of
    the pipeline T_j = max(T_{j-1}, A_{j-2}) + t, A_j = max(A_{j-1} + N [first of layer], T_j) + a:
        n = 0:  P = N
        n = 1:  P = max(N + a, t)
        n >= 2: P = max(N + n a,  n t,  N + 2 a + (n - 2) t)             compute, PCIe, PCIe idling in N
    gpu_chunk  = sum over layers of P + first transfer of the chunk (nothing to overlap it with) + lm_head
    host_chunk = executor_host_seconds (below): the host's own time for the chunk
    chunk_s    = max(gpu_chunk, host_chunk)                             the host runs ahead (no syncs)
    prefill_s  = sum of chunk_s + cudnn graph builds (one per new (heads, q_len, k_len) shape; the square causal
                 chunk part's at cudnn_causal_graph_build_s where the profile has it)
Decode per token: the same with c = 1 at the mean past s = context + (decode_tokens - 1) / 2; attention
reads K, V from HBM (resident heads and the streamed slots) at no more than the measured flash rate at q_len 1
(decode_attention_seconds), the streamed heads cross PCIe, always "flash"; with every head resident on one GPU
the step replays as a CUDA graph and its host time is the replay's (planner/host_time.py), its GPU time the
profile's measured replayed step of the model's layer shape where it has one (graph_decode_gpu_seconds).
With a CPU share F (Workload.cpu_share, planner/host_share.py) each offloaded head streams only [F s, s) (at the
DMA's contended rate) and the layer also waits for the CPU's [0, F s): P_l = max(P_l, host_l + post_l), host_l =
call + bytes / cpu rate + hand-off (planner/host_share.py; call: host_attention_call_s), post_l the layer's
projections and elementwise work (the GPU's path from the merge to the next layer's query, during which the CPU
waits). The GPU waits for the CPU's result on the stream (executor/runtime/stream_wait.py), so the host's issue
runs ahead as without a share. (Workload.share_hand_off "join", the host-join fallback: P_l = max(P_l, host_l) + H_l,
H_l the host's issue time of a decode layer, executor_decode_layer_host_s.)
Pinning: host_kv_bytes at the profile's pinning rate (hw_lookup.pin_seconds).

Host time per step: planner/host_time.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from hwprofiles.schema import HardwareProfile
from planner.host_time import (PAST_BLOCK_TOKENS, LayerType, chunk_part_backend, executor_host_seconds,
                               graph_decode_host_seconds, popcount, summarize_layers)
from planner.attention_time import attention_seconds, decode_attention_seconds, layer_chunk_seconds
from planner.graph_decode_time import graph_decode_gpu_seconds
from planner.layer_time import elementwise_bytes_per_token, elementwise_rate, linear_seconds
from planner.host_share import host_share_terms
from planner.hw_lookup import RateLookup
from planner.model_spec import ModelSpec



@dataclass
class Workload:
    """One configuration to time. ``backend`` is "flash" or "cudnn-split" (prefill; decode is always flash)."""

    context_tokens: int
    decode_tokens: int
    chunk_size: int
    heads_per_group: int
    resident_kv_heads: int
    elem_bytes: int
    backend: str = "flash"
    decode_graphs: bool = False
    """decode replays as one CUDA graph per token (host_time.decode_runs_as_graph): its host time is the replay's"""
    cpu_share: float = 0.0
    """F: decode attends each offloaded head's past [0, F s) on the CPU (planner/host_share.py)"""
    past_cut: str = "binary"
    """"cudnn-split"'s cut of the past into cuDNN calls (planner/host_time.py PAST_CUTS)"""
    compile_layers: bool = False
    """prefill runs the layers' norms and MLPs torch.compile'd: elementwise ops at the profile's
    compiled_elementwise_bytes_per_s (decode stays eager)"""
    chunk_part: str = "layer"
    """"cudnn-split"'s chunk-vs-itself part: once per layer for all query heads ("layer", the executor's default)
    or inside every head set's call ("group"; executor/settings.py SplitOptions.chunk_part)"""
    chunk_backend: Optional[str] = None
    """the layer's chunk part's kernel ("flash" or "cudnn"; attention_time.layer_chunk_backend); None: the
    executor's rule (SplitOptions.chunk_backend_for)"""
    share_hand_off: str = "stream"
    """how the CPU share's result reaches the GPU (SHARE_HAND_OFFS): "stream", the GPU waits for it on the stream
    (executor/runtime/stream_wait.py, the executor's default on CUDA); "join", the main thread joins the worker every
    layer (the fallback; runs before 2026-12-01 evening)"""


SHARE_HAND_OFFS = ("stream", "join")


@dataclass
class TimePrediction:
    prefill_s: float
    decode_s_per_token: float
    chunk_s: list[float]
    prefill_bound: str
    decode_bound: str
    terms: dict[str, float] = field(default_factory=dict)


def graph_builds_per_chunk(call_head_counts: int, chunk: np.ndarray, past: np.ndarray) -> np.ndarray:
    """cuDNN graph builds paid in each chunk of a "cudnn-split" prefill: one per new (key length, query rows,
    heads) shape. Key lengths B 2^i appear when bit i of s // B is first set; a shorter last chunk brings new
    query rows, so all its lengths are new. ``call_head_counts`` = distinct head counts of the calls."""
    full_blocks = (past // PAST_BLOCK_TOKENS).astype(np.int64)
    seen_before = np.concatenate([[0], np.bitwise_or.accumulate(full_blocks)[:-1]])
    new_lengths = popcount(full_blocks & ~seen_before)
    if len(chunk) > 1 and chunk[-1] != chunk[0]:
        new_lengths[-1] = popcount(full_blocks[-1:])[0]
    return new_lengths * call_head_counts


def transfer_seconds(model: ModelSpec, lookup: RateLookup, *, kv_heads: int, chunk: np.ndarray, past: np.ndarray,
                     elem_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, h2d_bytes, d2h_bytes) of one streamed group of ``kv_heads`` heads: past K, V in, the chunk's out."""
    copy_in = past * model.head_dim * elem_bytes           # one head's K (or V) over [0, s)
    copy_out = chunk * model.head_dim * elem_bytes
    h2d_bytes = 2.0 * kv_heads * copy_in
    d2h_bytes = 2.0 * kv_heads * copy_out
    h2d_s = h2d_bytes / lookup.transfer_bytes_per_s("h2d", copy_in)
    d2h_s = d2h_bytes / lookup.transfer_bytes_per_s("d2h", copy_out)
    both_s = (h2d_bytes + d2h_bytes) / lookup.bidir_total_bytes_per_s
    return np.maximum(np.maximum(h2d_s, d2h_s), both_s), h2d_bytes, d2h_bytes


def pipeline_period(compute_other: np.ndarray, group_attention: np.ndarray, group_transfer: np.ndarray,
                    groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state time of one layer with two ping-pong slots, and whether PCIe binds (see module docstring)."""
    n, other, a, t = groups, compute_other, group_attention, group_transfer
    if n == 0:
        return other, np.zeros_like(other, dtype=bool)
    if n == 1:
        compute = other + a
        return np.maximum(compute, t), t > compute
    compute = other + n * a
    pcie = np.maximum(n * t, other + 2 * a + (n - 2) * t)
    return np.maximum(compute, pcie), pcie > compute


def sustained_attention(burst_s: np.ndarray, flops: np.ndarray, ceiling: Optional[float]) -> np.ndarray:
    """A prefill attention call's seconds at the power limit: max(burst_s, flops / ceiling), ``burst_s`` priced from
    the tables' short bursts, ``ceiling`` the attention rate the profile's sustained probe held (None: the burst).
    Under the limit the clock falls until the power fits, so what the bursts ran faster than the ceiling is lost,
    and a call slower than it (flash at ~340 TFLOP/s, a short square chunk part) draws less and keeps its rate.
    On the H200 (2026-12-01) six 512K configurations ran their last 32K tokens in 15.15-15.27 s where the bursts
    priced them 16.2-17.7 s apart by shape; this ceiling prices all six 15.8 s. Over the 17 cells' latest whole
    runs the prefill error went from 4.1% median, 9.9% worst (every call's burst times one ratio, 0.87) to 1.0%
    and 8.0%; the flash cells from -6.7% and -9.9% to +0.6% and +0.9%."""
    if ceiling is None:
        return burst_s
    return np.maximum(burst_s, flops / ceiling)


def _phase(model: ModelSpec, lookup: RateLookup, work: Workload, chunk: np.ndarray, past: np.ndarray, *,
           decode: bool) -> dict[str, np.ndarray]:
    """GPU and host time per step (chunk or token) with their terms, as arrays over the steps."""
    elem_bytes, hbm = work.elem_bytes, lookup.profile.hbm_bytes_per_s
    layer_types = summarize_layers(model, work.resident_kv_heads, work.heads_per_group)
    backend = "flash" if decode else work.backend
    # a prefill's kernels run back to back for seconds, at the clock the power limit leaves (hw_lookup.py): the
    # matmuls at the sustained ratio, attention at most at the sustained rate (sustained_attention)
    matmul_ratio = 1.0 if decode else lookup.sustained_ratios(model.head_dim)[1]
    ceiling = None if decode else lookup.sustained_attention_flops_per_s(model.head_dim)
    flop_per_pair = 4.0 * model.query_heads_per_kv_head * model.head_dim   # per KV head, query-key pair
    layer_mode = backend == "cudnn-split" and work.chunk_part == "layer"    # the chunk part once per layer
    linear = linear_seconds(model, lookup, chunk, elem_bytes, matmul_ratio)
    elem = chunk * elementwise_bytes_per_token(model, elem_bytes) / elementwise_rate(
        lookup.profile, compiled=work.compile_layers and not decode)
    out = {key: np.zeros_like(past, dtype=float) for key in
           ("gpu", "linear", "elementwise", "attention", "h2d", "h2d_bytes", "d2h_bytes", "pcie_bound", "fill",
            "cpu_bound")}

    share = host_share_terms(model, lookup, share=work.cpu_share if decode else 0.0, elem_bytes=elem_bytes,
                             past=past)
    stream_past = past - share["tokens"]                                    # the streamed share's keys [F s, s)
    out.update(host_share=np.zeros_like(past, dtype=float), host_share_bytes=np.zeros_like(past, dtype=float))

    def attn(heads: int, seen_past: np.ndarray = past, streamed: bool = False) -> np.ndarray:
        """Attention seconds of ``heads`` KV heads over ``seen_past`` keys (a sliding layer's window), or in
        decode over the streamed share's keys only (``streamed``: the host attends the rest)."""
        if decode:
            keys = stream_past if streamed else seen_past
            head_kv = 2.0 * model.head_dim * elem_bytes * (keys + chunk)
            return decode_attention_seconds(model, lookup, heads, keys, head_kv,
                                            kernel="flex" if work.backend == "flex" else "flash")
        burst = attention_seconds(model, lookup, kv_heads=heads, chunk=chunk, past=seen_past, backend=backend,
                                  elem_bytes=elem_bytes, past_cut=work.past_cut, chunk_part=work.chunk_part,
                                  chunk_backend=work.chunk_backend)
        pairs = chunk * seen_past + (0.0 if layer_mode else chunk * (chunk + 1) / 2.0)
        return sustained_attention(burst, heads * flop_per_pair * pairs, ceiling)

    layer_part = (sustained_attention(layer_chunk_seconds(model, lookup, chunk, work.chunk_backend),
                                      model.num_key_value_heads * flop_per_pair * chunk * (chunk + 1) / 2.0, ceiling)
                  if layer_mode else np.zeros_like(past, dtype=float))

    full_types = [lt for lt in layer_types if lt.window is None]   # earlier layers hold the extra residents
    layer0_resident = max((lt.resident for lt in full_types), default=0)
    for lt in layer_types:
        # a sliding layer attends its held past min(s, W - 1) and the chunk, all heads resident
        resident_attention = attn(lt.resident, past if lt.window is None else np.minimum(past, lt.window - 1))
        if lt.window is None:               # the layer's chunk part, before its resident call (engine/offload.py)
            resident_attention = resident_attention + layer_part
        other = linear + elem + resident_attention
        n = len(lt.group_sizes)
        a_sum, t_sum = np.zeros_like(other), np.zeros_like(other)
        for heads in sorted(set(lt.group_sizes)):
            times = lt.group_sizes.count(heads)
            t, h2d_bytes, d2h_bytes = transfer_seconds(model, lookup, kv_heads=heads, chunk=chunk,
                                                       past=stream_past, elem_bytes=elem_bytes)
            t = t / share["dma_factor"]                                     # DMA beside the CPU's reads
            a_sum, t_sum = a_sum + times * attn(heads, streamed=True), t_sum + times * t
            out["h2d_bytes"] += lt.count * times * h2d_bytes
            out["d2h_bytes"] += lt.count * times * d2h_bytes
        period, pcie_bound = pipeline_period(other, a_sum / max(n, 1), t_sum / max(n, 1), n)
        if n and np.any(share["tokens"] > 0):
            offloaded = sum(lt.group_sizes)
            host_bytes = offloaded * 2.0 * model.head_dim * elem_bytes * share["tokens"]
            host_layer = share["call_s"] + host_bytes / share["cpu_bytes_per_s"](offloaded) + share["handoff_s"]
            # The GPU waits for the CPU's result on the stream (executor/runtime/stream_wait.py) and the host issues
            # ahead, so the CPU's cycle per layer is its job plus the GPU's path from the merge to the next layer's
            # query (the projections and elementwise work), during which it has no query to work on. (Measured on
            # the H200, 2026-12-01, Llama-3-8B under 24 GB at 128K, F 0.3: 154.6 ms per token with the stream wait,
            # 192.9 ms with the main thread joining the worker every layer, which serialised the host's issue of
            # the next layer after both shares; the join stays as the fallback where the stream wait is
            # unavailable, and is not priced.)
            # With the join instead, nothing of layer l + 1 is issued before both shares of layer l are done, so the
            # layer is the slower share plus the host's issue time of a layer, in sequence.
            if work.share_hand_off == "join":
                cpu_binds = host_layer > period
                period = np.maximum(period, host_layer) + share["layer_host_s"]
            else:
                cpu_binds = host_layer + linear + elem > period
                period = np.maximum(period, host_layer + linear + elem)
            pcie_bound = np.where(cpu_binds, False, pcie_bound)
            out["cpu_bound"] += lt.count * cpu_binds * period
            out["host_share"] += lt.count * host_layer
            out["host_share_bytes"] += lt.count * host_bytes
        out["gpu"] += lt.count * period
        out["linear"] += lt.count * linear
        out["elementwise"] += lt.count * elem
        out["attention"] += lt.count * (resident_attention + a_sum)
        out["h2d"] += lt.count * t_sum
        out["pcie_bound"] += lt.count * pcie_bound * period
        if n and lt.window is None and lt.resident == layer0_resident:
            out["fill"] = t_sum / n          # layer 0's first group: nothing runs before it to hide it
    lm_head = model.vocab_size * model.hidden_size * elem_bytes / hbm
    out["gpu"] += out["fill"] + lm_head
    out["builds"] = np.zeros_like(past, dtype=float)
    if backend == "cudnn-split":
        calls = len(_call_head_counts(layer_types))
        # the whole cut's key lengths are built by the executor's warm-up (attention/split.py warm_up_whole_past)
        builds = (graph_builds_per_chunk(calls, chunk, past) if work.past_cut == "binary"
                  else np.zeros_like(past, dtype=float))
        on_cudnn = np.isin(chunk, [c for c in np.unique(chunk) if chunk_part_backend(work.chunk_backend, int(c))
                                   == "cudnn"])
        square = on_cudnn & (np.arange(len(chunk)) == 0)                # the square causal cuDNN part's shapes
        if len(chunk) > 1 and chunk[-1] != chunk[0]:
            square[-1] = on_cudnn[-1]
        causal_calls = calls
        if work.chunk_part == "layer":  # one all-heads shape per chunk length; the warm-up builds the first's
            square[0], causal_calls = False, 1                   # (executor/attention/split.py warm_up_cudnn)
        build_s = lookup.profile.cudnn_graph_build_s or 0.0
        causal_build_s = lookup.profile.cudnn_causal_graph_build_s
        out["builds"] = builds * build_s + causal_calls * square * (causal_build_s if causal_build_s is not None
                                                                    else build_s)
    if decode and work.decode_graphs:
        out["host"] = np.full_like(past, graph_decode_host_seconds(lookup.profile, model.num_hidden_layers),
                                   dtype=float)
        measured_step = graph_decode_gpu_seconds(model, lookup, past, elem_bytes)
        if measured_step is not None:
            out["gpu"] = measured_step
    else:
        out["host"] = executor_host_seconds(lookup.profile, layer_types, backend, past, decode=decode,
                                            past_cut=work.past_cut)
    out["step"] = np.maximum(out["gpu"], out["host"]) + out["builds"]
    return out


def _call_head_counts(layer_types: list[LayerType]) -> set[int]:
    """Distinct KV-head counts of the attention calls (resident call and streamed groups)."""
    counts = set()
    for lt in layer_types:
        counts.update(lt.group_sizes)
        if lt.resident:
            counts.add(lt.resident)
    return counts


def _bound(step: np.ndarray, gpu: np.ndarray, host: np.ndarray, pcie_share: np.ndarray, compute_name: str,
           cpu_share: np.ndarray | None = None) -> str:
    """The resource holding most of the time: launch (host), pcie, cpu-attention (decode's CPU share), or
    compute/hbm."""
    launch = float(np.sum(np.where(host > gpu, step, 0.0)))
    gpu_steps = np.where(host > gpu, 0.0, step)
    pcie = float(np.sum(gpu_steps * np.clip(pcie_share, 0.0, 1.0)))
    cpu = float(np.sum(gpu_steps * np.clip(cpu_share, 0.0, 1.0))) if cpu_share is not None else 0.0
    compute = float(np.sum(gpu_steps)) - pcie - cpu
    return max((launch, "launch"), (pcie, "pcie"), (cpu, "cpu-attention"), (compute, compute_name))[1]


def predict_prefill(model: ModelSpec, lookup: RateLookup, work: Workload) -> tuple[float, dict[str, np.ndarray]]:
    """Prefill seconds and the per-chunk arrays (``step`` is each chunk's time)."""
    starts = np.arange(0, work.context_tokens, work.chunk_size, dtype=float)
    chunk = np.minimum(float(work.chunk_size), work.context_tokens - starts)
    pre = _phase(model, lookup, work, chunk, starts, decode=False)
    return float(np.sum(pre["step"])), pre


def predict_time(model: ModelSpec, profile: HardwareProfile, lookup: RateLookup, work: Workload,
                 prefill: tuple[float, dict[str, np.ndarray]] | None = None) -> TimePrediction:
    """Prefill (per chunk) and decode (per token) times of one configuration (``prefill``: a precomputed
    predict_prefill result for this work)."""
    prefill_s, pre = prefill if prefill is not None else predict_prefill(model, lookup, work)
    builds_s = float(np.sum(pre["builds"]))
    mean_past = np.array([work.context_tokens + (max(work.decode_tokens, 1) - 1) / 2.0])
    dec = _phase(model, lookup, work, np.ones(1), mean_past, decode=True)
    decode_s = float(dec["step"][0])
    terms = {
        "prefill_linear_s": float(np.sum(pre["linear"])),
        "prefill_elementwise_s": float(np.sum(pre["elementwise"])),
        "prefill_attention_s": float(np.sum(pre["attention"])),
        "prefill_h2d_s": float(np.sum(pre["h2d"])),
        "prefill_host_s": float(np.sum(pre["host"])),
        "prefill_exposed_fill_s": float(np.sum(pre["fill"])),
        "prefill_cudnn_graph_build_s": builds_s,
        "prefill_h2d_bytes": float(np.sum(pre["h2d_bytes"])),
        "prefill_d2h_bytes": float(np.sum(pre["d2h_bytes"])),
        "decode_linear_s": float(dec["linear"][0]),
        "decode_attention_s": float(dec["attention"][0]),
        "decode_pcie_s": float(dec["h2d"][0]),
        "decode_host_s": float(dec["host"][0]),
        "decode_gpu_s": float(dec["gpu"][0]),
        "decode_h2d_bytes": float(dec["h2d_bytes"][0]),
        "decode_cpu_share": float(work.cpu_share),
        "decode_host_share_s": float(dec["host_share"][0]),
        "decode_host_share_bytes": float(dec["host_share_bytes"][0]),
    }
    pre_share = pre["pcie_bound"] / np.maximum(pre["gpu"], 1e-30)
    dec_share = dec["pcie_bound"] / np.maximum(dec["gpu"], 1e-30)
    return TimePrediction(
        prefill_s=prefill_s, decode_s_per_token=decode_s, chunk_s=[float(x) for x in pre["step"]],
        prefill_bound=_bound(pre["step"], pre["gpu"], pre["host"], pre_share, "compute"),
        decode_bound=_bound(dec["step"], dec["gpu"], dec["host"], dec_share, "hbm",
                            dec["cpu_bound"] / np.maximum(dec["gpu"], 1e-30)),
        terms=terms,
    )
