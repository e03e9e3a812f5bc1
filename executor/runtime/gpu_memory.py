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

