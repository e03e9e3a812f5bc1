"""Cost of page-locking host memory, per method the executor can use, and the register/unregister helpers.

Methods (hwprofiles.schema.PinningPoint.method):
- ``torch_pin_memory``: ``torch.empty(n, dtype=uint8, pin_memory=True)`` (cudaHostAlloc through PyTorch's
  caching host allocator, which rounds each block up to a power of two: sizes here are powers of two, and
  the host cache is emptied first so no block is reused);
- ``cuda_host_register``: ``torch.empty(n)`` + touch every page + ``cudaHostRegister(ptr, n, 0)``, the
  executor's method (exact size). Timed as the whole sequence, since the executor pays all of it.
Sizes are capped at a quarter of the available host RAM. Leaves out: copy bandwidth from such memory
(pcie.py).
"""

from __future__ import annotations

import torch

from executor.profiler.context import ProfileContext
from executor.profiler.host import read_meminfo, touch_pages
from executor.runtime.timing import host_seconds
from hwprofiles.schema import PinningPoint
from planner.units import GIB, MIB


class HostRegisterError(RuntimeError):
    """cudaHostRegister / cudaHostUnregister returned an error code."""


def _check(result, what: str) -> None:
    code = int(getattr(result, "value", result))
    if code != 0:
        raise HostRegisterError(f"{what} failed with CUDA error {code}")


def register_host(buffer: torch.Tensor) -> None:
    """Page-lock a CPU tensor's memory in place (cudaHostRegister, flags 0). Unregister before freeing it."""
    nbytes = buffer.numel() * buffer.element_size()
    _check(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), nbytes, 0), "cudaHostRegister")


def unregister_host(buffer: torch.Tensor) -> None:
    """Undo register_host."""
    _check(torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr()), "cudaHostUnregister")


def empty_host_cache() -> bool:
    """Release PyTorch's cached pinned blocks; False where this torch has no such call."""
    for name in ("_host_emptyCache", "_accelerator_emptyHostCache"):
        release = getattr(torch._C, name, None)
        if release is not None:
            release()
            return True
    return False


def _time_torch_pin(ctx: ProfileContext, nbytes: int) -> float:
    empty_host_cache()
    holder = []
    seconds = host_seconds(lambda: holder.append(torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)),
                           device=ctx.device)
    holder.clear()
    empty_host_cache()
    return seconds


def _time_register(ctx: ProfileContext, nbytes: int) -> float:
    holder = []

    def allocate_touch_register() -> None:
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        touch_pages(buffer)
        register_host(buffer)
        holder.append(buffer)

    seconds = host_seconds(allocate_touch_register, device=ctx.device)
    unregister_host(holder[0])
    holder.clear()
    return seconds


def measure_pinning(ctx: ProfileContext) -> list[PinningPoint]:
    """Seconds to pin each preset size with each method (GPU only: pinning needs a CUDA context)."""
    available_bytes = read_meminfo()["available_bytes"]
    sizes = [n for n in ctx.preset.pin_sizes if n <= available_bytes // 4]
    if len(sizes) < len(ctx.preset.pin_sizes):
        ctx.note(f"pinning sizes above {available_bytes // 4 // MIB} MiB skipped: a quarter of available RAM")
    points = []
    for nbytes in sizes:
        for method, timer in (("torch_pin_memory", _time_torch_pin), ("cuda_host_register", _time_register)):
            seconds = timer(ctx, nbytes)
            ctx.progress("pinning", f"{method} {nbytes / GIB:.2f} GiB",
                         f"{seconds:.3f} s  ({seconds / (nbytes / GIB):.2f} s/GiB)")
            points.append(PinningPoint(method=method, size_bytes=nbytes, seconds=seconds))
    return points


def measure_touch_rate(ctx: ProfileContext) -> float:
    """CPU-only stand-in for pinning: bytes per second of allocating and touching fresh host pages."""
    nbytes = min(ctx.preset.pin_sizes[0], max(read_meminfo()["available_bytes"] // 8, MIB))
    seconds = host_seconds(lambda: touch_pages(torch.empty(nbytes, dtype=torch.uint8)))
    rate = nbytes / max(seconds, 1e-9)
    ctx.progress("pinning", f"allocate + touch {nbytes // MIB} MiB (no pinning on CPU)", f"{rate / 1e9:.1f} GB/s")
    return rate
