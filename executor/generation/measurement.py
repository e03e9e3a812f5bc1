"""What a run measured: the Measurement and its per-stage parts, and how they are filled from recorded events.

    GpuPeaks          the memory fields a whole run and each stage (GPU) share: host store, GPU stores, peaks
    StageMeasurement  one stage's placement, peaks, busy time and counters
    Measurement       the run: chunk, token and phase times, counters, logits, per-stage list; its GpuPeaks are
                      the fullest GPU's
    fill_times        chunk / token / attention times from (name, meta, ms, lane) events (runtime/events.py
                      EventRecorder.resolve)
    fill_stage_busy   a stage's busy time from its stage_start / stage_end spans
Leaves out: recording the events (generation/loop.py, engine/offload.py) and the report (report/).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from executor.engine.counters import PhaseCounters
from executor.runtime.cpu_steal import StealFigures
from executor.runtime.gpu_memory import process_gpu_used_bytes


@dataclass(kw_only=True)
class GpuPeaks:
    """Stores and GPU memory peaks (bytes) of a run or of one of its GPUs."""

    host_store_bytes: int = 0
    host_pin_s: float = 0.0
    host_touch_s: float = 0.0
    host_huge_page_bytes: int = 0
    """of the host store, the bytes the kernel backed with huge pages (runtime/host_pages.py)"""
    gpu_store_bytes: dict[str, int] = field(default_factory=dict)
    gpu_peak_allocated_bytes: Optional[int] = None
    gpu_peak_reserved_bytes: Optional[int] = None
    gpu_process_used_bytes: Optional[int] = None
    gpu_outside_allocator_bytes: Optional[int] = None
    """driver-reported process use minus PyTorch's reserved memory at the end (CUDA context, workspaces)"""

    def read_gpu_peaks(self, device: torch.device) -> None:
        """Fill the peaks from PyTorch's allocator statistics and the driver, for ``device`` (CUDA)."""
        self.gpu_peak_allocated_bytes = torch.cuda.max_memory_allocated(device)
        self.gpu_peak_reserved_bytes = torch.cuda.max_memory_reserved(device)
        self.gpu_process_used_bytes = process_gpu_used_bytes(device)
        self.gpu_outside_allocator_bytes = max(0, self.gpu_process_used_bytes - torch.cuda.memory_reserved(device))


@dataclass(kw_only=True)
class StageMeasurement(GpuPeaks):
    """One stage's (GPU's) share of a run: placement, stores, memory peaks and busy time."""

    index: int
    device: str
    first_layer: int
    num_layers: int
    resident_kv_heads: int
    numa_node: Optional[int] = None
    numa_bound: bool = False
    prefill_busy_s: Optional[float] = None
    """sum over chunks of the time from the stage's first layer starting to its last layer ending (its device)"""
    decode_busy_s_per_token: Optional[float] = None
    counters: dict[str, PhaseCounters] = field(default_factory=dict)


