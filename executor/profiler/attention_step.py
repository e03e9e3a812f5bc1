"""Attention step table: the executor's real per-group attention step, timed with the executor's own layout.

The attention table (attention.py) times isolated kernel calls on fresh contiguous tensors. The executor's
step (executor/engine/offload.py OffloadEngine._attend_group) also reads a transposed, strided query, attends
against views of a ping-pong slot, runs the cudnn-split parts and their merges, and writes into a strided
output; on the H100 that step ran ~12% below the kernel table's rate (benchmarks/results/2026-11-22-h100/trace-128k-24gb/). This
section times exactly that step, so that the planner can take the group's attention rate from it:

    query      [1, c, H_q, d] random, as transformers' q_proj output;  q = query.transpose(1, 2)  [1, H_q, c, d]
    slot K, V  [G_max, T, d] random, T = a fixed capacity per sweep (max past + max chunk): the slot stride
    out        [1, c, H_q, d];  out_heads = out.transpose(1, 2)
    rows       = the group's query heads [0, G r)  (r = GQA_RATIO, H_q = G_max r as in Llama-3-8B; the preset's
                 extra shapes (config.Preset.extra_shapes) their own r, over StepGrid.extra_kv_heads)
    step       attend_chunk(q[:, rows], K[None, :G, :s + c], V[None, :G, :s + c], scale=d ** -0.5, backend=B,
                            out=out_heads[:, rows])          (the split path merges straight into out)

Backends B: "flash" and "cudnn-split" (where executor.attention.split.cudnn_available()) on a GPU, "math" on
a CPU (CI exercises the code; the runner does not call this section there). Recorded as AttentionPoint with
backend "<B>-step", q_heads = G r, kv_heads = G, q_len = c, k_len = s + c, causal, FLOPs as the schema
counts them: 4 q_heads d (c s + c (c + 1) / 2). Each shape is warmed up before timing, so cuDNN's graph
builds (attention.py measures them apart) are never in the timed repeats; medians via executor.runtime.timing.
Shapes over the grid's FLOP cap or memory (~20 GiB at most) are skipped; the sweep stops at its time
budget (noted). Leaves out: the chunk's K, V write into the slot and the transfers (pcie.py), the resident
heads' call (same kernels, resident store instead of a slot: the planner uses the same rates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from executor.attention.kernels import attend_chunk, attention_flops
from executor.attention.split import cudnn_available
from executor.profiler.config import GQA_RATIO, K
from executor.profiler.context import ProfileContext, compute_dtype
from hwprofiles.schema import AttentionPoint
from planner.units import GIB, format_rate

SECTION = "attn-step"  # progress lines: "attn-step  flash d128 G2 c8192 s131072  ...", "attn-step  N points"


@dataclass(frozen=True)
class StepGrid:
    """The shapes and limits of one mode's step sweep. Token counts in tokens."""

    mode: str
    head_dims: tuple[int, ...]
    kv_heads: tuple[int, ...]  # G, KV heads of the group
    chunks: tuple[int, ...]  # c, ascending
    pasts: tuple[int, ...]  # s, ascending; not powers of two, so cudnn-split meets several past blocks
    # (56K, 120K, 504K: 3, 4 and 6 cuDNN calls + merges, like a prefill's typical pasts)
    max_flop_per_step: float  # skip larger steps: bounds the sweep's time
    max_bytes: int  # slot, query, output and the step's temporaries together
    budget_s: float  # stop the sweep (noting it) past this many seconds
    warmup: int  # untimed calls per shape (>= 1: the first builds cuDNN's graphs)
    repeats: int
    extra_kv_heads: tuple[int, ...] = (1, 8)  # G of the preset's extra (head dim, GQA ratio) shapes


STEP_FULL = StepGrid(mode="full", head_dims=(128, 64), kv_heads=(1, 2, 4, 8), chunks=(1 * K, 4 * K, 8 * K, 16 * K),
                     pasts=(0, 8 * K, 56 * K, 120 * K, 504 * K), max_flop_per_step=2.5e13, max_bytes=20 * GIB,
                     budget_s=90.0, warmup=2, repeats=7)
STEP_QUICK = StepGrid(mode="quick", head_dims=(128, 64), kv_heads=(1, 2, 4, 8), chunks=(4 * K, 8 * K),
                      pasts=(0, 56 * K, 120 * K), max_flop_per_step=1e13, max_bytes=20 * GIB, budget_s=40.0,
                      warmup=2, repeats=5)
STEP_TINY = StepGrid(mode="tiny", head_dims=(64,), kv_heads=(1, 2), chunks=(64, 128), pasts=(0, 64, 256),
                     max_flop_per_step=1e9, max_bytes=1 * GIB, budget_s=10.0, warmup=1, repeats=3)
