"""Attention seconds of the cost model: a prefill chunk's attention per backend (flash, flex, cudnn-split, or the
profile's measured executor step) and one decode token's attention. Pure functions of the model, the profile's
rate tables (planner/hw_lookup.py RateLookup) and numpy arrays of chunk and past lengths; planner/time_model.py
composes them into layer and phase times. No torch.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from planner.host_time import PAST_BLOCK_TOKENS, chunk_part_backend
from planner.hw_lookup import RateLookup, step_backend_name
from planner.memory_model import FUSED_MERGE_MAX_PARTS
from planner.model_spec import ModelSpec

# The log-sum-exp merge of the cudnn-split parts (executor/attention/merge_triton.py): one pass that reads each part
# and writes the output, (parts + 1) * b bytes per output element, for up to FUSED_MERGE_MAX_PARTS parts; more
# go through the eager float32 accumulator, EAGER_MERGE_BYTES_PER_ELEMENT per part after the first.
EAGER_MERGE_BYTES_PER_ELEMENT = 18
# CUDNN_SPLIT_CHUNK_MIN_TOKENS (planner/host_time.py): without cuDNN causal points in the profile the composed
# model times the square causal chunk part at flash's rate.


def layer_chunk_backend(model: ModelSpec, lookup: RateLookup, chunk_tokens: int) -> Optional[str]:
    """The kernel of cudnn-split's chunk part computed once per layer (H_q query heads, c x c square causal) that
    the plan asks the executor for (Plan.chunk_backend -> executor/settings.py SplitOptions.chunk_backend): the
    faster of cuDNN's and flash's square causal rates at (H_q, c) where the profile has cuDNN's square causal
    points (executor/profiler/attention.py square_causal_sweep); None without them (the executor's rule,
    SplitOptions.chunk_backend_for: cuDNN from CUDNN_SPLIT_CHUNK_MIN_TOKENS)."""
    if not lookup.has_attention_points("cudnn", causal=True):
        return None
    rates = {backend: float(lookup.attention_flops_per_s(
        backend=backend, q_heads=model.num_attention_heads, q_len=chunk_tokens, k_len=np.array([chunk_tokens]),
        head_dim=model.head_dim, causal=True, gqa_ratio=model.query_heads_per_kv_head)[0])
        for backend in ("cudnn", "flash")}
    return "cudnn" if rates["cudnn"] > rates["flash"] else "flash"


def _square_rate_backend(lookup: RateLookup, chunk_backend: Optional[str], chunk_tokens: int) -> str:
    """The table whose square causal rate prices the chunk part: cuDNN's where the part runs on cuDNN
    (host_time.chunk_part_backend) and the profile has its causal points, else flash's."""
    on_cudnn = chunk_part_backend(chunk_backend, chunk_tokens) == "cudnn"
    return "cudnn" if on_cudnn and lookup.has_attention_points("cudnn", causal=True) else "flash"


def layer_chunk_seconds(model: ModelSpec, lookup: RateLookup, chunk: np.ndarray,
                        chunk_backend: Optional[str] = None) -> np.ndarray:
    """GPU time of cudnn-split's chunk-vs-itself part computed once per layer for all H_q query heads
    (SplitOptions.chunk_part "layer", executor/attention/split.py chunk_part): 4 H_q d c (c + 1) / 2 FLOPs at the
    square causal rate of ``chunk_backend`` for (H_q heads, q_len c, k_len c); None: the executor's rule (cuDNN for
    chunks of at least CUDNN_SPLIT_CHUNK_MIN_TOKENS), priced at cuDNN's causal points where the profile has them,
    else at flash's."""
    q_heads, head_dim = model.num_attention_heads, model.head_dim
    q_len = int(np.max(chunk))
    backend = _square_rate_backend(lookup, chunk_backend, q_len)
    rate = lookup.attention_flops_per_s(backend=backend, q_heads=q_heads, q_len=q_len, k_len=chunk,
                                        head_dim=head_dim, causal=True, gqa_ratio=model.query_heads_per_kv_head)
    return 4.0 * q_heads * head_dim * chunk * (chunk + 1) / 2.0 / rate