@dataclass(kw_only=True)
class Measurement(GpuPeaks):
    """What a run measured (seconds, bytes). Partial runs fill what they reached; the GpuPeaks fields are the
    fullest GPU's (take_fullest_gpu), the host store fields the sum over stages."""

    prompt_tokens: int
    """tokens prefilled (the input ids; after a synthetic past, the ids after it)"""
    synthetic_past_tokens: int = 0
    """N: tokens [0, N) whose K, V rows held the synthetic pattern instead of computed ones (a timing probe: runner.execute's
    ``synthetic_past_tokens``); the prefill ran at positions [N, N + prompt_tokens). 0 for a real run"""
    loaded_past_tokens: int = 0
    """N: tokens [0, N) whose K, V rows were loaded from a saved context (--load-kv) instead of computed; the
    prefill ran at positions [N, N + prompt_tokens)"""
    kv_reuse: dict = field(default_factory=dict)
    """--load-kv / --save-kv figures: load_path, loaded_bytes, load_s, save_path, saved_bytes, save_s"""
    chunk_tokens: list[int] = field(default_factory=list)
    chunk_s: list[float] = field(default_factory=list)
    prefill_s: Optional[float] = None
    time_to_first_token_s: Optional[float] = None
    decode_s_per_token: Optional[float] = None
    decode_tokens_timed: int = 0
    decode_host_s: list[float] = field(default_factory=list)
    """per decode token: the host's wall time issuing its forward (perf_counter, no sync: the host's own cost
    while it runs ahead of the GPU; it blocks, and so tracks the GPU, only once the launch queue is full)"""
    decode_step: str = "eager"
    """how decode tokens ran: "eager" (the module code per token), "static" (the fixed-shape step run eagerly: CPU,
    or a failed capture) or "graph" (replays of one captured CUDA graph); executor/generation/decode_graph.py"""
    decode_graph_setup_s: Optional[float] = None
    """wall seconds of the static decode's setup: one untimed eager step and the capture (outside decode time)"""
    decode_graph_fallback: Optional[str] = None
    """why a capture failed (the static step then ran eagerly), else None"""
    host_share_hand_off: Optional[str] = None
    """the CPU share's hand-off (engine/host_share.py HostShare.hand_off): "stream" or "join"; None without a
    share"""
    prefill_cpu_steal: Optional[StealFigures] = None
    """the hypervisor's steal of this machine's CPUs from the prefill's start until it returned (runtime/cpu_steal.py);
    None where /proc/stat cannot be read"""
    decode_cpu_steal: Optional[StealFigures] = None
    """the same from then until decode's work was synchronised"""
    share_rebalance: Optional[dict] = None
    """the CPU share chosen again during decode (RunOptions.share_rebalancing): at_token, planned_share, share,
    planned_cpu_bytes_per_s, measured_cpu_bytes_per_s, reason; None when not asked or nothing to measure"""
    generated_token_ids: list[int] = field(default_factory=list)
    stop_reason: Optional[str] = None
    """why generation ended, when a TokenStream watched it: "eos", "stop" (a stop string) or "length"; else None"""
    layer_attention_s: dict[str, list[float]] = field(default_factory=dict)
    attention_s: dict[str, float] = field(default_factory=dict)
    counters: dict[str, PhaseCounters] = field(default_factory=dict)
    gpu_outside_allocator_by_phase: dict[str, dict[str, Optional[int]]] = field(default_factory=dict)
    """CUDA: {phase: runtime/gpu_memory.py outside_allocator_snapshot} at "start", "warmed-up", "prefilled",
    "decoded" (the first GPU)"""
    stack_released_bytes_per_thread: dict[str, int] = field(default_factory=dict)
    """{device: bytes per thread} of CUDA stack the warm-up grew and the run released (gpu_memory.py
    release_grown_stack)"""
    warmup_s: Optional[float] = None
    """wall time of the warm-up pass before the timed run (CUDA: module loading, library handles, first launches)"""
    trace_events: list[tuple[str, dict, float, str]] = field(default_factory=list)
    step_logits: Optional[torch.Tensor] = None
    """[steps, vocab] float32 on CPU: logits of the last position of prefill and of each decode step"""
    stages: list[StageMeasurement] = field(default_factory=list)
    """per stage (GPU); the top-level memory figures are the fullest GPU's, the host store the sum"""
    fullest_device: Optional[str] = None

    def take_fullest_gpu(self) -> None:
        """Copy the GPU figures of the stage whose GPU peaked highest (reserved + outside the allocator)."""
        fullest = max(self.stages, key=lambda st: (st.gpu_peak_reserved_bytes or 0)
                      + (st.gpu_outside_allocator_bytes or 0))
        for name in ("gpu_peak_allocated_bytes", "gpu_peak_reserved_bytes", "gpu_process_used_bytes",
                     "gpu_outside_allocator_bytes"):
            setattr(self, name, getattr(fullest, name))
        self.gpu_store_bytes = dict(fullest.gpu_store_bytes)
        self.fullest_device = fullest.device


