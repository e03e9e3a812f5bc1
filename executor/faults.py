"""Faults of a run, turned into clear errors that carry what was measured before them.

- GPU out of memory: ``RunOutOfMemory`` names the phase, chunk (or decode token) and layer where the
  allocation failed; ``partial`` holds the measurement so far. The stores are released by the runner first.
- Ctrl-C: ``RunInterrupted`` with the partial measurement; the stores are released.
- Host RAM too small: kv/host_store.py HostMemoryError, raised before anything is allocated.
- Plan made for other hardware: ``hardware_mismatch`` returns a warning text; ``--strict`` refuses.
Leaves out: resuming a run from where it stopped.
"""

from __future__ import annotations

from typing import Any, Optional


class RunFault(Exception):
    """A run that stopped before the end. ``partial`` is the runner's Measurement of the work done."""

    kind = "fault"
    exit_code = 1

    def __init__(self, message: str, partial: Optional[Any] = None):
        super().__init__(message)
        self.partial = partial


class RunOutOfMemory(RunFault):
    kind = "gpu_out_of_memory"
    exit_code = 3


class RunInterrupted(RunFault):
    kind = "interrupted"
    exit_code = 130


class HardwareMismatch(ValueError):
    """The plan was made for other hardware and the run is --strict."""


def out_of_memory_message(where: str, budget_bytes: Optional[int], detail: str) -> str:
    budget = f" under the GPU budget of {budget_bytes / 1024**3:.2f} GiB" if budget_bytes else ""
    first_line = detail.strip().splitlines()[0] if detail.strip() else ""
    return (f"GPU out of memory at {where}{budget}: {first_line[:200]} - plan with a smaller --gpu-mem, "
            f"chunk size or fewer resident heads")


def hardware_mismatch(plan_gpu_name: str, plan_gpu_mem_bytes: int, device_name: str,
                      device_mem_bytes: int) -> Optional[str]:
    """A warning when the plan's GPU is not this one (name or memory size differ), else None."""
    same_name = _norm(plan_gpu_name) in _norm(device_name) or _norm(device_name) in _norm(plan_gpu_name)
    ratio = device_mem_bytes / plan_gpu_mem_bytes if plan_gpu_mem_bytes else 1.0
    if same_name and 0.9 <= ratio <= 1.1:
        return None
    return (f"the plan was made for {plan_gpu_name} ({plan_gpu_mem_bytes / 1024**3:.0f} GiB) but this is "
            f"{device_name} ({device_mem_bytes / 1024**3:.0f} GiB): predictions may not hold")


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum()).replace("nvidia", "")
