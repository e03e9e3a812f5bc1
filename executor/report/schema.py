"""RunReport: what ``headplan run`` measured beside what the plan predicted; report.json and report.md.

report.json (schema_version 1) holds at least: ``predicted`` and ``measured`` blocks, each with ``prefill_s``,
``decode_s_per_token``, ``gpu_peak_bytes`` and ``chunk_s`` (a list); ``error`` with the relative error
(measured / predicted - 1) of each; ``generated_token_ids``; plus time to first token, bytes moved each way,
achieved PCIe bandwidth, attention TFLOP/s, the attention share of prefill, the memory peaks, the settings
run, and ``status`` ('complete', 'gpu_out_of_memory', 'interrupted') with the fault message for partial runs.
A timing probe (headplan run --tail-chunks K) adds ``tail``: its prefill figures, predicted and measured, are those
of the last K chunks only (TailFigures).
Leaves out: writing and reading the files (report/files.py), report.md (report/markdown.py), plots
(report/plots.py), filling the figures (report/assemble.py).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

REPORT_SCHEMA_VERSION = 1


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimesAndPeak(_Block):
    """Predicted or measured headline figures (seconds, bytes)."""

    prefill_s: Optional[float] = None
    decode_s_per_token: Optional[float] = None
    gpu_peak_bytes: Optional[int] = None
    chunk_s: list[float] = Field(default_factory=list)
    time_to_first_token_s: Optional[float] = None
    warmup_s: Optional[float] = Field(None, description="measured only: the warm-up pass before the timed run "
                                      "(one-time process costs), outside prefill_s")
    gpu_breakdown: dict[str, int] = Field(default_factory=dict, description="bytes by term")
    host_kv_bytes: Optional[int] = None


class RelativeErrors(_Block):
    """measured / predicted - 1 (positive: slower or bigger than predicted); None where either is missing."""

    prefill_s: Optional[float] = None
    decode_s_per_token: Optional[float] = None
    gpu_peak_bytes: Optional[float] = None
    chunk_s: list[Optional[float]] = Field(default_factory=list)


class Transfers(_Block):
    """Bytes moved in one phase and the rates achieved (over the phase's wall time)."""

    h2d_bytes: int = 0
    d2h_bytes: int = 0
    h2d_bytes_per_s: Optional[float] = None
    d2h_bytes_per_s: Optional[float] = None
    group_fetches: int = 0
    host_attention_bytes: int = Field(0, description="KV bytes the CPU attended in place (decode's CPU share)")
    host_attention_bytes_per_s: Optional[float] = Field(
        None, description="those bytes over the CPU worker's kernel seconds (its own rate, not the phase's)")


class HostShareFigures(_Block):
    """Decode's CPU share (executor/engine/host_share.py): the share, the bytes each side read per token and the
    rates, predicted (the plan's terms) beside measured."""

    cpu_share: float
    predicted_cpu_bytes_per_token: Optional[float] = None
    predicted_pcie_bytes_per_token: Optional[float] = None
    predicted_cpu_s_per_token: Optional[float] = Field(None, description="the CPU share's layers summed: kernel + "
                                                       "hand-off")
    measured_cpu_bytes_per_token: Optional[float] = None
    measured_pcie_bytes_per_token: Optional[float] = None
    measured_cpu_kernel_s_per_token: Optional[float] = Field(None, description="the worker's job seconds (kernel, "
                                                             "merge, writes), summed over the layers")
    measured_cpu_bytes_per_s: Optional[float] = Field(None, description="CPU bytes / the worker's kernel seconds")
    measured_cpu_calls_per_token: Optional[float] = Field(None, description="layers whose host share ran")
    measured_cpu_start_delay_s_per_token: Optional[float] = Field(
        None, description="end of submit -> the job's start (worker wake-up, event wait, GIL), summed over the layers")
    measured_join_wait_s_per_token: Optional[float] = Field(
        None, description="the main thread's waits for the worker in collect, summed over the layers")
    measured_pcie_bytes_per_s: Optional[float] = Field(None, description="PCIe bytes / decode wall time")
    hand_off: Optional[str] = Field(None, description="stream: the GPU waited for the worker's result on the stream "
                                    "(runtime/stream_wait.py), the main thread never joined; join: the main thread "
                                    "joined the worker every layer (no stream wait on this machine, or "
                                    "HEADPLAN_HOST_WAIT=join)")
    rebalance: Optional[dict[str, Any]] = Field(
        None, description="--rebalance-cpu-share: after at_token decode tokens the share's jobs read "
        "measured_cpu_bytes_per_s where the plan's would read planned_cpu_bytes_per_s (each job's fixed cost "
        "included: planner/share_rebalance.py PricedJob), and F went from planned_share to "
        "share for the rest (planner/share_rebalance.py; reason says why); the per-token figures above cover both")


class AttentionFigures(_Block):
    flops: float = 0.0
    seconds: float = 0.0
    """time on the compute stream inside the attention function (includes waits for prefetches)"""
    flops_per_s: Optional[float] = None
    share_of_phase: Optional[float] = None


class HostFigures(_Block):
    """Decode per token: the host's own time (Python, dispatch, launches) and the GPU's, predicted, beside the host
    time measured; a token takes about the longer of the two (the host runs ahead of the GPU, no syncs)."""

    predicted_decode_host_s_per_token: Optional[float] = None
    predicted_decode_gpu_s_per_token: Optional[float] = None
    measured_decode_host_s_per_token: Optional[float] = Field(
        None, description="median over tokens of the host's wall time issuing one token (perf_counter, no sync)")
    planned_decode_graphs: Optional[bool] = Field(None, description="the plan's decode_graphs")
    decode_step: Optional[str] = Field(None, description="how decode ran: eager, static (fixed-shape step, no "
                                       "graph) or graph (one CUDA graph replayed per token)")
    decode_graph_setup_s: Optional[float] = Field(None, description="one-time setup of the static decode step "
                                                  "(an untimed step and the capture), outside decode time")
    decode_graph_fallback: Optional[str] = Field(None, description="why the capture failed, when it did")
    prefill_cpu_steal_fraction: Optional[float] = Field(
        None, description="CPU time the hypervisor took from this machine's CPUs during prefill, as a fraction of "
        "all of it (/proc/stat steal; 0 on bare metal; None where unreadable)")
    decode_cpu_steal_fraction: Optional[float] = Field(None, description="the same during decode")
    decode_busiest_cpu_steal_fraction: Optional[float] = Field(
        None, description="during decode, the largest fraction taken from any one CPU (the CPU share's kernel "
        "waits for its slowest thread)")


class MemoryFigures(_Block):
    gpu_peak_allocated_bytes: Optional[int] = None
    gpu_peak_reserved_bytes: Optional[int] = None
    gpu_process_used_bytes: Optional[int] = Field(None, description="as the driver reports it (NVML or "
                                                  "total - free)")
    gpu_budget_bytes: Optional[int] = None
    gpu_memory_fraction: Optional[float] = None
    host_store_bytes: int = 0
    host_pin_s: float = 0.0
    host_touch_s: float = Field(0.0, description="first touch of every host-store page, before pinning")
    host_huge_page_bytes: int = Field(0, description="of the host store, the bytes backed by huge pages")
    gpu_outside_allocator_by_phase: dict[str, dict[str, Optional[int]]] = Field(
        default_factory=dict, description="the first GPU at start, warmed-up, prefilled, decoded: "
        "outside_allocator_bytes (driver-reported use - PyTorch's reserved) and stack_limit_bytes (the CUDA "
        "per-thread stack, which the driver grows for kernels that need it)")
    cuda_stack_released_bytes_per_thread: dict[str, int] = Field(
        default_factory=dict, description="per GPU: the stack the warm-up's kernels grew, lowered again before "
        "the timed run (x the threads the GPU holds = the bytes returned)")
    gpu_store_bytes: dict[str, int] = Field(default_factory=dict)


class GpuFigures(_Block):
    """One GPU (pipeline stage) of a run over several: predicted beside measured, and the relative errors."""

    index: int
    device: str
    first_layer: int
    num_layers: int
    resident_kv_heads: int
    numa_node: Optional[int] = None
    numa_bound: bool = False
    host_store_bytes: int = 0
    predicted_gpu_peak_bytes: Optional[int] = None
    measured_gpu_peak_bytes: Optional[int] = None
    predicted_prefill_busy_s: Optional[float] = None
    measured_prefill_busy_s: Optional[float] = Field(None, description="sum over chunks of the stage's span, "
                                                     "first layer start to last layer end, on its own GPU")
    predicted_decode_busy_s_per_token: Optional[float] = None
    measured_decode_busy_s_per_token: Optional[float] = None
    predicted_idle_fraction: Optional[float] = None
    measured_idle_fraction: Optional[float] = Field(None, description="1 - busy / (prefill + decode) wall time")
    transfers: dict[str, Transfers] = Field(default_factory=dict)
    error: dict[str, Optional[float]] = Field(default_factory=dict, description="measured / predicted - 1")


class TailFigures(_Block):
    """A timing probe (headplan run --tail-chunks K): only the last K of the prefill's M chunks are timed (after
    one untimed lead-in chunk that pays the first-time costs of the context's shapes), at their real positions,
    over a KV past of N tokens of a fixed random pattern standing in for the earlier chunks. Prefill (chunk_s,
    prefill_s, time to first token), predicted and measured alike, covers those K chunks; decode and GPU peak are
    at the full context; generated tokens and logits are not the model's."""

    chunks: int = Field(description="K: the last chunks run and timed")
    total_chunks: int = Field(description="M: the prefill's chunks over the whole prompt")
    skipped_tokens: int = Field(description="N: tokens [0, N) whose K, V were a fixed random pattern instead of computed")
    lead_in: int = Field(0, description="untimed chunks run before the K timed ones")
    predicted_full_prefill_s: Optional[float] = Field(None, description="the plan's prediction of the whole "
                                                      "prefill (all M chunks)")
    description: str = ""


class KVReuseFigures(_Block):
    """A saved context used by the run (headplan run --load-kv DIR / --save-kv DIR; executor/kv/)."""

    reused_tokens: int = Field(0, description="N: prompt tokens [0, N) whose K, V were loaded instead of computed")
    prefilled_tokens: int = Field(description="prompt tokens [N, n) that were prefilled")
    loaded_bytes: int = Field(0, description="bytes read from disk (whole segments covering [0, N))")
    load_s: Optional[float] = Field(None, description="wall seconds of the load (read, checksums, copies)")
    load_bytes_per_s: Optional[float] = None
    path: Optional[str] = Field(None, description="the --load-kv folder")
    save_s: Optional[float] = Field(None, description="wall seconds of the --save-kv write (fsync'ed)")
    saved_bytes: Optional[int] = None
    save_bytes_per_s: Optional[float] = None
    save_path: Optional[str] = None
    predicted_load_s: Optional[float] = Field(None, description="load bytes / the profile's disk read rate")
    predicted_save_s: Optional[float] = Field(None, description="saved bytes / the profile's disk write rate")
    predicted_replaced_prefill_s: Optional[float] = Field(None, description="the plan's prefill of [0, N): what "
                                                          "the load replaced (planner/kv_reuse.py)")
    predicted_full_prefill_s: Optional[float] = Field(None, description="the plan's prefill of the whole prompt")
    disk_read_bytes_per_s: Optional[float] = Field(None, description="the profile's figure, for comparison")
    disk_write_bytes_per_s: Optional[float] = None
    error: dict[str, Optional[float]] = Field(default_factory=dict, description="measured / predicted - 1")


class RunReport(_Block):
    schema_version: int = REPORT_SCHEMA_VERSION
    status: str = "complete"
    fault: Optional[str] = None
    model: str
    device: str
    dtype: str
    context_tokens: int
    new_tokens: int
    settings: dict[str, Any]
    predicted: TimesAndPeak
    measured: TimesAndPeak
    error: RelativeErrors
    generated_token_ids: list[int] = Field(default_factory=list)
    prompt_tokens: Optional[int] = Field(None, description="tokens of the prompt as given (its ids, or its text "
                                         "after the tokenizer and the chat template)")
    generated_text: Optional[str] = Field(None, description="the answer as text (special tokens skipped, cut "
                                          "before a stop string), as streamed; None without a tokenizer")
    stop_reason: Optional[str] = Field(None, description="'eos' (end-of-sequence id), 'stop' (a --stop string) "
                                       "or 'length' (--new-tokens reached)")
    sampling: dict[str, Any] = Field(default_factory=dict, description="temperature, top_p, top_k, "
                                     "repetition_penalty, seed, stop strings, ignore_eos")
    transfers: dict[str, Transfers] = Field(default_factory=dict)
    attention: dict[str, AttentionFigures] = Field(default_factory=dict)
    memory: MemoryFigures = Field(default_factory=MemoryFigures)
    host: HostFigures = Field(default_factory=HostFigures)
    verify: Optional[dict[str, Any]] = None
    warnings: list[str] = Field(default_factory=list)
    plan_hardware: Optional[str] = None
    versions: dict[str, str] = Field(default_factory=dict)
    gpus: list[GpuFigures] = Field(default_factory=list, description="per GPU when the run used several: "
                                   "pipeline stages, or tensor-parallel ranks (the headline memory figures are then "
                                   "the fullest GPU's)")
    parallel: Optional[str] = Field(None, description="several GPUs: 'layers' (pipeline stages) or 'heads' "
                                    "(tensor-parallel ranks, each all layers and 1/N of the heads); None: one")
    tail: Optional[TailFigures] = Field(None, description="a --tail-chunks timing probe (None: a whole run)")
    host_share: Optional[HostShareFigures] = Field(None, description="decode's CPU share (None: F = 0)")
    kv: Optional[KVReuseFigures] = Field(None, description="--load-kv / --save-kv figures (None: neither)")


def relative_error(measured: Optional[float], predicted: Optional[float]) -> Optional[float]:
    """measured / predicted - 1, or None when either is missing or predicted is 0."""
    if measured is None or predicted is None or predicted == 0:
        return None
    return measured / predicted - 1.0


def errors_of(predicted: TimesAndPeak, measured: TimesAndPeak) -> RelativeErrors:
    pairs = zip(measured.chunk_s, predicted.chunk_s)
    return RelativeErrors(prefill_s=relative_error(measured.prefill_s, predicted.prefill_s),
                          decode_s_per_token=relative_error(measured.decode_s_per_token, predicted.decode_s_per_token),
                          gpu_peak_bytes=relative_error(measured.gpu_peak_bytes, predicted.gpu_peak_bytes),
                          chunk_s=[relative_error(m, p) for m, p in pairs])