STEP_BACKEND_NAMES = {"flash": "flash-step", "cudnn-split": "cudnn-split-step", "math": "math-step"}


def step_grid(mode: str) -> StepGrid:
    """The grid of a preset's mode ("full", "quick", "tiny")."""
    return {"full": STEP_FULL, "quick": STEP_QUICK, "tiny": STEP_TINY}[mode]


def step_backends(ctx: ProfileContext) -> tuple[str, ...]:
    """The executor's prefill backends on this device: flash (and cudnn-split with cuDNN) on a GPU, math on a CPU."""
    if not ctx.on_gpu:
        return ("math",)
    if cudnn_available(ctx.device.index):
        return ("flash", "cudnn-split")
    ctx.note("attention step: cuDNN attention unavailable, cudnn-split-step not profiled")
    return ("flash",)


def _ratio_tag(ratio: int) -> str:
    """" r8" in progress lines and notes for a GQA ratio other than GQA_RATIO (whose lines read as before)."""
    return "" if ratio == GQA_RATIO else f" r{ratio}"


def _element_bytes(ctx: ProfileContext) -> int:
    return torch.tensor([], dtype=compute_dtype(ctx.device)).element_size()


def _slot_bytes(ctx: ProfileContext, shape: "StepShape", capacity: int) -> int:
    return 2 * max(shape.kv_heads) * capacity * shape.head_dim * _element_bytes(ctx)  # K and V slots


def _step_bytes(ctx: ProfileContext, shape: "StepShape", kv_heads: int, chunk: int, past: int) -> int:
    """Query and output [1, c, H_q, d], and the step's own temporaries."""
    head_dim, query_heads = shape.head_dim, shape.ratio * max(shape.kv_heads)
    io_bytes = 2 * chunk * query_heads * head_dim * _element_bytes(ctx)
    group_rows = shape.ratio * kv_heads * chunk
    merge_bytes = 3 * group_rows * head_dim * 4  # cudnn-split: float32 partial, accumulator, cast
    scores_bytes = 0 if ctx.on_gpu else 3 * group_rows * (past + chunk) * 4  # math: float32 scores, probs
    return io_bytes + merge_bytes + scores_bytes


def _capacity(ctx: ProfileContext, grid: StepGrid, shape: "StepShape") -> Optional[int]:
    """T: the largest past that fits the memory limit, plus the largest chunk (None: not even s = 0 fits)."""
    head_dim = shape.head_dim
    for past in sorted(grid.pasts, reverse=True):
        capacity = past + max(grid.chunks)
        need = _slot_bytes(ctx, shape, capacity) + _step_bytes(ctx, shape, max(shape.kv_heads), max(grid.chunks),
                                                               past)
        if need <= grid.max_bytes and ctx.fits(need):
            if past != max(grid.pasts):
                ctx.note(f"attention step d{head_dim}{_ratio_tag(shape.ratio)}: pasts above {past} skipped "
                         "(slot memory)")
            return capacity
    ctx.note(f"attention step d{head_dim}{_ratio_tag(shape.ratio)} skipped: no memory for the slot")
    return None


def step_call(query: torch.Tensor, out: torch.Tensor, slot_keys: torch.Tensor, slot_values: torch.Tensor, *,
              kv_heads: int, past: int, backend: str, ratio: int = GQA_RATIO) -> Callable[[], None]:
    """The executor's group step as a closure (module docstring): query, out [1, c, H_q, d]; slots [G_max, T, d]."""
    chunk, head_dim = query.shape[1], query.shape[3]
    rows = slice(0, kv_heads * ratio)
    q_heads = query.transpose(1, 2)  # [1, H_q, c, d]: transformers' layout, not contiguous
    out_heads = out.transpose(1, 2)
    keys = slot_keys[:kv_heads][None, :, :past + chunk]  # [1, G, s + c, d] view of the slot
    values = slot_values[:kv_heads][None, :, :past + chunk]
    scale = head_dim ** -0.5

    def step() -> None:
        attend_chunk(q_heads[:, rows], keys, values, scale=scale, backend=backend, out=out_heads[:, rows])

    return step


