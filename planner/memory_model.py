"""GPU and host memory of one configuration: one function per term, its formula in the docstring.

Notation: L layers, H_q query heads, H_kv KV heads, d head dim, D hidden, I intermediate, V vocab, b dtype
bytes, T capacity tokens (context + decode tokens: the stores are allocated once at capacity), c chunk size,
G heads per group, G_max the largest streamed group (planner/layout.py), R resident (layer, KV head) slots.

Peak GPU bytes = weights + kv (resident + ping-pong buffers + the chunk's fresh K, V awaiting their copy to
host) + activations (the largest transient working set of one chunk) + runtime overhead (from the profile).
Host bytes = the pinned store of the offloaded slots, allocated once at capacity T (exact-size
cudaHostRegister: no power-of-two rounding, so no slack term).

Sliding-window layers (Gemma-2, Mistral v0.1; model_spec.layer_windows): their KV is a fixed window on the GPU
(kv "window": window_store_bytes), never on the host; the slot rule (planner/layout.py) spreads the R resident
slots over the L_full full-attention layers only, and L * H_kv below reads L_full * H_kv (model.kv_head_slots).
Models that need the flex attention backend (soft-caps or windows) count its parts (flex_parts_bytes) where
others count cudnn-split's.

Leaves out: allocator fragmentation beyond the profile's overhead term; the CPU copy of the weights while a
checkpoint loads (the executor loads straight to the GPU).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from planner.host_time import CUDNN_SPLIT_CHUNK_MIN_TOKENS, PAST_BLOCK_TOKENS, popcount
from planner.layout import max_group_heads
from planner.model_spec import ModelSpec
from planner.plan import GpuBreakdown, MemoryPrediction
from planner.units import MIB

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# Layers whose fresh chunk K, V may still be waiting for their device-to-host copy while the next layer runs.
IN_FLIGHT_CHUNK_KV_LAYERS = 2


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name ("bfloat16" -> 2)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}") from None


def weights_bytes(model: ModelSpec, elem_bytes: int) -> int:
    """weights = param_count * b (Llama-3-8B bf16: 8.03e9 * 2 = 14.96 GiB)."""
    return model.param_count * elem_bytes


ALLOCATOR_SLACK_BYTES = 256 * MIB
"""PyTorch's caching allocator reserves more than it hands out. With expandable segments (what headplan run
sets) reserved ran 0.08-0.23 GiB over peak allocated in five Llama-3-8B runs on the H100 (2026-11-22, the first validation runs:
benchmarks/results/validation-h100-2026-11-22.jsonl in git commit 7cb8835, since superseded by
benchmarks/results/2026-11-22-h100/validation.jsonl); a plan 0.04 GiB under the cap ran out of memory. Not yet
measured by the profiler: this is a planning margin on the constraint, not a correction of a prediction."""


def overhead_bytes(runtime_overhead_bytes: int) -> int:
    """GPU memory outside the plan's tensors = runtime (CUDA context, libraries, workspaces: measured by the
    profiler) + ALLOCATOR_SLACK_BYTES (allocator reserve beyond the peak of live tensors)."""
    return runtime_overhead_bytes + ALLOCATOR_SLACK_BYTES


# The cudnn-split merge (executor/attention/split.py, executor/attention/merge_triton.py MAX_PARTS): up to this many
# parts are merged in one pass that holds them all; more go through the eager float32 accumulator, which holds
# about EAGER_MERGE_HELD_PARTS parts' bytes (the accumulator is two, the current part one).
FUSED_MERGE_MAX_PARTS = 8
EAGER_MERGE_HELD_PARTS = 3


def split_held_parts(context_tokens: int, chunk_tokens: int) -> int:
    """Most part-sized buffers one "cudnn-split" attention call holds at once over a prefill in chunks of c:

        parts(s) = popcount(s // B) + 1 + [s % B > 0 and c >= 8K]   past blocks, the chunk part, a tail part
        held(s)  = 0 if parts = 1 (no merge) else (parts if parts <= 8 (one-pass merge) else 3 (eager)) + 1
                                                                    (+ 1: the query packed once for the parts)
        over the prefill's pasts s = 0, c, 2c, ... < context_tokens; returns max_s held(s).
    """
    past = np.arange(0, max(context_tokens, 1), max(chunk_tokens, 1), dtype=np.int64)
    tail = ((past % PAST_BLOCK_TOKENS) > 0) & (chunk_tokens >= CUDNN_SPLIT_CHUNK_MIN_TOKENS)
    parts = popcount(past // PAST_BLOCK_TOKENS) + 1 + tail.astype(np.int64)
    held = np.where(parts <= FUSED_MERGE_MAX_PARTS, parts, EAGER_MERGE_HELD_PARTS) + 1
    return int(np.max(np.where(parts > 1, held, 0)))


def split_parts_bytes(model: ModelSpec, *, chunk_tokens: int, context_tokens: int, call_kv_heads: int,
                      elem_bytes: int) -> int:
    """Transient bytes of the cudnn-split attention of one call (a streamed group or a layer's resident heads)
    of ``call_kv_heads`` KV heads: split_held_parts(n, c) * (h q) * c * d * b, q = H_q / H_kv, n the prompt, plus
    the layer's chunk part (layer_chunk_part_bytes) that every call of the layer merges with."""
    query_heads = call_kv_heads * model.query_heads_per_kv_head
    return (split_held_parts(context_tokens, chunk_tokens) * query_heads * chunk_tokens * model.head_dim
            * elem_bytes) + layer_chunk_part_bytes(model, chunk_tokens, elem_bytes)


def layer_chunk_part_bytes(model: ModelSpec, chunk_tokens: int, elem_bytes: int) -> int:
    """The layer's chunk part, alive while its head sets attend (executor/attention/split.py chunk_part): out
    [1, H_q, c, d] in b bytes and lse [1, H_q, c] float32: H_q c (d b + 4)."""
    return model.num_attention_heads * chunk_tokens * (model.head_dim * elem_bytes + 4)


FLEX_PART_BYTES_PER_ELEMENT = 10
"""attention/flex.py attend_flex over a full-attention call: the past part's and the chunk part's outputs in
16-bit (2 + 2 bytes per output element), their float32 merge (4) and its 16-bit cast (2)."""


BLOCK_MASK_BYTES_PER_PAIR = 3
"""create_block_mask (attention/flex.py, eager) holds about three c x S boolean grids while it builds a mask"""


def flex_parts_bytes(model: ModelSpec, *, chunk_tokens: int, call_kv_heads: int) -> int:
    """Transient bytes of one flex attention call of ``call_kv_heads`` KV heads: FLEX_PART_BYTES_PER_ELEMENT *
    (h q) * c * d (a sliding layer's call of all H_kv heads is one part: counted the same, an upper bound)
    + the block mask being built, BLOCK_MASK_BYTES_PER_PAIR * c * (c + W_max - 1) (c * c without windows)."""
    query_heads = call_kv_heads * model.query_heads_per_kv_head
    windows = [w for w in model.layer_windows if w is not None]
    mask_keys = chunk_tokens + (max(windows) - 1 if windows else 0)
    return (FLEX_PART_BYTES_PER_ELEMENT * query_heads * chunk_tokens * model.head_dim
            + BLOCK_MASK_BYTES_PER_PAIR * chunk_tokens * mask_keys)


def window_store_bytes(model: ModelSpec, chunk_tokens: int, elem_bytes: int) -> int:
    """Sliding layers' KV on the GPU: the windows, sum over sliding layers of 2 * H_kv * (W - 1) * d * b
    (model.window_kv_bytes), + the layer's [held past, chunk] keys and values while it attends:
    2 * H_kv * (W_max - 1 + c) * d * b. 0 without sliding layers."""
    windows = [w for w in model.layer_windows if w is not None]
    if not windows:
        return 0
    joined = 2 * model.num_key_value_heads * (max(windows) - 1 + chunk_tokens) * model.head_dim * elem_bytes
    return model.window_kv_bytes(elem_bytes) + joined


def attention_parts_bytes(model: ModelSpec, *, chunk_tokens: int, context_tokens: Optional[int],
                          call_kv_heads: int, elem_bytes: int) -> int:
    """Transient attention parts of the widest call: flex's for models that need it, cudnn-split's when the
    prefill may run it (``context_tokens`` not None), else 0."""
    if model.attn_logit_softcapping is not None or model.sliding_layers:
        heads = model.num_key_value_heads if model.sliding_layers else call_kv_heads
        return flex_parts_bytes(model, chunk_tokens=chunk_tokens, call_kv_heads=max(heads, call_kv_heads))
    if context_tokens is None:
        return 0
    return split_parts_bytes(model, chunk_tokens=chunk_tokens, context_tokens=context_tokens,
                             call_kv_heads=call_kv_heads, elem_bytes=elem_bytes)


def largest_call_kv_heads(model: ModelSpec, resident_kv_heads: int, heads_per_group: int) -> int:
    """KV heads of the widest attention call of a chunk: a layer's resident heads (at most ceil(R / L_full)) or
    a streamed group (at most G)."""
    layers, kv_heads = max(model.full_attention_layers, 1), model.num_key_value_heads
    resident_max = min(kv_heads, -(-resident_kv_heads // layers))
    group_max = min(heads_per_group, kv_heads) if resident_kv_heads < model.kv_head_slots else 0
    return max(resident_max, group_max, 1)


def chunk_activation_bytes(model: ModelSpec, chunk_tokens: int, elem_bytes: int, split_bytes: int = 0) -> int:
    """Largest transient working set of one chunk of c tokens in a transformers decoder layer, plus logits.

        held    = c * b * 2 D                         the model forward keeps ``inputs_embeds`` and the layer's
                                                      input alive while a layer runs (measured on the H100:
                                                      without these two the term came out 20% short)
        attention phase = held + c * b * (2 D         residual stream + its RMSNormed copy
                                   + 2 (H_q + 2 H_kv) d      q, k, v projections and their RoPE'd copies
                                   + 2 H_q d)                attention output and its o_proj input layout
                          + split_bytes                      the cudnn-split call's parts (split_parts_bytes)
        MLP phase       = held + c * b * (2 D + 3 I)  residual, normed input, act(gate)/up/product (SwiGLU)
        logits          = V * (b + 4)                 last position only (logits_to_keep=1), + float32
        activations     = max(attention phase, MLP phase) + logits
    """
    dim, inter, head_dim = model.hidden_size, model.intermediate_size, model.head_dim
    q_heads, kv_heads = model.num_attention_heads, model.num_key_value_heads
    held = chunk_tokens * elem_bytes * 2 * dim
    attention_phase = held + chunk_tokens * elem_bytes * (
        2 * dim
        + 2 * (q_heads + 2 * kv_heads) * head_dim
        + 2 * q_heads * head_dim
    ) + split_bytes
    mlp_phase = held + chunk_tokens * elem_bytes * (2 * dim + 3 * inter)
    logits = model.vocab_size * (elem_bytes + 4)
    return max(attention_phase, mlp_phase) + logits


def head_buffer_bytes(model: ModelSpec, group_heads_max: int, capacity_tokens: int, elem_bytes: int) -> int:
    """Ping-pong buffers = 2 (slots) * 2 (K, V) * G_max * T * d * b (0 when nothing is offloaded)."""
    return 2 * 2 * group_heads_max * capacity_tokens * model.head_dim * elem_bytes


def resident_kv_bytes(model: ModelSpec, resident_kv_heads: int, capacity_tokens: int, elem_bytes: int) -> int:
    """Resident KV = R * 2 (K, V) * d * T * b (all L * H_kv slots for chunked/standard)."""
    return resident_kv_heads * 2 * model.head_dim * capacity_tokens * elem_bytes


def chunk_kv_bytes(model: ModelSpec, chunk_tokens: int, elem_bytes: int, offloading: bool) -> int:
    """A chunk's fresh K, V kept alive until their device-to-host copy finishes:
    IN_FLIGHT_CHUNK_KV_LAYERS * 2 (K, V) * H_kv * c * d * b, or 0 when nothing is offloaded (written in place)."""
    if not offloading:
        return 0
    return IN_FLIGHT_CHUNK_KV_LAYERS * 2 * model.num_key_value_heads * chunk_tokens * model.head_dim * elem_bytes


def host_kv_bytes(model: ModelSpec, resident_kv_heads: int, capacity_tokens: int, elem_bytes: int) -> int:
    """Host store = (L * H_kv - R) * 2 (K, V) * d * T * b, page-locked once at capacity."""
    return (model.kv_head_slots - resident_kv_heads) * 2 * model.head_dim * capacity_tokens * elem_bytes


def kv_terms(model: ModelSpec, *, chunk_tokens: int, heads_per_group: int, resident_kv_heads: int,
             capacity_tokens: int, elem_bytes: int) -> dict[str, int]:
    """The KV bytes on the GPU split into resident, buffers (ping-pong), chunk (fresh K, V in flight) and, with
    sliding layers, window (window_store_bytes)."""
    offloading = resident_kv_heads < model.kv_head_slots
    group_max = (max_group_heads(resident_kv_heads, model.full_attention_layers, model.num_key_value_heads,
                                 heads_per_group) if offloading else 0)
    terms = {
        "resident": resident_kv_bytes(model, resident_kv_heads, capacity_tokens, elem_bytes),
        "buffers": head_buffer_bytes(model, group_max, capacity_tokens, elem_bytes),
        "chunk": chunk_kv_bytes(model, chunk_tokens, elem_bytes, offloading),
    }
    if model.sliding_layers:
        terms["window"] = window_store_bytes(model, chunk_tokens, elem_bytes)
    return terms


def predict_memory(model: ModelSpec, *, runtime_overhead_bytes: int, chunk_tokens: int, heads_per_group: int,
                   resident_kv_heads: int, capacity_tokens: int, elem_bytes: int, gpu_budget_bytes: int,
                   host_budget_bytes: int, split_context_tokens: Optional[int] = None) -> MemoryPrediction:
    """All memory terms of one configuration, as the Plan schema's MemoryPrediction. ``split_context_tokens``:
    the prompt length when the prefill may run "cudnn-split" (the profile has cuDNN): its parts then count in
    the activations; None: they do not."""
    kv_detail = kv_terms(model, chunk_tokens=chunk_tokens, heads_per_group=heads_per_group,
                         resident_kv_heads=resident_kv_heads, capacity_tokens=capacity_tokens,
                         elem_bytes=elem_bytes)
    breakdown = GpuBreakdown(
        weights=weights_bytes(model, elem_bytes),
        kv=sum(kv_detail.values()),
        activations=chunk_activation_bytes(model, chunk_tokens, elem_bytes, attention_parts_bytes(
            model, chunk_tokens=chunk_tokens, context_tokens=split_context_tokens, elem_bytes=elem_bytes,
            call_kv_heads=largest_call_kv_heads(model, resident_kv_heads, heads_per_group))),
        overhead=runtime_overhead_bytes,
    )
    peak = breakdown.weights + breakdown.kv + breakdown.activations + breakdown.overhead
    return MemoryPrediction(
        gpu_peak_bytes=peak, gpu_budget_bytes=gpu_budget_bytes, gpu_breakdown=breakdown, kv_detail=kv_detail,
        host_kv_bytes=host_kv_bytes(model, resident_kv_heads, capacity_tokens, elem_bytes),
        host_budget_bytes=host_budget_bytes,
    )


def max_resident_heads(model: ModelSpec, *, runtime_overhead_bytes: int, chunk_tokens: int, heads_per_group: int,
                       capacity_tokens: int, elem_bytes: int, gpu_budget_bytes: int,
                       split_context_tokens: Optional[int] = None) -> int:
    """The most resident slots R whose peak fits the GPU budget, or -1 if even R = 0 does not fit.

    Peak is linear in R within each segment [k L, (k+1) L) (the fewest resident heads of any layer is k, so
    G_max = min(G, H_kv - k) is fixed there); R = L * H_kv (nothing offloaded) drops the buffers and the
    in-flight chunk K, V; ``split_context_tokens`` (see predict_memory): the cudnn-split parts of the widest
    call (at most fewest + 1 resident heads of a layer, or G_max) count in the activations. The answer is the
    largest fitting R over the segments.
    """
    layers, kv_heads = max(model.full_attention_layers, 1), model.num_key_value_heads
    per_slot = resident_kv_bytes(model, 1, capacity_tokens, elem_bytes)
    fixed_base = (weights_bytes(model, elem_bytes) + runtime_overhead_bytes
                  + window_store_bytes(model, chunk_tokens, elem_bytes))

    def activations(call_kv_heads: int) -> int:
        parts = attention_parts_bytes(model, chunk_tokens=chunk_tokens, context_tokens=split_context_tokens,
                                      call_kv_heads=call_kv_heads, elem_bytes=elem_bytes)
        return chunk_activation_bytes(model, chunk_tokens, elem_bytes, parts)

    all_slots = model.kv_head_slots
    if fixed_base + activations(kv_heads) + all_slots * per_slot <= gpu_budget_bytes:
        return all_slots
    best = -1
    in_flight = chunk_kv_bytes(model, chunk_tokens, elem_bytes, True)
    for fewest in range(kv_heads):
        group_max = min(heads_per_group, kv_heads - fewest)
        base = fixed_base + activations(max(min(fewest + 1, kv_heads), group_max))
        fixed = base + in_flight + head_buffer_bytes(model, group_max, capacity_tokens, elem_bytes)
        if fixed > gpu_budget_bytes:
            continue
        top = min((fewest + 1) * layers - 1, all_slots - 1, (gpu_budget_bytes - fixed) // per_slot)
        if top >= fewest * layers:
            best = max(best, top)
    return best


def min_resident_for_host(model: ModelSpec, *, capacity_tokens: int, elem_bytes: int, host_budget_bytes: int) -> int:
    """The fewest resident slots whose offloaded KV fits host RAM: L * H_kv - floor(host / per-slot bytes)."""
    per_slot = resident_kv_bytes(model, 1, capacity_tokens, elem_bytes)
    return max(0, model.kv_head_slots - host_budget_bytes // per_slot)
