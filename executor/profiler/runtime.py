"""Runtime costs outside the kernels: per-launch overhead and the GPU memory the runtime takes.

Launch overhead: wall time of a batch of ``launch_batch`` tiny in-place kernels (``x.add_(1)`` on 256
elements) divided by the batch, device synchronised at the end: launch-bound, so it is the host cost of one
launch through PyTorch. Attention call overhead: the same with a tiny flash call (q [1, 4, 1, d] against
128 keys), the fixed cost the planner adds per head group and layer.

Runtime memory (the planner's ``overhead`` term), measured as the executor sees it, in three parts:
- context: device memory in use (``mem_get_info``: total - free) right after CUDA initialisation, minus
  what the allocator reserved: the CUDA context;
- libraries and workspaces: after the profile warmed up cuBLAS (matmul), flash and cuDNN attention and every
  tensor was freed, the device memory still in use beyond the context (lazily loaded kernels, cuBLAS/cuDNN
  workspaces kept by the allocator);
- allocator reserve: reserved minus allocated at the peak of a short executor-like sequence (activations
  of a chunk, a matmul, an attention call), the fragmentation slack the caching allocator keeps.
cuBLAS keeps one workspace per (handle, stream) it has run on, allocated through the caching allocator and never
freed: after the profile's sections (matmuls on many streams) they held 544 MiB on the H200 (2026-12-01), where a
run, whose matmuls run on one stream, holds one. So the workspaces are dropped first
(``torch._C._cuda_clearCublasWorkspaces``) and the executor-like sequence, on one stream, makes the one it needs.
Device memory used by other processes on the same GPU is counted too (``mem_get_info`` is device-wide):
profile on an otherwise idle GPU.
Leaves out: tensors the planner sizes itself (weights, activations, KV buffers).
"""

from __future__ import annotations

import torch

from executor.profiler.attention import cpu_causal_fn, flash_causal
from executor.profiler.config import GQA_RATIO
from executor.profiler.context import ProfileContext, compute_dtype
from executor.runtime.timing import host_seconds, summarize
from planner.units import MIB


def device_used_bytes(device: torch.device) -> int:
    """Device memory in use by everything (total - free), bytes."""
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    return int(total_bytes - free_bytes)


def context_bytes(device: torch.device) -> int:
    """Call right after CUDA initialisation: device memory in use that the allocator did not reserve."""
    torch.empty(1, device=device)  # create the context and the allocator
    torch.cuda.synchronize(device)
    return device_used_bytes(device) - int(torch.cuda.memory_reserved(device))


def _per_call_seconds(ctx: ProfileContext, call) -> tuple[float, float]:
    """(median seconds per call, spread) over repeats of a batch of ``launch_batch`` calls."""
    batch = ctx.preset.launch_batch

    def run_batch() -> None:
        for _ in range(batch):
            call()

    run_batch()  # warm-up
    samples_s = [host_seconds(run_batch, device=ctx.device) / batch for _ in range(max(3, ctx.preset.repeats))]
    stats = summarize(samples_s)
    return stats.median_s, stats.spread_rel


def measure_launch(ctx: ProfileContext) -> dict:
    """{"launch_overhead_s", "attention_call_overhead_s"}."""
    dtype = compute_dtype(ctx.device)
    small = ctx.randn(256, dtype=dtype)
    launch_s, spread = _per_call_seconds(ctx, lambda: small.add_(1.0))
    ctx.progress("runtime", f"kernel launch (batch of {ctx.preset.launch_batch})", f"{launch_s * 1e6:.1f} us")
    head_dim = ctx.preset.head_dims[0]
    q = ctx.randn(1, GQA_RATIO, 1, head_dim, dtype=dtype)
    k = ctx.randn(1, 1, 128, head_dim, dtype=dtype)
    call = (lambda: flash_causal(q, k, k)) if ctx.on_gpu else cpu_causal_fn(q, k, k)
    try:
        attention_s, _ = _per_call_seconds(ctx, call)
    except RuntimeError as exc:  # no flash kernel for this GPU: the launch cost stands in
        ctx.note(f"small attention call not timed ({str(exc).splitlines()[0][:100]}); launch overhead used")
        attention_s = launch_s
    ctx.progress("runtime", "small attention call", f"{attention_s * 1e6:.1f} us")
    return {"launch_overhead_s": launch_s, "attention_call_overhead_s": attention_s, "launch_spread_rel": spread}


