"""Host side: RAM total and available (/proc/meminfo, psutil where /proc is absent) and host memcpy bandwidth.

Memcpy bandwidth is bytes copied per second (one direction: ``n`` bytes read and ``n`` written count as
``n``), from a ``torch`` copy between two CPU tensors of ``host_copy_bytes`` random bytes. The same helper
times the "touch" of freshly allocated host pages (the first half of the executor's pinning method).
Leaves out: GPU copies (hbm.py, pcie.py) and pinning (pinning.py).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from planner.units import KIB, MIB

PAGE_BYTES = 4 * KIB


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """Host RAM as {"total_bytes", "available_bytes"}: /proc/meminfo, else psutil, else 0s."""
    try:
        fields = {}
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[key] = int(parts[0]) * (KIB if len(parts) > 1 and parts[1] == "kB" else 1)
        available = fields.get("MemAvailable", fields.get("MemFree", 0))
        return {"total_bytes": fields.get("MemTotal", 0), "available_bytes": available}
    except OSError:
        pass
    try:
        import psutil

        memory = psutil.virtual_memory()
        return {"total_bytes": int(memory.total), "available_bytes": int(memory.available)}
    except ImportError:
        return {"total_bytes": 0, "available_bytes": 0}


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7R13 ...") from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def random_host_bytes(nbytes: int) -> torch.Tensor:
    """``nbytes`` of random uint8 on the host: a 1 MiB random block tiled (fast; every page written)."""
    block = torch.randint(0, 256, (min(nbytes, MIB),), dtype=torch.uint8)
    out = torch.empty(nbytes, dtype=torch.uint8)
    flat_blocks = nbytes // block.numel()
    if flat_blocks:
        out[: flat_blocks * block.numel()].view(flat_blocks, -1).copy_(block.expand(flat_blocks, -1))
    tail = nbytes - flat_blocks * block.numel()
    if tail:
        out[-tail:].copy_(block[:tail])
    return out


def touch_pages(buffer: torch.Tensor) -> None:
    """Write one byte per 4 KiB page so the OS backs every page (the executor does this before pinning)."""
    flat = buffer.view(torch.uint8).view(-1)
    flat[::PAGE_BYTES].fill_(1)


def measure_host(ctx) -> dict:
    """Host RAM and memcpy bandwidth. Returns {"mem_total_bytes", "mem_available_bytes",
    "memcpy_bytes_per_s", "memcpy_spread_rel", "cpu_name", "cpu_count"}."""
    memory = read_meminfo()
    ctx.progress("host", "RAM total / available",
                 f"{memory['total_bytes'] / 2**30:.1f} / {memory['available_bytes'] / 2**30:.1f} GiB")
    nbytes = min(ctx.preset.host_copy_bytes, max(memory["available_bytes"] // 8, MIB))
    source = random_host_bytes(nbytes)
    target = torch.empty_like(source)
    stats = ctx.time(lambda: target.copy_(source), warmup=1, repeats=max(3, ctx.preset.repeats // 2),
                     on_host=True)
    rate = stats.rate(nbytes)
    ctx.progress("host", f"memcpy {nbytes // MIB} MiB", f"{rate / 1e9:.1f} GB/s", stats)
    return {
        "mem_total_bytes": memory["total_bytes"],
        "mem_available_bytes": memory["available_bytes"],
        "memcpy_bytes_per_s": rate,
        "memcpy_spread_rel": stats.spread_rel,
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count() or 1,
    }