def attention_seconds(model: ModelSpec, lookup: RateLookup, *, kv_heads: int, chunk: np.ndarray, past: np.ndarray,
                      backend: str, elem_bytes: int = 2, past_cut: str = "binary",
                      chunk_part: str = "group", chunk_backend: Optional[str] = None) -> np.ndarray:
    """GPU time of the prefill attention of ``kv_heads`` KV heads (with their query heads) for chunks of
    ``chunk`` queries after ``past`` keys (arrays), lower-right causal.

    With step points of the backend ("<backend>-step", executor/profiler/attention_step.py: the executor's
    whole group step timed as it runs, layout and split merges included), one rate for the step:
        attn = 4 h q d (c s + c (c + 1) / 2) / step_rate(h q heads, q_len c, k_len s + c, head_dim d)
    interpolated like the kernel points (planner/hw_lookup.py). Otherwise composed from the kernel table:
    "flash": one call, 4 h q d (c s + c (c + 1) / 2) FLOPs at the flash rate for (h q, c, s + c, causal).
    "flex" (executor/attention/flex.py; soft-capped or windowed models): the same FLOPs at the rate of the
    profile's "flex" points (the executor's call, past + chunk parts and their merge, measured at the model
    family's shapes), or at the flash rate where the profile has none (the plan says so).
    "cudnn-split" (executor/attention/split.py): the past's n = s // B full blocks (B = PAST_BLOCK_TOKENS) in
    one cuDNN call per set bit of n (key length B 2^i, non-causal, at the cuDNN rate for that length), the
    tail s - n B plus the chunk in one lower-right causal call on flash (chunks >= CUDNN_SPLIT_CHUNK_MIN_TOKENS:
    or with ``chunk_backend`` "cudnn": host_time.chunk_part_backend; the square causal part at the cuDNN causal
    rate where the profile has it), and the log-sum-exp merge:
    one pass reading every part and writing the output, c h q d (parts + 1) b bytes over HBM (more than
    FUSED_MERGE_MAX_PARTS parts: the eager float32 merge, EAGER_MERGE_BYTES_PER_ELEMENT per part after the first).
    ``past_cut`` "whole" (planner/host_time.py PAST_CUTS): the n full blocks in one cuDNN call of key length n B
    at the cuDNN rate for that length (two parts per chunk: past and tail + chunk). Step points were measured
    with the binary cut, so the whole cut is always composed from the kernel table.
    ``chunk_part`` "layer" (cudnn-split; the executor's default, executor/settings.py SplitOptions): the square
    causal part is not this call's (layer_chunk_seconds prices it once per layer): the past's parts, a tail
    s - n B on flash (non-causal, at the flash rate for that key length), and the merge of those parts with the
    layer's chunk part; composed from the kernel table (the step points time the per-call arrangement).
    """
    if kv_heads <= 0:
        return np.zeros_like(past, dtype=float)
    ratio = model.query_heads_per_kv_head
    q_heads = kv_heads * ratio
    head_dim = model.head_dim
    flop_per_pair = 4.0 * q_heads * head_dim
    q_len = int(np.max(chunk))
    pairs = chunk * past + chunk * (chunk + 1) / 2.0          # lower-right causal: the past, then a triangle
    if backend == "flex":
        table_backend = "flex" if lookup.has_backend("flex") else "flash"
        rate = lookup.attention_flops_per_s(backend=table_backend, q_heads=q_heads, q_len=q_len,
                                            k_len=past + chunk, head_dim=head_dim, causal=True)
        return flop_per_pair * pairs / rate
    layer_part = backend == "cudnn-split" and chunk_part == "layer"
    if backend == "flash" or (lookup.has_step_points(backend) and past_cut == "binary" and not layer_part):
        table_backend = step_backend_name(backend) if lookup.has_step_points(backend) else "flash"
        rate = lookup.attention_flops_per_s(backend=table_backend, q_heads=q_heads, q_len=q_len,
                                            k_len=past + chunk, head_dim=head_dim, causal=True, gqa_ratio=ratio)
        return flop_per_pair * pairs / rate
    full_blocks = (past // PAST_BLOCK_TOKENS).astype(np.int64)
    tail = past - full_blocks * PAST_BLOCK_TOKENS
    past_s = np.zeros_like(past, dtype=float)
    parts = np.ones_like(past, dtype=float)
    if past_cut == "whole":
        for length in np.unique(full_blocks[full_blocks > 0]):
            key_tokens = int(length) * PAST_BLOCK_TOKENS
            rate = lookup.attention_flops_per_s(backend="cudnn", q_heads=q_heads, q_len=q_len, k_len=key_tokens,
                                                head_dim=head_dim, causal=False, gqa_ratio=ratio)
            has_block = full_blocks == length
            past_s = past_s + has_block * flop_per_pair * chunk * key_tokens / rate
            parts = parts + has_block
    for bit in range(int(np.max(full_blocks)).bit_length() if past_cut == "binary" else 0):
        has_block = (full_blocks >> bit) & 1
        block_tokens = PAST_BLOCK_TOKENS << bit
        rate = lookup.attention_flops_per_s(backend="cudnn", q_heads=q_heads, q_len=q_len, k_len=block_tokens,
                                            head_dim=head_dim, causal=False, gqa_ratio=ratio)
        past_s = past_s + has_block * flop_per_pair * chunk * block_tokens / rate
        parts = parts + has_block
    if layer_part:  # the tail alone (non-causal, on flash: no cuDNN graph per tail length) + the merge
        tail_rate = lookup.attention_flops_per_s(backend="flash", q_heads=q_heads, q_len=q_len,
                                                 k_len=np.maximum(tail, 1), head_dim=head_dim, causal=True,
                                                 gqa_ratio=ratio)
        has_tail = tail > 0
        tail_s = np.where(has_tail, flop_per_pair * chunk * tail / tail_rate, 0.0)
        parts = parts + has_tail                       # the past's parts + the layer's chunk part (parts' 1)
        merge_bytes = np.where(parts <= FUSED_MERGE_MAX_PARTS, (parts + 1) * elem_bytes,
                               (parts - 1) * EAGER_MERGE_BYTES_PER_ELEMENT)
        merge_s = np.where(past > 0, chunk * q_heads * head_dim * merge_bytes, 0.0) / lookup.profile.hbm_bytes_per_s
        return past_s + tail_s + merge_s
    chunk_rate = lookup.attention_flops_per_s(backend="flash", q_heads=q_heads, q_len=q_len,
                                              k_len=tail + chunk, head_dim=head_dim, causal=True, gqa_ratio=ratio)
    square_rate = chunk_rate
    if _square_rate_backend(lookup, chunk_backend, q_len) == "cudnn":
        square_rate = lookup.attention_flops_per_s(backend="cudnn", q_heads=q_heads, q_len=q_len, k_len=chunk,
                                                   head_dim=head_dim, causal=True, gqa_ratio=ratio)
    chunk_s = flop_per_pair * (chunk * tail / chunk_rate + chunk * (chunk + 1) / 2.0 / square_rate)
    merge_bytes = np.where(parts <= FUSED_MERGE_MAX_PARTS, (parts + 1) * elem_bytes,
                           (parts - 1) * EAGER_MERGE_BYTES_PER_ELEMENT)
    merge_s = np.where(parts > 1, chunk * q_heads * head_dim * merge_bytes, 0.0) / lookup.profile.hbm_bytes_per_s
    return past_s + chunk_s + merge_s


def decode_attention_seconds(model: ModelSpec, lookup: RateLookup, kv_heads: int, past: np.ndarray,
                             per_head_kv_bytes: np.ndarray, kernel: str = "flash") -> np.ndarray:
    """One decode token's attention over ``kv_heads`` KV heads (one call of ``kernel``: flash, or flex for the
    soft-capped models, whose compiled decode kernel the H200 ran at ~16 GB/s at Gemma-2's shapes, far from HBM
    speed): the longer of reading their
    K, V from HBM (h * 2 d (s + 1) b / HBM) and the measured flash rate at q_len 1 for (h q heads, k_len s + 1),
    4 h q d (s + 1) / rate. The second binds where one query row per head leaves most SMs idle (few heads):
    on the H100, 2 KV heads at 128K ran at ~40% of HBM speed. Profiles without flash points: HBM only."""
    if kv_heads <= 0:
        return np.zeros_like(past, dtype=float)
    hbm_s = kv_heads * per_head_kv_bytes / lookup.profile.hbm_bytes_per_s
    q_heads = kv_heads * model.query_heads_per_kv_head
    rate = lookup.decode_attention_flops_per_s(q_heads=q_heads, k_len=past + 1, head_dim=model.head_dim,
                                               kernel=kernel)
    if rate is None:
        return hbm_s
    return np.maximum(hbm_s, 4.0 * q_heads * model.head_dim * (past + 1) / rate)
