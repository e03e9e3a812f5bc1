"""EventRecorder: timestamps on a stream that never block the host (CUDA events; perf_counter on CPU), resolved
into milliseconds after the run with one synchronize per device. Leaves out: what the marks mean
(generation/measurement.py fill_times reads them)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from executor.runtime.streams import StreamSet


@dataclass
class Mark:
    name: str
    meta: dict
    event: object
    lane: str = "compute"


@dataclass
class EventRecorder:
    """Timestamps on a stream without synchronising: CUDA events on GPU, perf_counter on CPU.

    ``mark`` is cheap and never blocks; ``resolve`` (after a synchronize) turns marks into milliseconds since
    the first mark.
    """

    device: torch.device
    streams: Optional[StreamSet] = None
    marks: list[Mark] = field(default_factory=list)

    def mark(self, name: str, lane: str = "compute", **meta) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            stream = getattr(self.streams, lane, None) if self.streams else None
            event.record(stream if stream is not None else torch.cuda.current_stream(self.device))
        else:
            event = time.perf_counter()
        self.marks.append(Mark(name, meta, event, lane))

    def resolve(self) -> list[tuple[str, dict, float, str]]:
        """[(name, meta, ms since the first mark, lane)]; synchronizes the device once."""
        if not self.marks:
            return []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            origin = self.marks[0].event
            return [(m.name, m.meta, origin.elapsed_time(m.event), m.lane) for m in self.marks]
        origin = self.marks[0].event
        return [(m.name, m.meta, (m.event - origin) * 1000.0, m.lane) for m in self.marks]