def _executor_like_step(ctx: ProfileContext) -> None:
    """A chunk's worth of allocations in the executor's pattern (sizes of a 1K-token Llama-3-8B chunk)."""
    tokens, hidden, intermediate = 1024, 4096, 14336
    dtype = torch.bfloat16
    weight = ctx.randn(hidden, intermediate, dtype=dtype)
    hidden_states = ctx.randn(tokens, hidden, dtype=dtype)
    up = hidden_states @ weight
    gate = torch.nn.functional.silu(hidden_states @ weight) * up
    q = ctx.randn(1, 4 * GQA_RATIO, tokens, 128, dtype=dtype)
    k = ctx.randn(1, 4, 4 * tokens, 128, dtype=dtype)
    try:
        out = flash_causal(q, k, k)
    except RuntimeError:  # no flash kernel here: the matmuls alone set the allocator pattern
        out = None
    del weight, hidden_states, up, gate, q, k, out


def clear_cublas_workspaces() -> bool:
    """Drop cuBLAS's per-(handle, stream) workspaces (CUDA builds of torch); False where the call is missing."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is None:
        return False
    clear()
    return True


def warm_up_libraries(ctx: ProfileContext) -> None:
    """Load what a run loads before its first chunk (cuBLAS, the flash and cuDNN attention kernels) with a few
    calls at small executor shapes, for a runtime-memory measurement in a process of its own
    (benchmarks/profile_section.py); a whole profile's earlier sections do this."""
    from executor.attention.split import cudnn_available, partial_cudnn

    _executor_like_step(ctx)
    if cudnn_available(ctx.device.index):
        q = ctx.randn(1, 4 * GQA_RATIO, 1024, 128, dtype=torch.bfloat16)
        k = ctx.randn(1, 4, 2048, 128, dtype=torch.bfloat16)
        partial_cudnn(q, k, k, scale=128 ** -0.5, causal=False)
        partial_cudnn(q, k[:, :, :1024], k[:, :, :1024], scale=128 ** -0.5, causal=True)
    torch.cuda.synchronize(ctx.device)


def measure_runtime_memory_alone(ctx: ProfileContext) -> dict:
    """measure_runtime_memory in a fresh process: the context first, then warm_up_libraries, then the measure.
    Call before anything else touches CUDA."""
    context_only_bytes = context_bytes(ctx.device)
    warm_up_libraries(ctx)
    return measure_runtime_memory(ctx, context_only_bytes)


def measure_runtime_memory(ctx: ProfileContext, context_only_bytes: int) -> dict:
    """{"runtime_overhead_bytes", "context_bytes", "libraries_bytes", "allocator_reserve_bytes"}; GPU only.
    Call after the sections that warmed up matmul and attention."""
    device = ctx.device
    clear_cublas_workspaces()
    ctx.free_memory()
    libraries_bytes = device_used_bytes(device) - int(torch.cuda.memory_allocated(device)) - context_only_bytes
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        _executor_like_step(ctx)
    reserve_bytes = int(torch.cuda.max_memory_reserved(device) - torch.cuda.max_memory_allocated(device))
    ctx.free_memory()
    allocated_bytes = int(torch.cuda.memory_allocated(device))  # workspaces the allocator holds for libraries
    total_bytes = context_only_bytes + max(libraries_bytes, 0) + allocated_bytes + max(reserve_bytes, 0)
    ctx.progress(
        "runtime",
        "GPU memory outside tensors",
        f"{total_bytes / MIB:.0f} MiB (context {context_only_bytes / MIB:.0f}, libraries "
        f"{libraries_bytes / MIB:.0f}, workspaces {allocated_bytes / MIB:.0f}, reserve {reserve_bytes / MIB:.0f})",
    )
    return {
        "runtime_overhead_bytes": total_bytes,
        "context_bytes": context_only_bytes,
        "libraries_bytes": libraries_bytes,
        "workspace_bytes": allocated_bytes,
        "allocator_reserve_bytes": reserve_bytes,
    }
