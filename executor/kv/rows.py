"""KVRows: where each (layer, KV head)'s K, V rows of one run live, over all its stages.

Model layer l, KV head h (kv/layout.py): resident when h < r_l, then the GPU store's row h of resident_keys[l]
[r_l, T, d]; else the host store's row h - r_l of keys[l] [H_kv - r_l, T, d]. Every row is a [T, d] view with
contiguous tokens, so tokens [a, b) of a row are one contiguous [b - a, d] block: what the saved-context files
hold (kv/context_manifest.py). Built by the runner (generation/runner.py) from its stages' stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerRows:
    """One model layer's stores: resident K, V [r_l, T, d] (GPU, or CPU in tests) and host K, V [H_kv - r_l, T, d]."""

    resident_keys: torch.Tensor
    resident_values: torch.Tensor
    host_keys: torch.Tensor
    host_values: torch.Tensor

    @property
    def resident_heads(self) -> int:
        return self.resident_keys.shape[0]


@dataclass(frozen=True)
class KVRows:
    """Per model layer (in order) its LayerRows; ``kv_heads`` H_kv, ``head_dim`` d, ``capacity_tokens`` T."""

    layers: tuple[LayerRows, ...]
    kv_heads: int
    head_dim: int
    capacity_tokens: int
    dtype: torch.dtype

    def rows(self, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V rows [T, d] of (layer, KV head) in whichever store holds them."""
        part = self.layers[layer]
        r = part.resident_heads
        if head < r:
            return part.resident_keys[head], part.resident_values[head]
        return part.host_keys[head - r], part.host_values[head - r]

    def is_resident(self, layer: int, head: int) -> bool:
        return head < self.layers[layer].resident_heads

    @classmethod
    def from_stores(cls, stores: list[tuple[int, object, object]], *, kv_heads: int, head_dim: int,
                    capacity_tokens: int, dtype: torch.dtype) -> "KVRows":
        """``stores``: per stage (first model layer, HostKVStore, GpuKVStore), in layer order."""
        layers = []
        for _first, host, gpu in sorted(stores, key=lambda s: s[0]):
            for k_res, v_res, k_host, v_host in zip(gpu.resident_keys, gpu.resident_values, host.keys, host.values):
                layers.append(LayerRows(k_res, v_res, k_host, v_host))
        return cls(tuple(layers), kv_heads, head_dim, capacity_tokens, dtype)
