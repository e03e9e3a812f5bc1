"""The one timing helper of headplan: warm-up, then repeats timed with CUDA events (or a host clock), median.

``measure(fn, device=...)`` calls ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, and returns
a TimingStats with the median, the 10th/90th percentiles and the relative spread. On CUDA each repeat is
bracketed by a pair of CUDA events recorded on ``stream`` (default: the current stream) and the device is
synchronised after each repeat, so a sample is GPU time and never includes the queue of earlier repeats.
On CPU the host clock (``time.perf_counter``, injectable for tests) brackets each call.

Non-positive samples (a clock that did not advance, an event pair that timed nothing) are dropped and
counted in ``rejected_count``, never averaged in; if every sample is non-positive, TimingError.

Leaves out: producing the inputs. Callers time random data (``torch.randn``, random bytes), never zeros:
zeros can take fast paths (sparse/zero-page tricks, compressible copies) that real data does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


class TimingError(RuntimeError):
    """No usable sample: every timed repeat came out non-positive."""


@dataclass(frozen=True)
class TimingStats:
    """Summary of timed repeats, in seconds. ``samples_s`` holds the kept (positive) samples, sorted."""

    median_s: float
    p10_s: float
    p90_s: float
    spread_rel: float  # (p90 - p10) / median
    samples_s: tuple[float, ...]
    rejected_count: int = 0

    def rate(self, amount: float) -> float:
        """``amount`` (FLOPs, bytes) per second at the median time."""
        return amount / self.median_s


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    position = fraction * (len(sorted_values) - 1)
    lower = int(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1 - weight) + sorted_values[upper] * weight


def summarize(samples_s: Sequence[float]) -> TimingStats:
    """Median, p10, p90 and relative spread of timing samples; drops (and counts) non-positive ones."""
    kept = sorted(float(s) for s in samples_s if s > 0)
    rejected = len(samples_s) - len(kept)
    if not kept:
        raise TimingError(f"all {len(samples_s)} timing samples were non-positive; nothing to report")
    median = _percentile(kept, 0.5)
    p10, p90 = _percentile(kept, 0.1), _percentile(kept, 0.9)
    return TimingStats(
        median_s=median,
        p10_s=p10,
        p90_s=p90,
        spread_rel=(p90 - p10) / median,
        samples_s=tuple(kept),
        rejected_count=rejected,
    )


def _is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def _measure_cuda(fn: Callable[[], Any], repeats: int, device: Any, stream: Any) -> list[float]:
    import torch

    samples_s = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        target = stream if stream is not None else torch.cuda.current_stream(device)
        start.record(target)
        fn()
        end.record(target)
        torch.cuda.synchronize(device)
        samples_s.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in milliseconds
    return samples_s


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: Any = "cpu",
    stream: Any = None,
    clock: Optional[Callable[[], float]] = None,
) -> TimingStats:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls; median and spread.

    device: "cpu" (host clock) or a CUDA device ("cuda", "cuda:0", torch.device): CUDA events recorded on
        ``stream`` (default: the device's current stream), device synchronised after each repeat.
    clock: host clock for the CPU path (seconds); tests pass a fake one. Ignored on CUDA.
    Inputs are the caller's job and should be random, never zeros (see the module docstring).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        fn()
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        return summarize(_measure_cuda(fn, repeats, device, stream))
    clock = clock or time.perf_counter
    samples_s = []
    for _ in range(repeats):
        start_s = clock()
        fn()
        samples_s.append(clock() - start_s)
    return summarize(samples_s)


def synchronize(device: Any) -> None:
    """Wait for the device to finish queued work (no-op on CPU)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def host_seconds(fn: Callable[[], Any], *, device: Any = "cpu", clock: Optional[Callable[[], float]] = None) -> float:
    """Wall seconds of one call of ``fn`` including device completion (for one-off costs: pinning, graph
    builds); the device is synchronised before and after."""
    clock = clock or time.perf_counter
    synchronize(device)
    start_s = clock()
    fn()
    synchronize(device)
    return clock() - start_s
