"""HardwareProfile: what one machine (one GPU, its PCIe link, its host) can do, in the units of the cost model.

Two origins share this schema and are never mixed in one file:
- ``datasheet``: vendor figures, with ``source`` citing them. Rates the planner uses
  (``matmul_flops_per_s``, ``hbm_bytes_per_s``, ``attention_flops_per_s``) are the datasheet peak times an
  achievable fraction that ``source`` states; the peaks are kept beside them.
- ``measured``: written by ``headplan profile`` (executor/profiler), with ``measurement`` saying where,
  when and with which driver/torch/CUDA, the tables of measured points, and a content hash.

The scalar fields are what the planner falls back to; where a measured table exists (attention by shape,
transfers by size, matmul by shape) the planner interpolates in it instead (planner/hw_lookup.py).

Every field name carries its unit. No torch here: the planner reads this module.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

HW_SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AttentionPoint(_Frozen):
    """One measured attention call: q [1, q_heads, q_len, head_dim] against k, v [1, kv_heads, k_len, head_dim].

    FLOPs counted as 4 * q_heads * head_dim * (attended query-key pairs); for ``causal`` (lower-right
    aligned) the pairs are q_len * (k_len - q_len) + q_len * (q_len + 1) / 2, otherwise q_len * k_len.

    Backends ending in "-step" (executor/profiler/attention_step.py) time the executor's whole per-group step
    with that backend (strided query and output, slot views, cudnn-split's parts and merges), not one kernel
    call: q_len = chunk c, k_len = past + c, causal; "math-step" is the CPU path (CI), never planned with.
    "flex" times executor/attention/flex.py attend_flex as the executor calls it for a soft-capped model
    (Gemma-2: soft-cap 50, its own GQA ratio and head dim): past part + causal chunk part + merge, causal.
    """

    backend: Literal["flash", "cudnn", "flash_attn", "efficient", "math", "cpu", "flash-step", "cudnn-split-step",
                     "math-step", "flex"]
    head_dim: int
    q_heads: int
    kv_heads: int
    q_len: int
    k_len: int
    causal: bool
    flops_per_s: float
    spread_rel: float = Field(0.0, description="(p90 - p10) / median of the repeats")


class TransferPoint(_Frozen):
    """One measured copy between host and GPU of ``size_bytes`` (a single contiguous transfer)."""

    direction: Literal["h2d", "d2h", "bidir"]
    host_memory: Literal["pinned", "registered", "pageable"]
    size_bytes: int
    bytes_per_s: float
    concurrent_with: Literal["none", "matmul", "attention"] = "none"
    spread_rel: float = 0.0


class AllReducePoint(_Frozen):
    """One measured NCCL all-reduce (sum, in place) of ``size_bytes`` over ``gpus`` GPUs of the host: the median
    ``seconds`` per call and the bus bandwidth 2 (N - 1) / N * size / seconds (nccl-tests' busbw)."""

    gpus: int
    size_bytes: int
    seconds: float
    bus_bytes_per_s: float
    dtype: str = "bfloat16"


class MatmulPoint(_Frozen):
    """One measured bf16 matmul [m, k] @ [k, n]: 2 * m * n * k FLOPs."""

    m: int
    n: int
    k: int
    dtype: str = "bfloat16"
    flops_per_s: float
    spread_rel: float = 0.0


class PinningPoint(_Frozen):
    """Cost of making ``size_bytes`` of host memory page-locked with one method."""

    method: Literal["torch_pin_memory", "cuda_host_register", "cuda_host_alloc"]
    size_bytes: int
    seconds: float


class CpuAttentionPoint(_Frozen):
    """The host share's decode kernel (executor/attention/host_attention.py) over host-store rows: one query per
    query head (``ratio`` per KV head) against ``kv_heads`` heads of ``key_tokens`` keys, run by ``threads``
    CPU threads. ``bytes_per_s`` counts the KV bytes read, 2 kv_heads key_tokens head_dim element_bytes, per
    second of the call (median of repeats)."""

    threads: int
    kv_heads: int
    ratio: int
    key_tokens: int
    head_dim: int
    element_bytes: int = 2
    bytes_per_s: float
    spread_rel: float = 0.0


class HostConcurrencyPoint(_Frozen):
    """Pinned host-to-device copies and the host share's kernel on ``cpu_threads`` threads over other host memory,
    running at once (they share the host's memory controllers): what each achieved meanwhile and alone. The planner's
    DMA factor is concurrent / alone; its kernel factor is concurrent / the cpu_attention_table's rate at the probe's
    128K keys (planner/host_share.py: the probe runs the kernel as decode does, so its level is the one to price)."""

    cpu_threads: int
    h2d_bytes_per_s: float
    cpu_read_bytes_per_s: float = Field(description="the kernel's KV bytes per second during the copies")
    h2d_alone_bytes_per_s: float
    cpu_alone_bytes_per_s: float


class SustainedPoint(_Frozen):
    """One model shape's prefill kernels sustained for seconds (executor/profiler/sustained.py): per step the MLP's
    up projection [4096, D] @ [D, I] twice and one cuDNN call of the packed past (8 KV heads, 4 query heads each,
    4096 queries, 32768 keys, head dim d), random normal data. Ratios = burst seconds / sustained seconds."""

    head_dim: int
    hidden_size: int
    intermediate_size: int
    attention_ratio: float = Field(description="the attention call's burst seconds over its sustained seconds: < 1 "
                                   "where the power limit lowers the clock")
    matmul_ratio: float = Field(description="the same for the matmul")
    attention_flops_per_s: float = Field(description="the attention call's sustained rate")
    matmul_flops_per_s: float = Field(description="the matmul's sustained rate")


class GraphDecodePoint(_Frozen):
    """A model layer shape's replayed decode step (executor/profiler/graph_decode.py): the executor's CUDA-graph
    decode of random weights, all KV heads resident, per token step(L, s) = token_s + L layer_s(s) for L decoder
    layers over a context of s keys, layer_s measured at ``context_tokens`` (ascending)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int = Field(description="the measured model's vocabulary (its lm_head is part of token_s)")
    token_s: float = Field(description="seconds per token outside the decoder layers (embedding, final norm, "
                           "lm_head, next token)")
    context_tokens: list[int] = Field(description="the contexts of the measured steps, ascending")
    layer_s: list[float] = Field(description="seconds per token per decoder layer at each of context_tokens")

    @property
    def layer_shape(self) -> tuple[int, int, int, int, int]:
        """(hidden, intermediate, query heads, KV heads, head dim), as planner.model_spec.ModelSpec.layer_shape."""
        return (self.hidden_size, self.intermediate_size, self.num_attention_heads, self.num_key_value_heads,
                self.head_dim)


class MeasurementInfo(_Frozen):
    """Where and when a measured profile was taken."""

    date: str
    hostname: str = ""
    gpu_name: str
    driver_version: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    cudnn_version: str = ""
    mode: Literal["quick", "full", "cpu-only", "imported"] = "full"
    notes: str = ""


class HardwareProfile(_Frozen):
    """One GPU with its host. Sizes in bytes, rates per second, times in seconds."""

    schema_version: int = HW_SCHEMA_VERSION
    name: str = Field(description="catalog name, e.g. 'rtx-4090' or 'h100-sxm-measured'")
    origin: Literal["datasheet", "measured"]
    source: str = Field(description="citation for datasheet values, or how the measurement was made")
    gpu_name: str
    gpu_mem_bytes: int = Field(description="memory on the card: the vendor figure (datasheet) or what the "
                               "device reports (measured)")
    sm_count: Optional[int] = Field(
        None, description="streaming multiprocessors: an attention call's 128-row query tiles run in waves of this "
        "many (planner/hw_lookup.py wave_efficiency); the vendor figure (datasheet) or what the device reports "
        "(measured); None: no wave correction between the attention table's shapes")
    # compute
    matmul_peak_flops_per_s: float = Field(description="dense bf16 tensor-core peak, datasheet")
    matmul_flops_per_s: float = Field(description="achievable dense bf16 matmul rate at large shapes")
    attention_flops_per_s: float = Field(description="achievable prefill attention rate (scalar fallback)")
    # memory
    hbm_peak_bytes_per_s: float
    hbm_bytes_per_s: float = Field(description="achievable read bandwidth (device-to-device copy: (read+write)/2)")
    # host link
    pcie_generation: int
    pcie_lanes: int = 16
    pcie_h2d_bytes_per_s: float = Field(description="achievable pinned host-to-device at large transfers")
    pcie_d2h_bytes_per_s: float = Field(description="achievable pinned device-to-host at large transfers")
    pcie_bidir_total_bytes_per_s: float = Field(description="both directions at once, sum of the two")
    pcie_h2d_pageable_bytes_per_s: Optional[float] = None
    # host
    host_mem_bytes: int = Field(description="host RAM the KV store may use by default")
    host_memcpy_bytes_per_s: Optional[float] = None
    pin_bytes_per_s: float = Field(description="rate of making host memory page-locked (bytes pinned per s)")
    # runtime
    runtime_overhead_bytes: int = Field(description="GPU memory the runtime takes outside tensors: CUDA "
                                        "context, cuBLAS/cuDNN workspaces, allocator reserve")
    flex_runtime_overhead_bytes: Optional[int] = Field(
        None, description="GPU memory outside the allocator that the compiled FlexAttention kernels add to "
        "runtime_overhead_bytes (the driver's local-memory pool grows for them); None: not measured")
    launch_overhead_s: float = Field(description="host cost of one kernel launch through PyTorch")
    attention_call_overhead_s: float = Field(0.0, description="fixed cost of one attention call")
    cudnn_graph_build_s: Optional[float] = Field(None, description="cuDNN attention: first call at a new shape")
    cudnn_causal_graph_build_s: Optional[float] = Field(
        None, description="cuDNN attention: first call at a new square causal shape (the cudnn-split chunk part); "
        "None: priced as cudnn_graph_build_s")
    elementwise_bytes_per_s: Optional[float] = Field(
        None, description="achieved rate of a Llama layer's memory-bound ops (norms, RoPE, layout copies, residual "
        "adds, SwiGLU product) in eager PyTorch, bytes as planner/layer_time.elementwise_bytes_per_token counts "
        "them (executor/profiler/elementwise.py); None: hbm_bytes_per_s")
    compiled_elementwise_bytes_per_s: Optional[float] = Field(
        None, description="the same ops with the norms and the SwiGLU product torch.compile'd, as a run with "
        "--compile-layers executes them, over the same (eager) byte count; None: not measured (the planner then "
        "prices --compile-layers at elementwise_bytes_per_s)")
    graph_decode_table: list[GraphDecodePoint] = Field(
        default_factory=list, description="the executor's replayed decode step per model layer shape "
        "(executor/profiler/graph_decode.py); the planner prices a replayed decode token of a matching model from it, "
        "else from the kernel tables")
    sustained_table: list[SustainedPoint] = Field(
        default_factory=list, description="a prefill's attention and matmuls run back to back for seconds against "
        "the tables' short bursts, per head dim (executor/profiler/sustained.py); the planner divides prefill "
        "attention and matmul times by the ratios; empty: the tables' rates as they are")
    # host time of the executor's own loop (executor/profiler/executor_host.py); None: the planner falls back
    # to counted host ops x launch_overhead_s (planner/time_model.py)
    executor_model_host_s: Optional[float] = Field(
        None, description="host seconds of one forward outside the decoder layers (embedding, final norm, "
        "lm_head, next-token argmax, the runner's bookkeeping), per prefill chunk or decode token")
    executor_decode_layer_host_s: Optional[float] = Field(
        None, description="host seconds of one decoder layer of a decode step with all KV heads resident "
        "(transformers' module code and the resident attention call)")
    executor_group_host_s: Optional[float] = Field(
        None, description="extra host seconds per streamed head group per layer (events, slot writes, the "
        "group's attention call, output placement); its heads' copies are counted apart")
    executor_prefill_layer_host_s: Optional[float] = Field(
        None, description="host seconds of one decoder layer of a small prefill chunk, all heads resident, "
        "flash attention")
    executor_split_part_host_s: Optional[float] = Field(
        None, description="extra host seconds per cuDNN part of the cudnn-split attention (one cuDNN call and "
        "its log-sum-exp merge) per attention call")
    executor_graph_token_host_s: Optional[float] = Field(
        None, description="host seconds per decode token when the step replays as a CUDA graph (all KV heads "
        "resident, one GPU), outside the per-layer part: the replay call, the token's events and copy")
    executor_graph_layer_host_s: Optional[float] = Field(
        None, description="extra host seconds of a replayed decode graph per decoder layer (the graph's launch "
        "cost grows with its kernels)")
    # host attention (executor/profiler/host_attention.py; None / empty: the planner keeps decode's CPU share at 0)
    host_read_bytes_per_s: Optional[float] = Field(
        None, description="host memory read by all the CPU threads at once (a sum over GiBs of bf16)")
    host_read_threads: Optional[int] = Field(None, description="threads of that read")
    host_share_handoff_s: Optional[float] = Field(
        None, description="per layer fixed cost of the CPU's decode share beyond its kernel: query to the pinned "
        "buffer, the worker's event wait and wake-up, out + lse back, the float32 merge")
    host_attention_call_s: Optional[float] = Field(
        None, description="fixed cost per call of the CPU's decode share job as a decode step calls it (the worker "
        "idle for a layer's gap, the main thread issuing beside it), beyond its KV bytes at the cpu_attention_table "
        "rate: the thread team's wake-up, the tasks' set-up; None: not measured (priced as 0)")
    cpu_attention_table: list[CpuAttentionPoint] = Field(default_factory=list)
    host_concurrency_table: list[HostConcurrencyPoint] = Field(default_factory=list)
    # disk (headplan profile --disk DIR: executor/profiler/disk.py); None: not measured
    disk_write_bytes_per_s: Optional[float] = Field(
        None, description="sequential write of one file from pinned memory, fsync'ed, to the profiled folder")
    disk_read_bytes_per_s: Optional[float] = Field(
        None, description="sequential read of that file after its pages were dropped from the page cache")
    disk_path: Optional[str] = Field(None, description="the folder the disk figures were measured in")
    # measured tables (empty for datasheet profiles)
    attention_table: list[AttentionPoint] = Field(default_factory=list)
    transfer_table: list[TransferPoint] = Field(default_factory=list)
    matmul_table: list[MatmulPoint] = Field(default_factory=list)
    pinning_table: list[PinningPoint] = Field(default_factory=list)
    allreduce_table: Optional[list[AllReducePoint]] = Field(
        None, description="all-reduce time by size over several GPUs (None: one GPU visible, or not measured)")
    measurement: Optional[MeasurementInfo] = None
    content_hash: str = Field("", description="sha256 of the profile without this field (hwprofiles.profile_hash)")


# Optional fields added after the first catalog files: left out of the hash while None, so the files written
# before them keep their hash.
HASH_OMITTED_WHEN_NONE = ("sm_count", "executor_model_host_s", "executor_decode_layer_host_s", "executor_group_host_s",
                          "executor_prefill_layer_host_s", "executor_split_part_host_s",
                          "cudnn_causal_graph_build_s", "elementwise_bytes_per_s", "compiled_elementwise_bytes_per_s",
                          "executor_graph_token_host_s",
                          "executor_graph_layer_host_s", "host_read_bytes_per_s", "host_read_threads",
                          "host_share_handoff_s", "host_attention_call_s", "disk_write_bytes_per_s",
                          "disk_read_bytes_per_s", "disk_path", "flex_runtime_overhead_bytes")
HASH_OMITTED_WHEN_EMPTY = ("cpu_attention_table", "host_concurrency_table", "allreduce_table", "sustained_table",
                           "graph_decode_table")


def profile_hash(profile: HardwareProfile) -> str:
    """sha256 (hex, first 16 chars) of the profile's JSON with ``content_hash`` blanked: stable across writes."""
    data = profile.model_dump(mode="json")
    data["content_hash"] = ""
    for key in HASH_OMITTED_WHEN_NONE:
        if data.get(key) is None:
            data.pop(key, None)
    for key in HASH_OMITTED_WHEN_EMPTY:
        if not data.get(key):
            data.pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_hash(profile: HardwareProfile) -> HardwareProfile:
    """Return the profile with ``content_hash`` filled in."""
    return profile.model_copy(update={"content_hash": profile_hash(profile)})
