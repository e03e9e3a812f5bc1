"""Shared state of one profiling run: device, preset, progress lines, memory helpers, notes.

Progress goes to stderr, one line per measurement: elapsed seconds, the section, what was measured, the
figure and its spread. ``free_memory()`` between sections returns cached GPU blocks so that one section's
buffers never squeeze the next (``release_blocks()`` between the points of a sweep: the same without the garbage
collection). ``fits(nbytes)`` answers "is there room for this shape" from the free
device memory (or host RAM on CPU) with a safety margin.
Leaves out: what to measure (the section modules).
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

import torch

from executor.profiler.config import Preset
from executor.profiler.host import read_meminfo
from executor.runtime.timing import TimingStats, measure

FIT_MARGIN = 0.8  # use at most this fraction of free memory for one measurement's tensors


@dataclass
class ProfileContext:
    """One run. ``device`` is a torch.device; ``notes`` collect what was skipped and why."""

    device: torch.device
    preset: Preset
    stream: TextIO = sys.stderr
    started_s: float = field(default_factory=time.perf_counter)
    notes: list[str] = field(default_factory=list)
    quiet: bool = False
    disk_path: Optional[str] = None
    """the folder whose disk bandwidth is measured (disk.py; None: the working directory)"""
    models: tuple = ()
    """planner.model_spec.ModelSpec of ``headplan profile --model``: their shapes are measured too"""

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_s

    def progress(self, section: str, what: str, figure: str = "", stats: TimingStats | None = None) -> None:
        """One progress line: ``[  12.3 s] attention  flash d128 G1 q4K k64K   287.3 TFLOP/s (p10-p90 spread 2%)``."""
        if self.quiet:
            return
        spread = f"  (p10-p90 spread {stats.spread_rel * 100:.0f}%)" if stats is not None else ""
        print(f"[{self.elapsed_s():7.1f} s] {section:<10} {what:<40} {figure}{spread}", file=self.stream,
              flush=True)

    def note(self, text: str) -> None:
        """Record (and print) something skipped or substituted; it ends up in measurement.notes."""
        self.notes.append(text)
        if not self.quiet:
            print(f"[{self.elapsed_s():7.1f} s] note: {text}", file=self.stream, flush=True)

    def time(self, fn: Callable[[], Any], *, warmup: int | None = None, repeats: int | None = None,
             stream: Any = None, on_host: bool = False) -> TimingStats:
        """measure() with the preset's warm-up and repeat counts on this device (CUDA events), or with the
        host clock when ``on_host`` (host-only work such as a CPU memcpy: events would time nothing)."""
        return measure(
            fn,
            warmup=self.preset.warmup if warmup is None else warmup,
            repeats=self.preset.repeats if repeats is None else repeats,
            device="cpu" if on_host else self.device,
            stream=stream,
        )

    def free_memory(self) -> None:
        """Drop garbage and return cached device blocks to the driver (between sections, and after a failure,
        whose traceback may hold tensors in reference cycles)."""
        gc.collect()
        self.release_blocks()

    def release_blocks(self) -> None:
        """Return cached device blocks to the driver without a garbage collection: between the points of one sweep,
        whose tensors are freed as their last reference goes. A collection costs 0.2-0.4 s in the profiler's
        process (torch and transformers loaded); once per point it was most of the kernel sweep's time (an H200 quick
        profile, 2026-12-01: 60 attention points in 25 s, where the executor-step sweep, without it, timed 222
        points in 22 s)."""
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def free_bytes(self) -> int:
        """Free device memory (GPU) or available host RAM (CPU), in bytes."""
        if self.on_gpu:
            free_bytes, _total = torch.cuda.mem_get_info(self.device)
            return int(free_bytes)
        return read_meminfo()["available_bytes"]

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of new tensors fit in FIT_MARGIN of the free memory."""
        return nbytes <= FIT_MARGIN * self.free_bytes()

    def randn(self, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        """Random normal tensor on the device (never zeros: see executor.runtime.timing)."""
        return torch.randn(*shape, device=self.device, dtype=dtype)

    def random_bytes(self, nbytes: int) -> torch.Tensor:
        """``nbytes`` random uint8 on the device."""
        return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=self.device)


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (what the executor runs); float32 on CPU (CPUs without bf16 units emulate it slowly)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
