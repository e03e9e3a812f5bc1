"""The three CUDA streams of a run and the per-slot events that guard the ping-pong buffers.

Streams: compute (the current stream), h2d (prefetch into a slot) and d2h (a chunk's new K, V to the host). Each
slot has two events: ``fetched`` (h2d done; compute waits: read-after-write) and ``released`` (compute done
reading it; h2d waits before overwriting: write-after-read). On CPU the streams and events are no-ops, so the
same engine code runs in CI.
"""

from __future__ import annotations

import contextlib

import torch


class _NullEvent:
    def record(self, stream=None) -> None:
        pass


class StreamSet:
    """Compute, h2d and d2h streams with the per-slot events; no-ops on CPU."""

    def __init__(self, device: torch.device, num_layers_groups: int):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.current_stream(device)
            self.h2d = torch.cuda.Stream(device)
            self.d2h = torch.cuda.Stream(device)
            new_event = torch.cuda.Event
        else:
            self.compute = self.h2d = self.d2h = None
            new_event = _NullEvent
        self.slot_fetched = [new_event() for _ in range(2)]
        self.slot_released = [new_event() for _ in range(2)]
        self.chunk_ready = new_event()
        self.written_back = [new_event() for _ in range(num_layers_groups)]
        self._new_event = new_event

    def on(self, stream) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def wait(self, stream, event) -> None:
        if self.cuda:
            stream.wait_event(event)

    def record(self, event, stream) -> None:
        if self.cuda:
            event.record(stream)

