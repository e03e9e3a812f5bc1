"""GpuKVStore: the GPU side of the KV, per layer the resident heads K_l, V_l [r_l, T, d] (KV heads [0, r_l)), and
the two ping-pong slots, each K, V [G_max, T, d], that streamed groups are fetched into (kv/layout.py), and per
sliding-window layer its window K_l, V_l [H_kv, W_l - 1, d] (None for a full-attention layer)."""

from __future__ import annotations

import torch

from executor.kv.layout import KVLayout


class GpuKVStore:
    """Resident K, V per layer [r_l, T, d] and the two ping-pong slots, each K, V [G_max, T, d]."""

    def __init__(self, layout: KVLayout, dtype: torch.dtype, device: torch.device):
        shape = lambda heads: (heads, layout.capacity_tokens, layout.head_dim)  # noqa: E731
        self.resident_keys = [torch.empty(shape(r), dtype=dtype, device=device) for r in layout.resident_per_layer]
        self.resident_values = [torch.empty(shape(r), dtype=dtype, device=device)
                                for r in layout.resident_per_layer]
        slots = 2 if layout.max_group_heads else 0
        self.slot_keys = [torch.empty(shape(layout.max_group_heads), dtype=dtype, device=device)
                          for _ in range(slots)]
        self.slot_values = [torch.empty(shape(layout.max_group_heads), dtype=dtype, device=device)
                            for _ in range(slots)]
        window_shape = lambda window: (layout.kv_heads, window - 1, layout.head_dim)  # noqa: E731
        self.window_keys = [None if layout.window(l) is None else
                            torch.empty(window_shape(layout.window(l)), dtype=dtype, device=device)
                            for l in range(layout.num_layers)]
        self.window_values = [None if layout.window(l) is None else
                              torch.empty(window_shape(layout.window(l)), dtype=dtype, device=device)
                              for l in range(layout.num_layers)]

    def close(self) -> None:
        self.resident_keys = self.resident_values = self.slot_keys = self.slot_values = []
        self.window_keys = self.window_values = []

