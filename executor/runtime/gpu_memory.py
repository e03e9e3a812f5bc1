"""The GPU memory cap of a run (a 24 GB budget on a larger card) and the driver's view of this process's use."""

from __future__ import annotations

import os
from typing import Optional

import torch


def apply_gpu_budget(budget_bytes: int, runtime_overhead_bytes: int, device: torch.device | str) -> float:
    """Cap this process's PyTorch allocations at budget - runtime overhead (a 24 GB budget on an 80 GB card
    behaves like a 24 GB card). Returns the fraction set."""
    device = torch.device(device)
    if device.index is None:  # set_per_process_memory_fraction needs an index ("cuda" alone is refused)
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    usable = budget_bytes - runtime_overhead_bytes
    if usable <= 0:
        raise ValueError(f"GPU budget {budget_bytes} B is below the runtime overhead {runtime_overhead_bytes} B")
    fraction = min(1.0, usable / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction



def process_gpu_used_bytes(device: torch.device) -> Optional[int]:
    """This process's GPU memory as the driver reports it (NVML), else total - free of the device."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
    except Exception:
        pass
    free, total = torch.cuda.mem_get_info(device)
    return int(total - free)


CUDA_LIMIT_STACK_SIZE = 0  # cudaLimitStackSize


_CUDART: list = []  # the library once found (not cached while absent: CUDA may load later)


def _cudart():
    """The CUDA runtime library this process loaded (torch's), found in /proc/self/maps; None where unknown."""
    import ctypes

    if _CUDART:
        return _CUDART[0]
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            _CUDART.append(ctypes.CDLL(path))
            return _CUDART[0]
        except OSError:
            continue
    return None


def cuda_stack_limit_bytes() -> Optional[int]:
    """The per-thread stack (local memory) size of the current CUDA context, cudaLimitStackSize. The driver
    raises it to what each launched kernel needs and never lowers it; it reserves that much local memory for every
    thread the GPU can hold at once (outside PyTorch's allocator). None where the runtime is not found."""
    import ctypes

    lib = _cudart()
    if lib is None:
        return None
    value = ctypes.c_size_t(0)
    if lib.cudaDeviceGetLimit(ctypes.byref(value), ctypes.c_int(CUDA_LIMIT_STACK_SIZE)) != 0:
        return None
    return int(value.value)


def outside_allocator_snapshot(device: torch.device) -> dict[str, Optional[int]]:
    """{"outside_allocator_bytes": driver-reported process use - PyTorch's reserved now,
    "stack_limit_bytes": cudaLimitStackSize} for ``device``: where the memory outside the allocator grows."""
    used = process_gpu_used_bytes(device)
    return {"outside_allocator_bytes": None if used is None else used - torch.cuda.memory_reserved(device),
            "stack_limit_bytes": cuda_stack_limit_bytes()}


def set_cuda_stack_limit_bytes(nbytes: int) -> bool:
    """cudaDeviceSetLimit(cudaLimitStackSize, nbytes) for the current device: the driver re-sizes the local
    memory it reserves for every resident thread now (lowering it returns that memory) and raises it again at
    the launch of any kernel that needs more. True when the runtime accepted it."""
    import ctypes

    lib = _cudart()
    if lib is None:
        return False
    return lib.cudaDeviceSetLimit(ctypes.c_int(CUDA_LIMIT_STACK_SIZE), ctypes.c_size_t(nbytes)) == 0


def release_grown_stack(device: torch.device, baseline_bytes: Optional[int]) -> Optional[int]:
    """Lower ``device``'s CUDA stack limit back to ``baseline_bytes`` where a kernel has grown it (the warm-up's
    tiny shapes: FlexAttention's decoding kernel over 32 queries at head dim 256 needs 8 KB per thread, 1.9 GB of
    an H200 held for the rest of the process, though the run's own shapes need none). Returns the bytes per
    thread it was lowered from, None where nothing was changed."""
    if baseline_bytes is None:
        return None
    with torch.cuda.device(device):
        grown = cuda_stack_limit_bytes()
        if grown is None or grown <= baseline_bytes:
            return None
        torch.cuda.synchronize(device)
        return grown if set_cuda_stack_limit_bytes(baseline_bytes) else None


def cuda_stack_limit_bytes_on(device: torch.device) -> Optional[int]:
    """cuda_stack_limit_bytes for ``device`` (its context made current for the call)."""
    with torch.cuda.device(device):
        return cuda_stack_limit_bytes()