def fill_times(events, measurement: Measurement, extra=()) -> None:
    """Chunk, token and phase times from the run's recorder ``events``; per-layer attention spans from those and
    ``extra`` (the other stages' recorders: each span is a difference on one device's clock)."""
    starts: dict = {}
    layer_attention: dict[str, list[float]] = {}
    first_chunk_ms = token_first_ms = token_last_ms = None
    for name, meta, ms, lane in list(events) + list(extra):
        phase = meta.get("phase")
        if name == "chunk_start":
            starts[meta["chunk"]] = ms
            first_chunk_ms = ms if first_chunk_ms is None else first_chunk_ms
        elif name == "chunk_end":
            measurement.chunk_s.append((ms - starts[meta["chunk"]]) / 1000.0)
            measurement.chunk_tokens.append(meta["tokens"])
            measurement.prefill_s = (ms - first_chunk_ms) / 1000.0
        elif name == "first_token":
            measurement.time_to_first_token_s = (ms - first_chunk_ms) / 1000.0
        elif name == "token_start":
            token_first_ms = ms if token_first_ms is None else token_first_ms
        elif name == "token_end":
            token_last_ms = ms
            measurement.decode_tokens_timed += 1
        elif name == "attn_start":
            starts[("attn", phase, meta["chunk"], meta["layer"])] = ms
        elif name == "attn_end":
            seconds = (ms - starts[("attn", phase, meta["chunk"], meta["layer"])]) / 1000.0
            layer_attention.setdefault(phase, []).append(seconds)
    if token_last_ms is not None and measurement.decode_tokens_timed:
        measurement.decode_s_per_token = (token_last_ms - token_first_ms) / 1000.0 / measurement.decode_tokens_timed
    measurement.layer_attention_s = layer_attention
    measurement.attention_s = {phase: sum(values) for phase, values in layer_attention.items()}
    measurement.trace_events = [e for e in events if e[0] in ("group_start", "group_end", "h2d_start", "h2d_end",
                                                               "d2h_start", "d2h_end", "attn_start", "attn_end")]


def fill_stage_busy(stage: StageMeasurement, events, measurement: Measurement, *, single: bool) -> None:
    """Busy time of one stage: with one stage, the run's own figures; else its stage_start / stage_end spans."""
    if single:
        stage.prefill_busy_s, stage.decode_busy_s_per_token = measurement.prefill_s, measurement.decode_s_per_token
        return
    starts, prefill, decode = {}, 0.0, []
    for name, meta, ms, _lane in events:
        key = (meta.get("phase"), meta.get("chunk"))
        if name == "stage_start":
            starts[key] = ms
        elif name == "stage_end" and key in starts:
            seconds = (ms - starts.pop(key)) / 1000.0
            if key[0] == "prefill":
                prefill += seconds
            elif key[0] == "decode":
                decode.append(seconds)
    stage.prefill_busy_s = prefill
    stage.decode_busy_s_per_token = sum(decode) / len(decode) if decode else None


def merge_rank_measurements(per_rank: list[Measurement]) -> Measurement:
    """Tensor parallelism (executor/launch/): rank 0's Measurement with one stage per rank (index = rank), phase counters and host stores summed over
    the ranks (pinning: the longest, the ranks pin at once), the GPU peaks of the fullest rank."""
    merged = dataclasses.replace(per_rank[0])
    merged.stages = [dataclasses.replace(m.stages[0], index=rank, counters=dict(m.counters),
                                         prefill_busy_s=m.prefill_s, decode_busy_s_per_token=m.decode_s_per_token)
                     for rank, m in enumerate(per_rank)]
    merged.counters = PhaseCounters.summed([m.counters for m in per_rank])
    merged.host_store_bytes = sum(m.host_store_bytes for m in per_rank)
    merged.host_pin_s = max(m.host_pin_s for m in per_rank)
    merged.host_touch_s = max(m.host_touch_s for m in per_rank)
    merged.host_huge_page_bytes = sum(m.host_huge_page_bytes for m in per_rank)
    if any(st.gpu_peak_reserved_bytes is not None for st in merged.stages):
        merged.take_fullest_gpu()
    return merged
