"""What the profiler measures in each mode: the shape and size grids, repeats and time caps.

Three presets per device kind: ``full`` (the committed profile, < 5 min on an H100), ``quick`` (< 1 min on
an H100), ``tiny`` (CI: seconds on a 2-core CPU, any device). On a machine without a GPU the ``quick`` and
``full`` presets shrink to CPU-sized grids (a CPU runs ~1e11 FLOP/s, not ~1e15).

Shapes follow the executor (docs/how-it-works.md): Llama-3-8B linear layers (hidden 4096, intermediate 14336) for
chunk sizes 1..32K tokens, and Llama-3.2-1B's (2048, 8192) in full mode; attention with GQA ratio 4 (Llama-3:
4 query heads per KV head), G KV heads per call (the head group), head dims 128 and 64; on a GPU (quick and full)
also every (head dim, GQA ratio) of the built-in models (planner/builtin_models.py BUILTIN_MODELS) and of any model
given to `headplan profile --model` in the executor-step table (attention_step.py; the kernel table adds only a
head dim it lacks), the shapes other than ratio 4 on a reduced grid of KV heads per call (``extra_kv_heads``), so
that no built-in model is planned from another head dim's or ratio's rates.
Leaves out: the measuring itself (the section modules) and assembling the profile (assemble.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from planner.builtin_models import BUILTIN_MODELS
from planner.model_spec import ModelSpec
from planner.units import GIB, KIB, MIB

K = 1024  # tokens
GQA_RATIO = 4  # query heads per KV head (Llama-3 8B and 3.2-1B)


@dataclass(frozen=True)
class Preset:
    """The grids of one profiling mode. Token counts in tokens, sizes in bytes."""

    mode: str  # "full" | "quick" | "tiny" (recorded in the profile; "cpu-only" is set by the runner)
    warmup: int
    repeats: int
    # matmul: (hidden, intermediate) model shapes x chunk sizes (m); plus one square reference shape
    matmul_models: tuple[tuple[int, int], ...]
    matmul_chunks: tuple[int, ...]
    matmul_square: int
    # attention
    head_dims: tuple[int, ...]
    kv_heads_per_call: tuple[int, ...]
    q_lens: tuple[int, ...]
    k_lens: tuple[int, ...]
    attention_max_flop_per_call: float  # skip larger calls: bounds the mode's run time
    attention_budget_s: float  # stop the attention sweep (noting it) past this many seconds
    cudnn_graph_builds: int  # how many new shapes to time for the cuDNN first-call cost
    # copies
    hbm_copy_bytes: int
    transfer_sizes: tuple[int, ...]
    bidir_sizes: tuple[int, ...]
    contention_sizes: tuple[int, ...]
    pin_sizes: tuple[int, ...]
    host_copy_bytes: int
    launch_batch: int = 200  # launches per timed batch for the per-launch overhead
    host_attention_key_tokens: tuple[int, ...] = (32768, 131072, 524288)  # host_attention.py kernel table
    notes: tuple[str, ...] = field(default_factory=tuple)
    # (head dim, GQA ratio) pairs beyond head_dims x GQA_RATIO; measured at extra_kv_heads KV heads per call
    extra_shapes: tuple[tuple[int, int], ...] = ()
    extra_kv_heads: tuple[int, ...] = (1, 8)
    # square causal cuDNN points (attention.py square_causal_sweep): the cudnn-split chunk part's chunk lengths and
    # KV heads per call (8: a layer's chunk part of the built-in models; 2: a small head set's own chunk part)
    square_causal_chunks: tuple[int, ...] = (1 * K, 2 * K, 4 * K, 8 * K, 16 * K)
    square_causal_kv_heads: tuple[int, ...] = (2, 8)

    def attention_shapes(self) -> list[tuple[tuple[int, int], tuple[int, ...]]]:
        """((head dim, GQA ratio), KV heads per call) of every kernel attention series (attention.py): the primary
        grid, then the extra shapes of a head dim the primary grid lacks. Extra ratios at a measured head dim are
        left to the step sweep (attention_step.step_shapes): the planner prices prefill from the step table where
        it exists, and the decode curves (q_len 1) are looked up by head dim."""
        primary = [((dim, GQA_RATIO), self.kv_heads_per_call) for dim in self.head_dims]
        extra = {shape for shape in self.extra_shapes if shape[0] not in self.head_dims}
        return primary + [(shape, self.extra_kv_heads) for shape in sorted(extra)]


def model_shapes(models: Iterable[ModelSpec]) -> tuple[tuple[int, int], ...]:
    """Sorted distinct (head dim, GQA ratio) of the models."""
    return tuple(sorted({(m.head_dim, m.query_heads_per_kv_head) for m in models}))


BUILTIN_SHAPES = model_shapes(BUILTIN_MODELS.values())


def with_model_shapes(preset: Preset, models: Iterable[ModelSpec]) -> Preset:
    """The preset with the (head dim, GQA ratio) of ``models`` added to its extra shapes."""
    return replace(preset, extra_shapes=tuple(sorted(set(preset.extra_shapes) | set(model_shapes(models)))))


def _geometric(start: int, stop: int, factor: int) -> tuple[int, ...]:
    values = []
    value = start
    while value <= stop:
        values.append(value)
        value *= factor
    return tuple(values)


GPU_FULL = Preset(
    mode="full",
    warmup=3,
    repeats=10,
    matmul_models=((4096, 14336), (2048, 8192)),
    matmul_chunks=(1, 16, 64, 256, 1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K),
    matmul_square=8192,
    head_dims=(128, 64),
    kv_heads_per_call=(1, 2, 4, 8),
    q_lens=(1, 1 * K, 4 * K, 10 * K, 32 * K),
    k_lens=(4 * K, 16 * K, 64 * K, 128 * K, 512 * K, 1024 * K, 4096 * K),
    attention_max_flop_per_call=2.5e13,  # ~70 ms at 350 TFLOP/s
    attention_budget_s=170.0,
    cudnn_graph_builds=3,
    hbm_copy_bytes=2 * GIB,
    transfer_sizes=_geometric(64 * KIB, 1 * GIB, 4),
    bidir_sizes=(16 * MIB, 256 * MIB, 1 * GIB),
    contention_sizes=(16 * MIB, 256 * MIB),
    pin_sizes=(1 * GIB, 4 * GIB),
    host_copy_bytes=1 * GIB,
    extra_shapes=BUILTIN_SHAPES,
)

GPU_QUICK = Preset(
    mode="quick",
    warmup=2,
    repeats=5,
    matmul_models=((4096, 14336),),
    matmul_chunks=(1, 256, 1 * K, 4 * K, 16 * K),
    matmul_square=8192,
    head_dims=(128, 64),
    kv_heads_per_call=(1, 2, 4, 8),
    # q_lens in priority order (the sweep runs q_len by q_len): decode, then the chunks plans choose (4K-16K); every
    # KV-heads-per-call count G at each, which the cudnn-split past parts are priced from (16 query heads over 4 KV
    # heads at 4K queries is not 8 over 2 at 1K: an H200 quick profile without them priced a 1M prefill 1.8x long)
    q_lens=(1, 4 * K, 16 * K, 1 * K),
    k_lens=(4 * K, 16 * K, 64 * K, 512 * K, 1024 * K),
    attention_max_flop_per_call=1e13,  # ~30 ms at 350 TFLOP/s
    attention_budget_s=30.0,
    cudnn_graph_builds=1,
    square_causal_chunks=(1 * K, 4 * K, 16 * K),
    square_causal_kv_heads=(8,),
    hbm_copy_bytes=1 * GIB,
    transfer_sizes=(64 * KIB, 1 * MIB, 16 * MIB, 256 * MIB),
    bidir_sizes=(256 * MIB,),
    contention_sizes=(256 * MIB,),
    pin_sizes=(1 * GIB,),
    host_copy_bytes=512 * MIB,
    extra_shapes=BUILTIN_SHAPES,
)

CPU_FULL = Preset(
    mode="full",
    warmup=2,
    repeats=5,
    matmul_models=((2048, 8192),),
    matmul_chunks=(1, 16, 128, 512),
    matmul_square=1024,
    head_dims=(128, 64),
    kv_heads_per_call=(1, 8),
    q_lens=(1, 256),
    k_lens=(1 * K, 4 * K, 16 * K),
    attention_max_flop_per_call=2e10,
    attention_budget_s=60.0,
    cudnn_graph_builds=0,
    hbm_copy_bytes=256 * MIB,
    transfer_sizes=(64 * KIB, 1 * MIB, 16 * MIB, 128 * MIB),
    bidir_sizes=(),
    contention_sizes=(),
    pin_sizes=(256 * MIB,),
    host_copy_bytes=256 * MIB,
    host_attention_key_tokens=(8192, 65536),
)

CPU_QUICK = Preset(
    mode="quick",
    warmup=1,
    repeats=3,
    matmul_models=((2048, 8192),),
    matmul_chunks=(1, 128),
    matmul_square=512,
    head_dims=(128,),
    kv_heads_per_call=(1,),
    q_lens=(1, 256),
    k_lens=(1 * K, 4 * K),
    attention_max_flop_per_call=5e9,
    attention_budget_s=15.0,
    cudnn_graph_builds=0,
    hbm_copy_bytes=64 * MIB,
    transfer_sizes=(64 * KIB, 16 * MIB),
    bidir_sizes=(),
    contention_sizes=(),
    pin_sizes=(64 * MIB,),
    host_copy_bytes=64 * MIB,
    host_attention_key_tokens=(8192, 32768),
)

TINY = Preset(
    mode="tiny",
    warmup=1,
    repeats=3,
    matmul_models=((64, 224),),
    matmul_chunks=(1, 16, 64),
    matmul_square=64,
    head_dims=(64,),
    kv_heads_per_call=(1, 2),
    q_lens=(1, 16),
    k_lens=(64, 256),
    attention_max_flop_per_call=1e9,
    attention_budget_s=10.0,
    cudnn_graph_builds=1,
    square_causal_chunks=(64,),
    square_causal_kv_heads=(2,),
    hbm_copy_bytes=4 * MIB,
    transfer_sizes=(64 * KIB, 1 * MIB),
    bidir_sizes=(1 * MIB,),
    contention_sizes=(1 * MIB,),
    pin_sizes=(8 * MIB,),
    host_copy_bytes=4 * MIB,
    launch_batch=20,
    host_attention_key_tokens=(1024, 4096),
)


def choose_preset(*, quick: bool, sizes: str, on_gpu: bool) -> Preset:
    """The preset for ``--quick`` / ``--sizes {tiny,default}`` on a GPU or CPU-only machine."""
    if sizes == "tiny":
        return TINY
    if sizes != "default":
        raise ValueError(f"unknown size preset {sizes!r} (use 'tiny' or 'default')")
    if on_gpu:
        return GPU_QUICK if quick else GPU_FULL
    return CPU_QUICK if quick else CPU_FULL
