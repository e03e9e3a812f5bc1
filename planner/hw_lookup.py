"""Rates from a hardware profile at the shapes and sizes a plan runs: the measured tables, interpolated, with
the profile's scalars as the fallback.

- Attention (FLOP/s) for one call of ``q_heads`` query heads, ``q_len`` queries, ``k_len`` keys, head dim
  ``head_dim``, a backend ("flash", "cudnn") and a causal flag (prefill shapes, q_len >= 64; the q_len = 1
  points form the decode curves of decode_attention_flops_per_s). The table's points are grouped into curves of
  equal (backend, causal, head_dim, GQA ratio q_heads / kv_heads, q_heads, q_len); along a curve the rate is
  interpolated linearly in log2(k_len) (clamped at the ends: no extrapolation); across curves it is blended by inverse squared
  distance in (log2 q_heads, log2 q_len) space (exact where a curve matches). The kernels run one 128-row
  query tile per SM at a time, so a call's tiles, q_heads * ceil(q_len / 128), run in waves of the profile's
  ``sm_count`` and the last wave may leave SMs idle (wave_efficiency: 192 tiles on 132 SMs fill 73% of two
  waves). With ``sm_count`` known the blend is of rates divided by their shape's wave efficiency, and the result
  is multiplied by the asked shape's (exact at the measured shapes; between them the waves are not averaged
  away); without it, below the fewest query rows (q_heads * q_len) the table holds, the rate falls in
  proportion to the rows. The scalar fallback does the same below FULL_RATE_QUERY_ROWS (128 rows x ~128 SMs
  of the catalog's GPUs). Missing head_dim: the nearest
  measured one; missing GQA ratio: the nearest measured at that head dim; missing causal flag: the other flag
  (planner/coverage.py notes each of these in the plan). No points for the backend: ``None`` for "cudnn" (the
  backend is treated as absent), the scalar ``attention_flops_per_s`` for "flash".
- Attention step (FLOP/s) of the executor's whole per-group step with a backend: points of backend
  "<backend>-step" (step_backend_name; executor/profiler/attention_step.py), q_len = chunk, k_len = past +
  chunk, causal, looked up through the same curves and interpolation as a backend's kernel points.
- Replayed decode step: the profile's GraphDecodePoint of exactly a model's layer shape (hidden, intermediate,
  heads, KV heads, head dim), or None.
- Sustained prefill: the matmul ratio (what seconds of back-to-back kernels reach against the tables' short bursts,
  the power limit's clock) and the attention ceiling (the rate the sustained probe's attention held), at the nearest
  measured head dim; (1, 1) and no ceiling where the profile lacks them.
- Matmul (FLOP/s) for [m, k] @ [k, n]: the same scheme over m (log2, clamped) and (log2 n, log2 k);
  scalar ``matmul_flops_per_s`` without a table. The HBM roofline cap is the time model's job.
- Host-to-device / device-to-host bandwidth at a transfer size: linear in log2(size) over the table's
  points of that direction (concurrent_with "none"), at each size the better of host memory "registered" (the
  executor's store) and "pinned", made non-decreasing in size, clamped at the ends; the scalar without points.
- Pinning: seconds to page-lock n bytes, from the table's rate at that size (method "cuda_host_register"
  preferred, points with zero seconds ignored), else ``pin_bytes_per_s``.

Leaves out: any measurement (executor/profiler) and any cost formula (planner/time_model.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np

from hwprofiles.schema import HardwareProfile

_PAGE_LOCKED = ("registered", "pinned")
FULL_RATE_QUERY_ROWS = 128 * 128
DEFAULT_GQA_RATIO = 4  # the profiler's primary ratio (executor/profiler/config.py GQA_RATIO)
_K_GRID_LOG2 = np.arange(0.0, 40.0, 1.0 / 16)      # key lengths 1 .. 2^40, 16 points per doubling
_PIN_METHOD_PREFERENCE = ("cuda_host_register", "cuda_host_alloc", "torch_pin_memory")
STEP_SUFFIX = "-step"
WAVE_TILE_ROWS = 128
"""query rows per tile of the prefill attention kernels (cuDNN's and FlashAttention's forward at head dim 64-128)"""


def wave_efficiency(q_heads: int, q_len: int, sm_count: Optional[int]) -> float:
    """Share of the SMs' slots one call's query tiles keep busy: tiles = q_heads * ceil(q_len / WAVE_TILE_ROWS),
    efficiency = tiles / (ceil(tiles / sm_count) * sm_count); 1.0 without ``sm_count``.

    E.g. 4 query heads x 6144 queries = 192 tiles on 132 SMs: 192 / 264 = 0.73, where 4096 queries (128 tiles)
    fill 0.97 of one wave."""
    if not sm_count:
        return 1.0
    tiles = max(q_heads, 1) * -(-max(q_len, 1) // WAVE_TILE_ROWS)
    waves = -(-tiles // sm_count)
    return tiles / (waves * sm_count)


def step_backend_name(backend: str) -> str:
    """Backend name of the executor-step points of a prefill backend: "flash" -> "flash-step",
    "cudnn-split" -> "cudnn-split-step" (hwprofiles.schema.AttentionPoint)."""
    return backend + STEP_SUFFIX


class _Curves:
    """1-D curves over log2(x), keyed by a 2-D shape (log2 a, log2 b), blended by inverse squared distance."""

    def __init__(self) -> None:
        self._points: dict[tuple[float, float], list[tuple[float, float]]] = defaultdict(list)
        self._cache: dict[tuple[float, float], tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]] = {}

    def add(self, shape_a: int, shape_b: int, x: int, value: float) -> None:
        self._points[(np.log2(shape_a), np.log2(shape_b))].append((float(np.log2(x)), float(value)))

    def __bool__(self) -> bool:
        return bool(self._points)

    def min_shape_product(self) -> float:
        """Smallest shape_a * shape_b among the curves (e.g. the fewest query rows measured)."""
        return min(2.0 ** (la + lb) for la, lb in self._points)

    def _weights(self, shape_a: int, shape_b: int):
        key = (float(np.log2(shape_a)), float(np.log2(shape_b)))
        if key not in self._cache:
            curves, distances = [], []
            for (la, lb), pts in self._points.items():
                by_x: dict[float, list[float]] = defaultdict(list)
                for x, value in pts:
                    by_x[x].append(value)           # repeated measurements of one shape: their mean
                xs = sorted(by_x)
                curves.append((np.array(xs), np.array([float(np.mean(by_x[x])) for x in xs])))
                distances.append((la - key[0]) ** 2 + (lb - key[1]) ** 2)
            dist = np.array(distances)
            if np.any(dist < 1e-12):
                weights = (dist < 1e-12).astype(float)
            else:
                weights = 1.0 / dist
            self._cache[key] = (curves, weights / weights.sum())
        return self._cache[key]

    def value(self, shape_a: int, shape_b: int, x) -> np.ndarray:
        """Blended rate at x (scalar or array), interpolated in log2(x) along each curve, clamped."""
        curves, weights = self._weights(shape_a, shape_b)
        log_x = np.log2(np.maximum(np.asarray(x, dtype=float), 1.0))
        total = np.zeros_like(log_x)
        for (xs, ys), weight in zip(curves, weights):
            if weight:
                total = total + weight * np.interp(log_x, xs, ys)
        return total


DECODE_KERNELS = {"flash": "flash", "flash_attn": "flash", "flex": "flex"}
"""the attention table's backends whose q_len 1 points price decode, and the decode kernel each measures"""