def _one_point(ctx: ProfileContext, grid: StepGrid, backend: str, slots: tuple[torch.Tensor, torch.Tensor],
               query: torch.Tensor, out: torch.Tensor, kv_heads: int, past: int,
               ratio: int = GQA_RATIO) -> AttentionPoint:
    chunk, head_dim = query.shape[1], query.shape[3]
    call = step_call(query, out, *slots, kv_heads=kv_heads, past=past, backend=backend, ratio=ratio)
    stats = ctx.time(call, warmup=grid.warmup, repeats=grid.repeats)
    q_heads = kv_heads * ratio
    rate = stats.rate(attention_flops(q_heads, head_dim, chunk, past))
    ctx.progress(SECTION, f"{backend} d{head_dim}{_ratio_tag(ratio)} G{kv_heads} c{chunk} s{past}",
                 format_rate(rate, "FLOP"), stats)
    return AttentionPoint(backend=STEP_BACKEND_NAMES[backend], head_dim=head_dim, q_heads=q_heads, kv_heads=kv_heads,
                          q_len=chunk, k_len=past + chunk, causal=True, flops_per_s=rate,
                          spread_rel=stats.spread_rel)


@dataclass(frozen=True)
class StepShape:
    """One series of the step sweep: head dim d, GQA ratio r (H_q = r G_max) and the G values measured."""

    head_dim: int
    ratio: int
    kv_heads: tuple[int, ...]


def step_shapes(ctx: ProfileContext, grid: StepGrid) -> list[StepShape]:
    """The grid's head dims at GQA_RATIO over its KV heads, then the preset's extra (head dim, ratio) shapes
    (config.Preset.extra_shapes: the built-in models' and --model's) over the grid's extra_kv_heads."""
    shapes = [StepShape(dim, GQA_RATIO, grid.kv_heads) for dim in grid.head_dims]
    seen = {(s.head_dim, s.ratio) for s in shapes}
    for dim, ratio in sorted(set(getattr(ctx.preset, "extra_shapes", ())) - seen):
        shapes.append(StepShape(dim, ratio, grid.extra_kv_heads))
    return shapes


def _sweep_shape(ctx: ProfileContext, grid: StepGrid, backends: tuple[str, ...], shape: StepShape,
                 deadline_s: float) -> tuple[list[AttentionPoint], bool]:
    """Points of one shape for every backend; (points, stopped at the deadline)."""
    capacity = _capacity(ctx, grid, shape)
    if capacity is None:
        return [], False
    head_dim, ratio = shape.head_dim, shape.ratio
    dtype, query_heads = compute_dtype(ctx.device), ratio * max(shape.kv_heads)
    slots = (ctx.randn(max(shape.kv_heads), capacity, head_dim, dtype=dtype),
             ctx.randn(max(shape.kv_heads), capacity, head_dim, dtype=dtype))
    points = []
    for backend in backends:
        for chunk in grid.chunks:
            query = ctx.randn(1, chunk, query_heads, head_dim, dtype=dtype)
            out = torch.empty_like(query)
            for kv_heads in shape.kv_heads:
                for past in (p for p in grid.pasts if p + chunk <= capacity):
                    what = f"{backend} d{head_dim}{_ratio_tag(ratio)} G{kv_heads} c{chunk} s{past}"
                    if attention_flops(kv_heads * ratio, head_dim, chunk, past) > grid.max_flop_per_step:
                        break  # pasts ascend: every later one is larger
                    if not ctx.fits(_step_bytes(ctx, shape, kv_heads, chunk, past)):
                        ctx.note(f"attention step {what}+ skipped: no memory")
                        break
                    if ctx.elapsed_s() > deadline_s:
                        ctx.note(f"attention step sweep stopped at its time budget ({what} onward not measured)")
                        return points, True
                    try:
                        points.append(_one_point(ctx, grid, backend, slots, query, out, kv_heads, past, ratio))
                    except RuntimeError as exc:  # includes torch.OutOfMemoryError; a kernel refusing a shape
                        ctx.note(f"attention step {what} failed, series skipped: {str(exc).splitlines()[0][:120]}")
                        ctx.free_memory()
                        break
            del query, out
    return points, False


def measure_attention_step(ctx: ProfileContext, *, grid: Optional[StepGrid] = None,
                           backends: Optional[tuple[str, ...]] = None) -> list[AttentionPoint]:
    """All step points of ``grid`` (default: the preset's mode) for ``backends`` (default: step_backends), over
    step_shapes."""
    grid = grid or step_grid(ctx.preset.mode)
    backends = backends or step_backends(ctx)
    started_s = time.perf_counter()
    deadline_s = ctx.elapsed_s() + grid.budget_s
    points: list[AttentionPoint] = []
    for shape in step_shapes(ctx, grid):
        shape_points, stopped = _sweep_shape(ctx, grid, backends, shape, deadline_s)
        points += shape_points
        ctx.free_memory()
        if stopped:
            break
    ctx.progress(SECTION, f"{len(points)} points", f"in {time.perf_counter() - started_s:.1f} s")
    return points
