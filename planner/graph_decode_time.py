"""GPU time of a replayed decode token (every KV head resident, one CUDA graph: executor/generation/decode_graph.py)
from the profile's measured replayed step of the model's layer shape (hwprofiles.schema GraphDecodePoint,
executor/profiler/graph_decode.py). planner/time_model.py takes it in place of the kernel tables' price where the
profile has the shape. No torch.
"""

from __future__ import annotations

import numpy as np

from planner.attention_time import decode_attention_seconds
from planner.hw_lookup import RateLookup
from planner.model_spec import ModelSpec


def graph_decode_gpu_seconds(model: ModelSpec, lookup: RateLookup, past: np.ndarray,
                             elem_bytes: int) -> np.ndarray | None:
    """GPU seconds of one replayed decode token (every KV head resident, one CUDA graph) from the profile's
    measured step of the model's layer shape (hwprofiles.schema GraphDecodePoint, executor/profiler/graph_decode.py),
    None without one:

        token_s + (V - V_p) D b / HBM + L layer_s(s + 1)

    V, V_p: the model's and the measured vocabulary (the lm_head's bytes), D hidden, L layers, s the token's past;
    layer_s(k) linear between the measured contexts, below the first clamped; beyond the last measured context s_p
    the layer's attention grows as the attention table says:
        layer_s(s_p) + max(attn(s) - attn(s_p), 0)
    attn one layer's decode attention over all H_kv heads (decode_attention_seconds). The kernel reads HBM faster at
    long contexts, which the table's decode points up to 1M keys see and a line through the measured contexts does
    not: on the H200 (2026-12-01) Llama-3.2-1B's 1M-token step measured 11.3 ms, priced 11.4 by the increment and 12.8
    along the 16K-128K segment. Why the measured step and not the kernel tables: those priced Llama-3-8B's replayed
    token 7-10% long (each kernel's single-call launch and ramp, which a graph does not pay)."""
    point = lookup.graph_decode_point(model.layer_shape)
    if point is None:
        return None
    lm_head = (model.vocab_size - point.vocab_size) * model.hidden_size * elem_bytes / lookup.profile.hbm_bytes_per_s
    keys = np.asarray(past, dtype=float) + 1
    contexts, layer_s = np.array(point.context_tokens, dtype=float), np.array(point.layer_s)
    kv_heads = model.num_key_value_heads
    per_head = lambda n: 2.0 * model.head_dim * elem_bytes * n  # noqa: E731 - one head's K, V over n keys
    last = np.full_like(keys, contexts[-1])
    extra = (decode_attention_seconds(model, lookup, kv_heads, keys - 1, per_head(keys))
             - decode_attention_seconds(model, lookup, kv_heads, last - 1, per_head(last)))
    per_layer = np.where(keys <= contexts[-1], np.interp(keys, contexts, layer_s),
                         layer_s[-1] + np.maximum(extra, 0.0))
    return point.token_s + lm_head + model.num_hidden_layers * per_layer
