"""KVLayout: the shapes of every KV store of one run, from the model's shape and the ExecutionSettings.

L layers, H_kv KV heads of dim d, capacity T = context + new tokens, r_l resident heads of layer l and the
offloaded groups from planner/layout.py (the planner and the executor share that slot rule):
    host store      per layer K_l, V_l [H_kv - r_l, T, d]   offloaded KV head h of layer l is row h - r_l
    resident store  per layer K_l, V_l [r_l, T, d] on the GPU (KV heads [0, r_l))
    ping-pong slots 2 slots, each K, V [G_max, T, d] on the GPU (G_max = layout.max_group_heads)
    window store    per sliding layer l (window W_l): K_l, V_l [H_kv, W_l - 1, d] on the GPU, the last W_l - 1
                    past tokens in order (engine/offload.py keeps them); such a layer has no host rows, no resident heads
                    and no groups: the R resident slots are spread over the full-attention layers alone
Rows are [T, d] contiguous, so a head's past [0, s) is one contiguous copy each way.
Under tensor parallelism (parallel/tensor.py) a rank sees only its own heads: H_q and H_kv here are the LOCAL
counts (HeadCounts.shard), while the model's config keeps the global ones, so every store is sized from
HeadCounts, never from ``config.num_*_heads`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from executor.settings import ExecutionSettings
from planner.layout import max_group_heads, offloaded_groups, resident_heads_per_layer


@dataclass(frozen=True)
class HeadCounts:
    """The attention heads one engine sees: H_q query heads and H_kv KV heads of dim d. One GPU, or one stage of a
    pipeline: the model's own counts (``of_config``). One rank of N under tensor parallelism: H_q / N and H_kv / N
    (``shard``), its contiguous block of heads; the attention function then receives q [1, H_q / N, c, d] and
    k, v [1, H_kv / N, c, d]."""

    query_heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of_config(cls, config) -> "HeadCounts":
        """Global counts of a transformers config (num_key_value_heads defaults to H_q; head_dim to D / H_q)."""
        query_heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or query_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // query_heads
        return cls(query_heads=query_heads, kv_heads=kv_heads, head_dim=head_dim)

    def shard(self, ranks: int) -> "HeadCounts":
        """One rank's share of ``ranks`` (ValueError with the divisors unless ranks divides H_q and H_kv)."""
        from planner.tensor_parallel import check_head_split

        check_head_split(self.query_heads, self.kv_heads, ranks)
        return HeadCounts(query_heads=self.query_heads // ranks, kv_heads=self.kv_heads // ranks,
                          head_dim=self.head_dim)


@dataclass(frozen=True)
class KVLayout:
    """Shapes of the stores for one model and one ExecutionSettings."""

    num_layers: int
    kv_heads: int
    query_heads: int
    head_dim: int
    capacity_tokens: int
    heads_per_group: int
    resident_per_layer: tuple[int, ...]
    groups_per_layer: tuple[tuple[range, ...], ...]
    max_group_heads: int
    windows: tuple[Optional[int], ...] = ()
    """per layer its sliding window W (None or empty: full attention)"""

    def window(self, layer: int) -> Optional[int]:
        return self.windows[layer] if self.windows else None

    @classmethod
    def build(cls, *, num_layers: int, kv_heads: int, query_heads: int, head_dim: int,
              settings: ExecutionSettings, windows: Optional[Sequence[Optional[int]]] = None) -> "KVLayout":
        if settings.capacity_tokens <= 0 or settings.chunk_size <= 0:
            raise ValueError("capacity_tokens and chunk_size must be positive")
        if not 1 <= settings.heads_per_group <= kv_heads:
            raise ValueError(f"heads_per_group must be in [1, {kv_heads}], got {settings.heads_per_group}")
        windows = tuple(windows) if windows is not None else (None,) * num_layers
        if len(windows) != num_layers:
            raise ValueError(f"windows has {len(windows)} entries for {num_layers} layers")
        full_layers = [layer for layer, window in enumerate(windows) if window is None]
        per_full = (resident_heads_per_layer(settings.resident_kv_heads, len(full_layers), kv_heads)
                    if full_layers else [])
        if not full_layers and settings.resident_kv_heads:
            raise ValueError("resident_kv_heads must be 0 when every layer has a sliding window")
        resident = [0] * num_layers
        for layer, count in zip(full_layers, per_full):
            resident[layer] = count
        groups = tuple(() if windows[layer] is not None else
                       tuple(offloaded_groups(resident[layer], kv_heads, settings.heads_per_group))
                       for layer in range(num_layers))
        group_max = (max_group_heads(settings.resident_kv_heads, len(full_layers), kv_heads,
                                     settings.heads_per_group) if full_layers else 0)
        return cls(num_layers=num_layers, kv_heads=kv_heads, query_heads=query_heads, head_dim=head_dim,
                   capacity_tokens=settings.capacity_tokens, heads_per_group=settings.heads_per_group,
                   resident_per_layer=tuple(resident), groups_per_layer=groups, max_group_heads=group_max,
                   windows=windows)

    @property
    def offloaded_per_layer(self) -> tuple[int, ...]:
        """Host rows per layer: H_kv - r_l for a full-attention layer, 0 for a sliding one."""
        return tuple(0 if self.window(layer) is not None else self.kv_heads - r
                     for layer, r in enumerate(self.resident_per_layer))

    @property
    def full_attention_slots(self) -> int:
        """(layer, KV head) slots of the full-attention layers: what resident_kv_heads counts."""
        return sum(self.kv_heads for layer in range(self.num_layers) if self.window(layer) is None)

    def window_bytes(self, dtype_bytes: int) -> int:
        """Window store: 2 * sum over sliding layers of H_kv * (W_l - 1) * d * bytes."""
        return sum(2 * self.kv_heads * (w - 1) * self.head_dim * dtype_bytes for w in self.windows if w is not None)

    def host_bytes(self, dtype_bytes: int) -> int:
        """Host store: 2 (K, V) * sum_l (H_kv - r_l) * T * d * bytes."""
        return 2 * sum(self.offloaded_per_layer) * self.capacity_tokens * self.head_dim * dtype_bytes

    def resident_bytes(self, dtype_bytes: int) -> int:
        """GPU resident store: 2 * sum_l r_l * T * d * bytes."""
        return 2 * sum(self.resident_per_layer) * self.capacity_tokens * self.head_dim * dtype_bytes

    def slot_bytes(self, dtype_bytes: int) -> int:
        """Ping-pong buffers: 2 (slots) * 2 (K, V) * G_max * T * d * bytes."""
        return 4 * self.max_group_heads * self.capacity_tokens * self.head_dim * dtype_bytes

