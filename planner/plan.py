"""Plan: what ``headplan plan`` decides and predicts, and what ``headplan run`` executes. A versioned JSON file.

Field names are a contract with scripts (tests/unit/test_plan_schema.py): ``schema_version``, ``context_tokens``, ``strategy``,
``chunk_size``, ``heads_per_group``, ``resident_kv_heads``, ``memory.gpu_peak_bytes``,
``memory.gpu_breakdown.{weights,kv,activations,overhead}``, ``memory.host_kv_bytes``, ``predicted.prefill_s``,
``predicted.decode_s_per_token``, ``alternatives[*].{strategy,fits,gpu_peak_bytes,prefill_s,
decode_s_per_token,reason}``. The plan embeds the ModelSpec and HardwareProfile it was made with and the
profile's hash, so a run can tell whether it is on the hardware the plan assumed.

Several GPUs (``gpus`` > 1, planner/pipeline.py): ``stages`` gives each GPU's layers, memory and time;
``memory`` then describes the fullest GPU (``gpu_budget_bytes`` is per GPU) with ``host_kv_bytes`` summed over
the stages, ``resident_kv_heads`` is the total over the stages, and ``predicted`` is the whole pipeline.
With one GPU, ``gpus`` = 1 and ``stages`` is empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hwprofiles.jsonfile import read_json
from hwprofiles.schema import HardwareProfile
from planner.kv_reuse import ContextLoadPrediction
from planner.model_spec import ModelSpec

PLAN_SCHEMA_VERSION = 1

Strategy = Literal["standard", "chunked", "layer-offload", "head-offload"]
STRATEGIES: tuple[str, ...] = ("standard", "chunked", "layer-offload", "head-offload")
Bound = Literal["compute", "hbm", "pcie", "cpu-attention", "launch", "memory", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuBreakdown(_Model):
    """Peak GPU memory by term (bytes). ``kv`` counts every KV byte on the GPU: resident heads, ping-pong
    buffers, a chunk's fresh K, V; ``activations`` the largest transient working set of one chunk."""

    weights: int
    kv: int
    activations: int
    overhead: int


class MemoryPrediction(_Model):
    gpu_peak_bytes: int
    gpu_budget_bytes: int
    gpu_breakdown: GpuBreakdown
    kv_detail: dict[str, int] = Field(default_factory=dict, description="kv split: resident, buffers, chunk")
    host_kv_bytes: int = Field(description="KV bytes kept in host memory (the pinned store)")
    host_budget_bytes: int


class Prediction(_Model):
    """Predicted times (seconds) with the resource that binds each phase."""

    prefill_s: float
    decode_s_per_token: float
    pin_s: float = Field(description="one-time cost of page-locking the host KV store")
    total_s: float = Field(description="pin_s + prefill_s + decode_tokens * decode_s_per_token")
    prefill_bound: Bound
    decode_bound: Bound
    chunk_s: list[float] = Field(default_factory=list, description="predicted time of each prefill chunk")
    terms: dict[str, float] = Field(default_factory=dict, description="named components (seconds) for reports")


class Alternative(_Model):
    """A candidate the solver did not choose, and why."""

    strategy: Strategy
    fits: bool
    gpu_peak_bytes: int
    prefill_s: Optional[float]
    decode_s_per_token: Optional[float]
    reason: str
    chunk_size: Optional[int] = None
    heads_per_group: Optional[int] = None
    resident_kv_heads: Optional[int] = None


class Stage(_Model):
    """One GPU of a pipeline: its contiguous decoder layers (the first stage also holds the embeddings, the last
    the final norm and lm_head), its memory, and its share of the time."""

    first_layer: int
    num_layers: int
    resident_kv_heads: int = Field(description="(layer, KV head) slots of this stage's layers kept on its GPU")
    gpu_peak_bytes: int
    gpu_breakdown: GpuBreakdown
    kv_detail: dict[str, int] = Field(default_factory=dict, description="kv split: resident, buffers, chunk")
    host_kv_bytes: int = Field(description="this stage's offloaded KV in host memory (its own store and link)")
    prefill_s: float = Field(description="this GPU's busy time over the whole prefill")
    decode_s_per_token: float = Field(description="this GPU's busy time per decoded token")
    prefill_bound: Bound
    decode_bound: Bound
    idle_fraction: float = Field(description="share of the workload (prefill + decode) this GPU waits for others")
    compute_bound_chunk_tokens: Optional[int] = Field(
        None, description="smallest ladder chunk at which this stage's prefill is compute-bound (None: none)")


class Plan(_Model):
    schema_version: int = PLAN_SCHEMA_VERSION
    model: ModelSpec
    hardware: HardwareProfile
    hardware_hash: str
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    context_tokens: int
    decode_tokens: int
    strategy: Strategy
    chunk_size: int
    heads_per_group: int
    resident_kv_heads: int = Field(description="(layer, KV head) slots kept on the GPU, over all layers")
    attention_backend: str = Field("flash", description="kernel per part, e.g. 'flash' or 'cudnn-past+flash-chunk'")
    decode_graphs: bool = Field(False, description="each decode token replays as one CUDA graph (every KV head "
                                "resident, one GPU, 16-bit); False: eager decode steps")
    cpu_share: float = Field(0.0, description="F: in decode, each offloaded head's past [0, F s) is attended on the "
                             "CPU from host RAM, only [F s, s) streams (planner/host_share.py); 0: all streams")
    past_cut: Literal["binary", "whole"] = Field(
        "binary", description="cudnn-split: the past's full blocks in one cuDNN call per set bit of s // B "
        "('binary') or in one call ('whole'; its graphs built in the warm-up)")
    chunk_backend: Optional[Literal["flash", "cudnn"]] = Field(
        None, description="cudnn-split: the kernel of the chunk-vs-itself part computed once per layer (the faster "
        "in the profile's square causal points; planner/attention_time.py layer_chunk_backend); None: the "
        "executor's rule (cuDNN for chunks of at least 8K)")
    compile_layers: bool = Field(False, description="prefill runs the decoder layers' norms and MLPs "
                                 "torch.compile'd (the first compile in the warm-up); decode stays eager")
    memory: MemoryPrediction
    predicted: Prediction
    alternatives: list[Alternative] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    gpus: int = Field(1, description="GPUs of the run: a pipeline of this many contiguous stages (parallel "
                      "'layers'), or this many ranks each holding 1/N of every layer's heads (parallel 'heads')")
    parallel: Literal["layers", "heads"] = Field(
        "layers", description="how several GPUs split the model: 'layers' (planner/pipeline.py, ``stages``) or "
        "'heads' (planner/tensor_parallel.py: memory, resident_kv_heads and heads_per_group are per GPU)")
    stages: list[Stage] = Field(default_factory=list, description="per-GPU split (empty when gpus = 1)")
    kv_load: Optional[ContextLoadPrediction] = Field(None, description="headplan plan --load-kv DIR: the saved "
                                                     "context's load time against the prefill it replaces")


class PlanFileError(ValueError):
    """A plan file that cannot be read."""


def write_plan(plan: Plan, path: Path) -> None:
    Path(path).write_text(json.dumps(plan.model_dump(mode="json"), indent=1) + "\n")


def read_plan(path: Path) -> Plan:
    data = read_json(path, "plan", PlanFileError)
    if isinstance(data, dict) and data.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise PlanFileError(f"plan {path} has schema_version {data.get('schema_version')!r}, "
                            f"this headplan reads {PLAN_SCHEMA_VERSION}")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        raise PlanFileError(f"malformed plan {path}: {where}: {err.get('msg')}") from None
