"""The non-attention GPU time of a decoder layer in the cost model (planner/time_model.py): its seven projections on the
matmul / HBM roofline (linear_seconds) and its memory-bound elementwise ops (elementwise_bytes_per_token over
elementwise_rate). Pure numpy; no torch.
"""

from __future__ import annotations

import numpy as np

from hwprofiles.schema import HardwareProfile
from planner.hw_lookup import RateLookup
from planner.model_spec import ModelSpec


def elementwise_bytes_per_token(model: ModelSpec, elem_bytes: int) -> int:
    """HBM bytes per token per layer of the memory-bound ops in a transformers Llama layer (eager):

        2 RMSNorms (float32 upcast: read b, write/read 4-byte copies ~5 times, cast, weight)  2 D (3 b + 20)
        RoPE on q and k (cos/sin products, rotate_half slice + neg + cat, add: ~10 passes)   (H_q + H_kv) d 10 b
        head-first layout copies of q, k, v and of the attention output back                 (2 H_q + 2 H_kv) d 2 b
        two residual adds (read 2, write 1)                                                  2 * 3 D b
        SwiGLU: silu(gate) (read + write), product (2 reads + write)                         I 5 b
    """
    dim, inter, head_dim = model.hidden_size, model.intermediate_size, model.head_dim
    q_heads, kv_heads = model.num_attention_heads, model.num_key_value_heads
    return (2 * dim * (3 * elem_bytes + 20)
            + (q_heads + kv_heads) * head_dim * 10 * elem_bytes
            + (2 * q_heads + 2 * kv_heads) * head_dim * 2 * elem_bytes
            + 2 * 3 * dim * elem_bytes
            + inter * 5 * elem_bytes)


def elementwise_rate(profile: HardwareProfile, *, compiled: bool) -> float:
    """Bytes per second of a layer's elementwise ops, counted as elementwise_bytes_per_token counts them (the eager
    ops' bytes): the compiled path's measured rate when ``compiled`` and the profile has it (fused norms and
    SwiGLU move fewer bytes, which shows as a higher rate over the same count), else the eager rate, else HBM."""
    if compiled and profile.compiled_elementwise_bytes_per_s:
        return profile.compiled_elementwise_bytes_per_s
    return profile.elementwise_bytes_per_s or profile.hbm_bytes_per_s


def linear_seconds(model: ModelSpec, lookup: RateLookup, tokens: np.ndarray, elem_bytes: int,
                   sustained_ratio: float = 1.0) -> np.ndarray:
    """Time of one layer's seven projections for ``tokens`` rows each (array), on the matmul/HBM roofline, the
    matmul rates times ``sustained_ratio`` (a prefill's: RateLookup.sustained_ratios)."""
    cache = lookup.memo.setdefault(("linear", model.name, model.hidden_size, model.intermediate_size,
                                    model.num_attention_heads, model.num_key_value_heads, elem_bytes,
                                    sustained_ratio), {})
    unique = np.unique(tokens)
    for value in unique:
        if value not in cache:
            cache[value] = float(_linear_seconds(model, lookup, np.array([value]), elem_bytes, sustained_ratio)[0])
    if len(unique) == 1:
        return np.full_like(tokens, cache[unique[0]], dtype=float)
    return np.array([cache[value] for value in tokens])


def _linear_seconds(model: ModelSpec, lookup: RateLookup, tokens: np.ndarray, elem_bytes: int,
                    sustained_ratio: float = 1.0) -> np.ndarray:
    dim, inter, head_dim = model.hidden_size, model.intermediate_size, model.head_dim
    q_out, kv_out = model.num_attention_heads * head_dim, model.num_key_value_heads * head_dim
    shapes = [(dim, q_out), (dim, kv_out), (dim, kv_out), (q_out, dim), (dim, inter), (dim, inter), (inter, dim)]
    hbm = lookup.profile.hbm_bytes_per_s
    total = np.zeros_like(tokens, dtype=float)
    for k_in, n_out in shapes:
        flops = 2.0 * tokens * k_in * n_out
        compute_s = flops / (lookup.matmul_flops_per_s(tokens, n_out, k_in) * sustained_ratio)
        bytes_moved = (tokens * k_in + k_in * n_out + tokens * n_out) * elem_bytes
        total = total + np.maximum(compute_s, bytes_moved / hbm)
    return total
