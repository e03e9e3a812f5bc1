"""Matmul throughput at the executor's shapes: x [m, k] @ w [k, n], 2 * m * n * k FLOPs.

For each model shape (hidden D, intermediate I) and chunk size c (m = c tokens): the attention projections
[c, D] @ [D, D], the MLP up/gate [c, D] @ [D, I] and down [c, I] @ [I, D]. Chunk 1 is the decode shape,
bound by reading the weight from HBM (its FLOP rate is low by nature; bytes/s = weight bytes / time).
Plus one square [S, S] @ [S, S] reference. bf16 on GPU, float32 on CPU (context.compute_dtype).
Leaves out: attention (attention.py).
"""

from __future__ import annotations

import torch

from executor.profiler.context import ProfileContext, compute_dtype, dtype_name
from planner.units import format_rate
from hwprofiles.schema import MatmulPoint


def matmul_shapes(ctx: ProfileContext) -> list[tuple[int, int, int]]:
    """(m, n, k) triples to measure, square reference first, without duplicates."""
    preset = ctx.preset
    shapes = [(preset.matmul_square,) * 3]
    for hidden, intermediate in preset.matmul_models:
        for chunk in preset.matmul_chunks:
            for n, k in ((hidden, hidden), (intermediate, hidden), (hidden, intermediate)):
                if (chunk, n, k) not in shapes:
                    shapes.append((chunk, n, k))
    return shapes


def measure_matmul_point(ctx: ProfileContext, m: int, n: int, k: int) -> MatmulPoint | None:
    """Time x [m, k] @ w [k, n] into a preallocated out [m, n]; None (noted) when it does not fit."""
    dtype = compute_dtype(ctx.device)
    element_bytes = torch.tensor([], dtype=dtype).element_size()
    if not ctx.fits((m * k + k * n + m * n) * element_bytes):
        ctx.note(f"matmul {m}x{n}x{k} skipped: does not fit in free memory")
        return None
    x = ctx.randn(m, k, dtype=dtype)
    w = ctx.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, device=ctx.device, dtype=dtype)
    stats = ctx.time(lambda: torch.matmul(x, w, out=out))
    flops_per_s = stats.rate(2 * m * n * k)  # multiply + add per (row, column, inner) triple
    figure = format_rate(flops_per_s, "FLOP")
    if m == 1:
        figure += f"  ({stats.rate(k * n * element_bytes) / 1e9:.0f} GB/s weight read)"
    ctx.progress("matmul", f"{m} x {n} x {k} {dtype_name(dtype)}", figure, stats)
    return MatmulPoint(m=m, n=n, k=k, dtype=dtype_name(dtype), flops_per_s=flops_per_s,
                       spread_rel=stats.spread_rel)


def measure_matmul(ctx: ProfileContext) -> list[MatmulPoint]:
    """The matmul table (see the module docstring)."""
    points = []
    for m, n, k in matmul_shapes(ctx):
        point = measure_matmul_point(ctx, m, n, k)
        if point is not None:
            points.append(point)
    ctx.free_memory()
    return points
