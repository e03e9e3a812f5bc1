"""Host time of a step (a prefill chunk or a decode token): what the CPU spends issuing the executor's work.
The step takes max(GPU time, host time) (planner/time_model.py): the host runs ahead of the GPU, with no syncs.

Host time per step (chunk or token), two models (executor_host_seconds):
  measured (the profile has executor_decode_layer_host_s and executor_group_host_s, from the real executor on a
  tiny model, executor/profiler/executor_host.py):
    host = model_s + sum over layers of (layer_s + sum over the layer's groups of (group_s
           + HOST_OPS_PER_GROUP_HEAD h launch_overhead)) + split_parts * split_part_s
    model_s = executor_model_host_s (else HOST_OPS_PER_MODEL launch_overhead); layer_s = the decode or the
    prefill layer figure (prefill falls back to decode's); split_parts = popcount(s // B) x attention calls
    of the chunk ("cudnn-split" only; the "whole" past cut: 1 for s >= B; split_part_s else HOST_OPS_CUDNN_SPLIT launch_overhead)
  graph (decode with every KV head resident on one GPU, fp16/bf16: decode_runs_as_graph): the step replays
    as one CUDA graph, host = executor_graph_token_host_s + L executor_graph_layer_host_s (else
    HOST_OPS_GRAPH_TOKEN launch_overhead)
  counted (older profiles): launch_overhead * (host ops of the step) + attention_call_overhead * attention
    calls, with op-equivalents of the executor's loop (constants below); the launch overhead of the
    imported H100 profile is calibrated so that a Llama-3-8B decode step with the KV on the GPU costs the
    measured 24.5 ms (h100-transformers-baseline-2026-11-22.json). Leaves out: the embedding, RoPE tables, the
sampling step and tokenisation (each well under 1% of a chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hwprofiles.schema import HardwareProfile
from planner.layout import offloaded_groups, resident_heads_per_layer
from planner.model_spec import ModelSpec

# Host ops (op-equivalents of PyTorch dispatch + launch + module overhead) of a transformers decoder layer:
# 2 RMSNorms (~7 ops each), 7 linears, RoPE (~10), layout copies, residual adds, SwiGLU, cache update.
HOST_OPS_PER_LAYER = 60
HOST_OPS_PER_MODEL = 30          # embedding, final norm, lm_head, logits slice, next-token argmax
HOST_OPS_RESIDENT = 3            # write the chunk's K, V into the resident store; one attention call
HOST_OPS_PER_GROUP = 6           # 3 event record/waits, write chunk K, V into the slot, output placement
HOST_OPS_PER_GROUP_HEAD = 4      # one H2D copy per head for K and V, one D2H copy per head for K and V
HOST_OPS_CUDNN_SPLIT = 5         # per extra attention part: the call, its log-sum-exp merge (~4 ops)
# Past block of the cuDNN split: the executor's default (executor/settings.py SplitOptions imports it from here).
PAST_BLOCK_TOKENS = 2048
# How the past's full blocks are cut into cuDNN calls (executor/settings.py SplitOptions.past_cut imports these):
# "binary": one call per set bit of s // B (few distinct key lengths, popcount(s // B) calls per chunk);
# "whole": the past's full blocks [0, B floor(s / B)) in one call (one call per chunk, one key length per chunk,
# whose cuDNN graphs the executor's warm-up builds before the timed run).
PAST_CUTS = ("binary", "whole")
# Chunks of at least this many tokens run the square causal chunk part of "cudnn-split" on cuDNN, shorter ones on
# flash (executor/settings.py SplitOptions.chunk_backend_for imports it from here).
CUDNN_SPLIT_CHUNK_MIN_TOKENS = 8192


def chunk_part_backend(chunk_backend: Optional[str], chunk_tokens: int) -> str:
    """The kernel of cudnn-split's square causal chunk part: ``chunk_backend`` where a plan names it ("flash" or
    "cudnn"), else the rule (cuDNN for chunks of at least CUDNN_SPLIT_CHUNK_MIN_TOKENS, flash below). The executor
    (executor/settings.py SplitOptions.chunk_backend_for) and the cost model both take it from here."""
    if chunk_backend is not None:
        return chunk_backend
    return "cudnn" if chunk_tokens >= CUDNN_SPLIT_CHUNK_MIN_TOKENS else "flash"
HOST_OPS_GRAPH_TOKEN = 8         # a replayed decode graph: the replay call, two event marks, the token's copy


def decode_runs_as_graph(resident_kv_heads: int, kv_head_slots: int, elem_bytes: int, *, gpus: int = 1,
                         enabled: bool = True, windows_or_softcap: bool = False) -> bool:
    """Whether the executor replays each decode step as one CUDA graph (executor/generation/decode_graph.py applies the
    same rule): every (layer, KV head) slot resident (no copy whose size changes per token), one GPU, a
    16-bit dtype (the flash kernel that takes the key length from the device), and not turned off; never for a
    model with sliding windows or soft-capped scores (``windows_or_softcap``: the flash kernel has neither)."""
    return (enabled and gpus == 1 and elem_bytes == 2 and resident_kv_heads >= kv_head_slots
            and not windows_or_softcap)


def graph_decode_host_seconds(profile: HardwareProfile, layers: int) -> float:
    """Host seconds per decode token replayed as a CUDA graph (module docstring)."""
    if profile.executor_graph_token_host_s is None:
        return HOST_OPS_GRAPH_TOKEN * profile.launch_overhead_s
    return profile.executor_graph_token_host_s + layers * (profile.executor_graph_layer_host_s or 0.0)


def past_block_spans(past_tokens: int, block_tokens: int, cut: str = "binary") -> list[tuple[int, int]]:
    """Key spans [start, end) that cover the past's full blocks, one per set bit of n = past // block, largest
    first: past 13 blocks -> lengths 8B, 4B, 1B; the tail past - n * B is not covered. ``cut`` "whole": one span
    [0, n B) (none when n = 0). The cut of "cudnn-split" (executor/attention/split.py builds its parts from these
    spans; ``past_part_counts`` below counts them for the cost model): one rule, here."""
    if block_tokens < 1:
        raise ValueError(f"past_block_tokens must be >= 1, got {block_tokens}")
    if cut not in PAST_CUTS:
        raise ValueError(f"past cut must be one of {PAST_CUTS}, got {cut!r}")
    full_blocks = past_tokens // block_tokens
    if cut == "whole":
        return [(0, full_blocks * block_tokens)] if full_blocks else []
    spans, start = [], 0
    for bit in range(full_blocks.bit_length() - 1, -1, -1):
        if full_blocks >> bit & 1:
            length = block_tokens << bit
            spans.append((start, start + length))
            start += length
    return spans


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each non-negative integer in an array."""
    values = values.astype(np.int64)
    count = np.zeros_like(values)
    while np.any(values):
        count += values & 1
        values = values >> 1
    return count


