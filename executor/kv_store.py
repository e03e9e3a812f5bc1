"""Where the KV cache lives during a run: host store, GPU resident store, ping-pong slots, streams and events.

Layout (L layers, H_kv KV heads of dim d, capacity T = context + new tokens, r_l resident heads of layer l and
the offloaded groups from planner/layout.py):
    host store      per layer K_l, V_l [H_kv - r_l, T, d]   offloaded KV head h of layer l is row h - r_l; one
                    flat allocation, page-locked with cudaHostRegister at its exact size (no power-of-two
                    rounding), unregistered before it is freed; plain memory on CPU
    resident store  per layer K_l, V_l [r_l, T, d] on the GPU (KV heads [0, r_l))
    ping-pong slots 2 slots, each K, V [G_max, T, d] on the GPU (G_max = layout.max_group_heads)
Rows are [T, d] contiguous, so a head's past [0, s) is one contiguous copy each way.

Streams: compute (the current stream), h2d (prefetch into a slot) and d2h (chunk's new K, V to the host). Each
slot has two events: ``fetched`` (h2d done; compute waits: read-after-write) and ``released`` (compute done
reading it; h2d waits before overwriting: write-after-read). On CPU the streams and events are no-ops.
Leaves out: batch > 1, sliding windows, anything but full causal attention.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from planner.layout import max_group_heads, offloaded_groups, resident_heads_per_layer
from planner.units import GIB


class HostMemoryError(ValueError):
    """Host RAM cannot hold the offloaded KV store (raised before anything is allocated)."""


@dataclass(frozen=True)
class ExecutionSettings:
    """What the executor core needs from a plan (keyword-only, validated by KVLayout)."""

    chunk_size: int
    """prefill chunk length c (tokens); decode uses 1"""
    heads_per_group: int
    """G: offloaded KV heads streamed together (the last group of a layer may be smaller)"""
    resident_kv_heads: int
    """R: (layer, KV head) slots kept on the GPU over all layers, spread by planner/layout.py"""
    capacity_tokens: int
    """T: tokens the stores hold (context + new tokens)"""
    attention_backend: str = "flash"
    """attention_kernels backend: flash | flash_attn | cudnn-split | math"""
    decode_graphs: bool = True
    """decode through the static step where it applies (executor/decode_graph.py), replayed as a CUDA graph on a GPU"""


@dataclass(frozen=True)
class KVLayout:
    """Shapes of the stores for one model and one ExecutionSettings."""

    num_layers: int
    kv_heads: int
    query_heads: int
    head_dim: int
    capacity_tokens: int
    heads_per_group: int
    resident_per_layer: tuple[int, ...]
    groups_per_layer: tuple[tuple[range, ...], ...]
    max_group_heads: int

    @classmethod
    def build(cls, *, num_layers: int, kv_heads: int, query_heads: int, head_dim: int,
              settings: ExecutionSettings) -> "KVLayout":
        if settings.capacity_tokens <= 0 or settings.chunk_size <= 0:
            raise ValueError("capacity_tokens and chunk_size must be positive")
        if not 1 <= settings.heads_per_group <= kv_heads:
            raise ValueError(f"heads_per_group must be in [1, {kv_heads}], got {settings.heads_per_group}")
        resident = resident_heads_per_layer(settings.resident_kv_heads, num_layers, kv_heads)
        groups = tuple(tuple(offloaded_groups(r, kv_heads, settings.heads_per_group)) for r in resident)
        return cls(num_layers=num_layers, kv_heads=kv_heads, query_heads=query_heads, head_dim=head_dim,
                   capacity_tokens=settings.capacity_tokens, heads_per_group=settings.heads_per_group,
                   resident_per_layer=tuple(resident), groups_per_layer=groups,
                   max_group_heads=max_group_heads(settings.resident_kv_heads, num_layers, kv_heads,
                                                   settings.heads_per_group))

    @property
    def offloaded_per_layer(self) -> tuple[int, ...]:
        return tuple(self.kv_heads - r for r in self.resident_per_layer)

    def host_bytes(self, dtype_bytes: int) -> int:
        """Host store: 2 (K, V) * sum_l (H_kv - r_l) * T * d * bytes."""
        return 2 * sum(self.offloaded_per_layer) * self.capacity_tokens * self.head_dim * dtype_bytes

    def resident_bytes(self, dtype_bytes: int) -> int:
        """GPU resident store: 2 * sum_l r_l * T * d * bytes."""
        return 2 * sum(self.resident_per_layer) * self.capacity_tokens * self.head_dim * dtype_bytes

    def slot_bytes(self, dtype_bytes: int) -> int:
        """Ping-pong buffers: 2 (slots) * 2 (K, V) * G_max * T * d * bytes."""
        return 4 * self.max_group_heads * self.capacity_tokens * self.head_dim * dtype_bytes


def host_available_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class HostKVStore:
    """Offloaded K, V in host memory: per layer [H_kv - r_l, T, d], one flat allocation, pinned exactly on CUDA.

    Use as a context manager (or call close()): the pages are unregistered before the memory is released, on
    every exit path.
    """

    PAGE_BYTES = 4096
    REGISTER_PORTABLE = 1
    """cudaHostRegisterPortable: the pages count as pinned for every device's context (several GPUs)"""

    def __init__(self, layout: KVLayout, dtype: torch.dtype, *, pin: bool,
                 available_bytes: Optional[int] = None, numa_node: Optional[int] = None,
                 device: Optional[torch.device] = None):
        self.device = device  # the GPU whose streams copy to and from the pages (None: the current one)
        self.layout, self.dtype, self.nbytes = layout, dtype, layout.host_bytes(_dtype_bytes(dtype))
        self.check_host_ram(self.nbytes, available_bytes if available_bytes is not None else host_available_bytes())
        self.pinned, self.pin_s, self.numa_bound = False, 0.0, False
        self._flat = torch.empty(self.nbytes, dtype=torch.uint8)
        if numa_node is not None and self.nbytes:
            from executor.numa import prefer_node

            self.numa_bound = prefer_node(self._flat, numa_node)  # before the first touch places the pages
        if self.nbytes:
            self._flat[:: self.PAGE_BYTES].zero_()  # touch every page once so registering does not fault them
        if pin and self.nbytes:
            self._register()
        self.keys, self.values = self._views()

    @staticmethod
    def check_host_ram(nbytes: int, available: Optional[int]) -> None:
        """Raise HostMemoryError when ``nbytes`` exceed ``available`` (None: unknown, not checked)."""
        if available is not None and nbytes > available:
            raise HostMemoryError(
                f"host KV store needs {nbytes / GIB:.2f} GiB ({nbytes} B) of host RAM but only "
                f"{available / GIB:.2f} GiB is available: lower the context, keep more KV heads resident, or "
                "state the host's memory with --host-mem where MemAvailable under-reports it (a VM that grows)")

    def _register(self) -> None:
        start = time.perf_counter()
        code = torch.cuda.cudart().cudaHostRegister(self._flat.data_ptr(), self.nbytes, self.REGISTER_PORTABLE)
        if int(code) != 0:
            raise RuntimeError(f"cudaHostRegister of {self.nbytes / GIB:.2f} GiB failed with CUDA error {code}")
        self.pinned, self.pin_s = True, time.perf_counter() - start

    def _views(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        typed = self._flat.view(self.dtype)
        layout, keys, values, offset = self.layout, [], [], 0
        per_head = layout.capacity_tokens * layout.head_dim
        for heads in layout.offloaded_per_layer:
            size = heads * per_head
            shape = (heads, layout.capacity_tokens, layout.head_dim)
            keys.append(typed[offset: offset + size].view(shape))
            values.append(typed[offset + size: offset + 2 * size].view(shape))
            offset += 2 * size
        return keys, values

    def close(self) -> None:
        """Unregister the pages (CUDA) and drop the memory. Safe to call twice."""
        if getattr(self, "pinned", False):
            torch.cuda.synchronize(self.device)  # no copy of that GPU's streams may still use the pages
            torch.cuda.cudart().cudaHostUnregister(self._flat.data_ptr())
            self.pinned = False
        self.keys, self.values, self._flat = [], [], None

    def __enter__(self) -> "HostKVStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # last resort; the runner closes explicitly
        try:
            self.close()
        except Exception:
            pass


class GpuKVStore:
    """Resident K, V per layer [r_l, T, d] and the two ping-pong slots, each K, V [G_max, T, d]."""

    def __init__(self, layout: KVLayout, dtype: torch.dtype, device: torch.device):
        shape = lambda heads: (heads, layout.capacity_tokens, layout.head_dim)  # noqa: E731
        self.resident_keys = [torch.empty(shape(r), dtype=dtype, device=device) for r in layout.resident_per_layer]
        self.resident_values = [torch.empty(shape(r), dtype=dtype, device=device)
                                for r in layout.resident_per_layer]
        slots = 2 if layout.max_group_heads else 0
        self.slot_keys = [torch.empty(shape(layout.max_group_heads), dtype=dtype, device=device)
                          for _ in range(slots)]
        self.slot_values = [torch.empty(shape(layout.max_group_heads), dtype=dtype, device=device)
                            for _ in range(slots)]

    def close(self) -> None:
        self.resident_keys = self.resident_values = self.slot_keys = self.slot_values = []


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


def _dtype_bytes(dtype: torch.dtype) -> int:
    return dtype.itemsize
