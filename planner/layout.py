"""Where each (layer, KV head) slot lives: resident on the GPU or offloaded to host, and how offloaded heads
are grouped for streaming. One rule, used by the planner (to count bytes) and the executor (to place them).

Rule, for R resident slots over L layers of H_kv KV heads:
    resident heads of layer l:  r_l = R // L + (1 if l < R % L else 0)     (spread evenly, earlier layers
                                first; every layer then streams nearly the same bytes, so the pipeline
                                has no slow layer)
    the resident heads of layer l are KV heads [0, r_l); the offloaded ones [r_l, H_kv)
    offloaded heads are streamed in groups of G consecutive heads; the last group of a layer holds the
    remainder when G does not divide H_kv - r_l.
Strategies map onto this space: ``chunked`` = all L * H_kv slots resident; ``standard`` = chunked with one
chunk the length of the prompt; ``layer-offload`` = no resident slots and G = H_kv (a layer at a time).
"""

from __future__ import annotations


def resident_heads_per_layer(resident_kv_heads: int, num_layers: int, kv_heads_per_layer: int) -> list[int]:
    """Resident KV heads of each layer, [r_0, ..., r_{L-1}], summing to ``resident_kv_heads``."""
    total_slots = num_layers * kv_heads_per_layer
    if not 0 <= resident_kv_heads <= total_slots:
        raise ValueError(f"resident_kv_heads must be in [0, {total_slots}], got {resident_kv_heads}")
    base, extra = divmod(resident_kv_heads, num_layers)
    return [base + (1 if layer < extra else 0) for layer in range(num_layers)]


def offloaded_groups(resident_in_layer: int, kv_heads_per_layer: int, heads_per_group: int) -> list[range]:
    """KV-head index ranges streamed together in one layer: [r, r+G), [r+G, r+2G), ..., last one ragged."""
    if heads_per_group <= 0:
        raise ValueError(f"heads_per_group must be positive, got {heads_per_group}")
    return [
        range(start, min(start + heads_per_group, kv_heads_per_layer))
        for start in range(resident_in_layer, kv_heads_per_layer, heads_per_group)
    ]


def offloaded_kv_slots(resident_kv_heads: int, num_layers: int, kv_heads_per_layer: int) -> int:
    """Number of (layer, KV head) slots whose KV lives in host memory."""
    return num_layers * kv_heads_per_layer - resident_kv_heads


def max_group_heads(resident_kv_heads: int, num_layers: int, kv_heads_per_layer: int, heads_per_group: int) -> int:
    """Heads in the largest streamed group of any layer: sizes the ping-pong buffers (0 if nothing streams)."""
    fewest_resident = min(resident_heads_per_layer(resident_kv_heads, num_layers, kv_heads_per_layer))
    return min(heads_per_group, kv_heads_per_layer - fewest_resident)