def past_part_counts(past: np.ndarray, block_tokens: int = PAST_BLOCK_TOKENS, cut: str = "binary") -> np.ndarray:
    """cuDNN past calls of one attention call's split for each past in ``past`` (array): popcount(s // B) for
    the binary cut, 1 (s >= B) or 0 for the whole cut; len(past_block_spans(s, B, cut)) elementwise."""
    full_blocks = (np.asarray(past) // block_tokens).astype(np.int64)
    if cut == "whole":
        return (full_blocks > 0).astype(np.int64)
    return popcount(full_blocks)


@dataclass
class LayerType:
    """Layers sharing one resident-head count: ``count`` of them, each streaming groups of ``group_sizes`` heads.
    ``window``: the sliding layers of that window (all H_kv heads resident over their last W - 1 tokens)."""

    resident: int
    count: int
    group_sizes: list[int]
    window: Optional[int] = None


def summarize_layers(model: ModelSpec, resident_kv_heads: int, heads_per_group: int) -> list[LayerType]:
    """The layers grouped by their resident-head count (planner/layout.py): each kind with its count and the
    sizes of its streamed groups, so per-layer terms are computed once per kind. The R slots spread over the
    full-attention layers; each window size of the sliding layers is one more kind (no groups)."""
    full_layers = model.full_attention_layers
    per_layer = (resident_heads_per_layer(resident_kv_heads, full_layers, model.num_key_value_heads)
                 if full_layers else [])
    types = []
    for resident in sorted(set(per_layer)):
        sizes = [len(g) for g in offloaded_groups(resident, model.num_key_value_heads, heads_per_group)]
        types.append(LayerType(resident, per_layer.count(resident), sizes))
    windows = [w for w in model.layer_windows if w is not None]
    for window in sorted(set(windows)):
        types.append(LayerType(model.num_key_value_heads, windows.count(window), [], window))
    return types


def _host_ops(layer_types: list[LayerType], backend: str) -> int:
    split_extra = HOST_OPS_CUDNN_SPLIT if backend == "cudnn-split" else 0     # the chunk part and its merge
    ops = HOST_OPS_PER_MODEL
    for lt in layer_types:
        per_layer = HOST_OPS_PER_LAYER + (HOST_OPS_RESIDENT + split_extra if lt.resident else 0)
        per_layer += sum(HOST_OPS_PER_GROUP + split_extra + HOST_OPS_PER_GROUP_HEAD * h for h in lt.group_sizes)
        ops += lt.count * per_layer
    return ops


def has_executor_host_times(profile: HardwareProfile) -> bool:
    """Whether the profile carries the executor's measured host times (else the counted-ops model)."""
    return profile.executor_decode_layer_host_s is not None and profile.executor_group_host_s is not None


def executor_host_seconds(profile: HardwareProfile, layer_types: list[LayerType], backend: str,
                          past: np.ndarray, *, decode: bool, past_cut: str = "binary") -> np.ndarray:
    """Host seconds of each step (array over the steps' pasts ``past``); the module docstring's formulas.
    ``past_cut``: the cudnn-split cut of the past (PAST_CUTS), which sets the cuDNN calls per attention call."""
    launch_s = profile.launch_overhead_s
    calls = sum(lt.count * (len(lt.group_sizes) + (1 if lt.resident else 0)) for lt in layer_types)
    # one cuDNN call (and its merge) per past part (binary: per set bit of s // B), for every attention call
    split_parts = (past_part_counts(past, PAST_BLOCK_TOKENS, past_cut) * calls if backend == "cudnn-split"
                   else np.zeros_like(past, dtype=np.int64))
    if not has_executor_host_times(profile):
        ops = _host_ops(layer_types, backend) + HOST_OPS_CUDNN_SPLIT * split_parts
        return launch_s * ops + profile.attention_call_overhead_s * (calls + split_parts)
    model_s = (profile.executor_model_host_s if profile.executor_model_host_s is not None
               else HOST_OPS_PER_MODEL * launch_s)
    layer_s = profile.executor_decode_layer_host_s
    if not decode and profile.executor_prefill_layer_host_s is not None:
        layer_s = profile.executor_prefill_layer_host_s
    group_s = profile.executor_group_host_s
    part_s = (profile.executor_split_part_host_s if profile.executor_split_part_host_s is not None
              else HOST_OPS_CUDNN_SPLIT * launch_s)
    host_s = model_s
    for lt in layer_types:
        streamed_s = sum(group_s + HOST_OPS_PER_GROUP_HEAD * heads * launch_s for heads in lt.group_sizes)
        host_s += lt.count * (layer_s + streamed_s)
    return host_s + split_parts * part_s