class RateLookup:
    """Interpolated rates of one profile. Build once per plan (it caches per shape)."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self.memo: dict = {}     # caches of derived quantities (time_model keeps per-shape results here)
        self.sm_count = profile.sm_count
        self._attention: dict[tuple[str, bool, int, int], _Curves] = defaultdict(_Curves)
        self._decode: dict[tuple[str, int], _Curves] = defaultdict(_Curves)   # q_len 1, by (kernel, head_dim)
        for point in profile.attention_table:
            if point.q_len < 64:  # decode-shaped points: their own curves (decode_attention_flops_per_s)
                if point.q_len == 1 and point.backend in DECODE_KERNELS:
                    key = (DECODE_KERNELS[point.backend], point.head_dim)
                    self._decode[key].add(point.q_heads, 1, point.k_len, point.flops_per_s)
                continue
            backend = "cudnn" if point.backend == "cudnn" else ("flash" if point.backend in ("flash", "flash_attn")
                                                                else point.backend)
            ratio = max(point.q_heads // max(point.kv_heads, 1), 1)
            waves = wave_efficiency(point.q_heads, point.q_len, self.sm_count)
            self._attention[(backend, point.causal, point.head_dim, ratio)].add(
                point.q_heads, point.q_len, point.k_len, point.flops_per_s / waves)
        self._attention_grid: dict[tuple, np.ndarray] = {}
        self._matmul = _Curves()
        for mm in profile.matmul_table:
            self._matmul.add(mm.n, mm.k, mm.m, mm.flops_per_s)
        self._transfer = {direction: self._transfer_curve(direction) for direction in ("h2d", "d2h")}

    # ---- attention -----------------------------------------------------------------------------------------
    def has_backend(self, backend: str) -> bool:
        """Whether the attention table holds any prefill point of ``backend``."""
        return any(key[0] == backend for key in self._attention)

    def has_step_points(self, backend: str) -> bool:
        """Whether the table holds executor-step points ("<backend>-step") of prefill backend ``backend``."""
        return self.has_backend(step_backend_name(backend))

    def _attention_curves(self, backend: str, causal: bool, head_dim: int,
                          gqa_ratio: Optional[int] = None) -> Optional[_Curves]:
        """The curves of the nearest measured head dim, then the nearest GQA ratio there (None: nearest to
        DEFAULT_GQA_RATIO), then the causal flag asked for where measured."""
        keys = [key for key in self._attention if key[0] == backend]
        if not keys:
            return None
        dims = sorted({key[2] for key in keys}, key=lambda dim: (abs(np.log2(dim / head_dim)), -dim))
        best_dim = dims[0]
        wanted = gqa_ratio or DEFAULT_GQA_RATIO
        ratios = sorted({key[3] for key in keys if key[2] == best_dim},
                        key=lambda r: (abs(np.log2(r / wanted)), r != DEFAULT_GQA_RATIO, r))
        for ratio in ratios:
            for flag in (causal, not causal):
                if (backend, flag, best_dim, ratio) in self._attention:
                    return self._attention[(backend, flag, best_dim, ratio)]
        return None

    def decode_attention_flops_per_s(self, *, q_heads: int, k_len, head_dim: int,
                                     kernel: str = "flash") -> Optional[np.ndarray]:
        """Rate of one decode attention call (one query per head) over ``k_len`` keys (array), from the table's
        q_len = 1 points of ``kernel`` ("flash", or "flex": the soft-capped models' kernel; nearest head_dim,
        blended over q_heads like the prefill curves); "flex" without its own points falls back to flash's;
        None without such points."""
        dims = [dim for (name, dim) in self._decode if name == kernel]
        if not dims and kernel != "flash":
            return self.decode_attention_flops_per_s(q_heads=q_heads, k_len=k_len, head_dim=head_dim)
        if not dims:
            return None
        dim = min(dims, key=lambda d: (abs(np.log2(d / head_dim)), -d))
        return self._decode[(kernel, dim)].value(max(q_heads, 1), 1, np.asarray(k_len, dtype=float))

    def has_decode_points(self, kernel: str, head_dim: int) -> bool:
        """The profile measured ``kernel``'s decode call at this head dim."""
        return (kernel, head_dim) in self._decode

    def has_attention_points(self, backend: str, causal: bool) -> bool:
        """The profile measured ``backend`` with this causality (at any head dim)."""
        return any(key[0] == backend and key[1] == causal for key in self._attention)

    def attention_flops_per_s(self, *, backend: str, q_heads: int, q_len: int, k_len, head_dim: int,
                              causal: bool, gqa_ratio: Optional[int] = None) -> Optional[np.ndarray]:
        """Rate of one attention call (FLOP/s, counting attended pairs as AttentionPoint does).

        ``k_len`` may be an array (one entry per chunk); ``gqa_ratio`` (query heads per KV head) picks the
        curves of the nearest measured ratio (None: DEFAULT_GQA_RATIO). Returns None for a backend without
        points other than "flash", which falls back to the scalar ``attention_flops_per_s``.
        """
        curves = self._attention_curves(backend, causal, head_dim, gqa_ratio)
        rows = max(q_heads, 1) * max(q_len, 1)
        if curves is None:
            if backend == "flash":
                scale = min(1.0, rows / FULL_RATE_QUERY_ROWS)
                return np.full(np.shape(k_len), self.profile.attention_flops_per_s * scale, dtype=float)
            return None
        key = (id(curves), q_heads, q_len)
        grid = self._attention_grid.get(key)
        if grid is None:       # the blended curve on a fine log2(k_len) grid: one np.interp per later call
            if self.sm_count:
                scale = wave_efficiency(q_heads, q_len, self.sm_count)
            else:
                scale = min(1.0, rows / curves.min_shape_product())
            grid = curves.value(max(q_heads, 1), max(q_len, 1), 2.0 ** _K_GRID_LOG2) * scale
            self._attention_grid[key] = grid
        log_k = np.log2(np.maximum(np.asarray(k_len, dtype=float), 1.0))
        return np.interp(log_k, _K_GRID_LOG2, grid)

    # ---- replayed decode step ------------------------------------------------------------------------------
    def graph_decode_point(self, layer_shape: tuple[int, ...]):
        """The profile's measured replayed decode step of exactly this layer shape (ModelSpec.layer_shape), or
        None."""
        return next((p for p in self.profile.graph_decode_table if p.layer_shape == tuple(layer_shape)), None)

    # ---- sustained prefill ----------------------------------------------------------------------------------
    def sustained_ratios(self, head_dim: int) -> tuple[float, float]:
        """(attention, matmul): a prefill's rates against the tables' bursts, measured with the kernels run back to
        back for seconds (executor/profiler/sustained.py: the clock under the GPU's power limit), at the profile's
        nearest head dim, each capped at 1 (a disturbance only ever slows a burst); (1, 1) without such points."""
        point = self._sustained_point(head_dim)
        if point is None:
            return 1.0, 1.0
        return min(1.0, point.attention_ratio), min(1.0, point.matmul_ratio)

    def sustained_attention_flops_per_s(self, head_dim: int) -> Optional[float]:
        """The attention rate a prefill sustains at the power limit (the sustained probe's cuDNN call, at the
        profile's nearest head dim), None without such points: the ceiling of every prefill attention call's rate
        (planner/time_model.py), where the tables' bursts above it are what the clock cannot keep."""
        point = self._sustained_point(head_dim)
        return point.attention_flops_per_s if point is not None else None

    def _sustained_point(self, head_dim: int):
        """The profile's sustained point at the nearest measured head dim (the larger on a tie), or None."""
        points = self.profile.sustained_table
        if not points:
            return None
        return min(points, key=lambda p: (abs(np.log2(p.head_dim / head_dim)), -p.head_dim))

    # ---- matmul ---------------------------------------------------------------------------------------------
    def matmul_flops_per_s(self, m, n: int, k: int) -> np.ndarray:
        """Rate of [m, k] @ [k, n] (FLOP/s) at large enough m to be compute-bound; m may be an array."""
        if not self._matmul:
            return np.full(np.shape(m), self.profile.matmul_flops_per_s, dtype=float)
        return self._matmul.value(n, k, m)

    # ---- transfers ------------------------------------------------------------------------------------------
    def _transfer_curve(self, direction: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """log2(size) and bandwidth of page-locked copies: at each measured size the better of the registered
        (the executor's store) and pinned points, then the running maximum over sizes (transfer_bytes_per_s)."""
        best: dict[int, float] = {}
        for p in self.profile.transfer_table:
            if (p.direction == direction and p.host_memory in _PAGE_LOCKED
                    and p.concurrent_with == "none" and p.bytes_per_s > 0):
                best[p.size_bytes] = max(best.get(p.size_bytes, 0.0), p.bytes_per_s)
        if not best:
            return None
        sizes = sorted(best)
        return np.log2(sizes), np.maximum.accumulate(np.array([best[size] for size in sizes]))

    def transfer_bytes_per_s(self, direction: str, size_bytes) -> np.ndarray:
        """Bandwidth of one contiguous host<->GPU copy of ``size_bytes`` (array allowed), page-locked host memory.

        A disturbance while measuring only ever slows a copy, so the curve keeps the best measurement: the
        better of registered and pinned memory at each size (the same DMA from page-locked pages: the H100
        profile of 2026-11-22 (final) read registered 44 GB/s at 16 MiB and 29 GB/s at 64 MiB against pinned
        53 and 52 GB/s, while its runs moved 32 MiB registered copies at ~51 GB/s), and non-decreasing in size
        (running maximum: a larger copy moves bytes at least as fast as a smaller one, which could be issued
        as several; an earlier profile read 23 GB/s at 64 MiB between 54 GB/s at 16 and 256 MiB)."""
        curve = self._transfer[direction]
        if curve is None:
            scalar = self.profile.pcie_h2d_bytes_per_s if direction == "h2d" else self.profile.pcie_d2h_bytes_per_s
            return np.full(np.shape(size_bytes), scalar, dtype=float)
        return np.interp(np.log2(np.maximum(np.asarray(size_bytes, dtype=float), 1.0)), *curve)

    @property
    def bidir_total_bytes_per_s(self) -> float:
        """Both directions at once, sum of the two (the ceiling of concurrent H2D + D2H)."""
        return self.profile.pcie_bidir_total_bytes_per_s

    # ---- pinning --------------------------------------------------------------------------------------------
    def pin_seconds(self, nbytes: int) -> float:
        """Seconds to page-lock ``nbytes`` of host memory with the executor's method (0 for 0 bytes)."""
        if nbytes <= 0:
            return 0.0
        for method in _PIN_METHOD_PREFERENCE:
            pts = sorted((p.size_bytes, p.size_bytes / p.seconds) for p in self.profile.pinning_table
                         if p.method == method and p.seconds > 0 and p.size_bytes > 0)
            if pts:
                rate = float(np.interp(np.log2(nbytes), np.log2([p[0] for p in pts]), [p[1] for p in pts]))
                return nbytes / rate
        return nbytes / self.profile.pin_bytes_per_s
