"""A CUDA stream that waits for the host: cuStreamWaitValue32 on a pinned counter that a host thread advances.

    counter = HostCounter.create()      # one pinned uint32 and its device address; None where unsupported
    counter.wait(stream, n)             # queued on ``stream``: its later work runs once the counter is >= n
    counter.wait_current(device, n)     # the same on the device's current stream
    counter.publish(n)                  # any host thread: the counter := n (after the data it guards is written)
    counter.release(device)             # before dropping it: its pinned block is kept until the stream passed

With it the GPU consumes a host thread's result the moment the thread publishes it, and nobody on the host waits:
the CPU share of decode attention (engine/host_share.py) no longer makes the main thread join the worker every
layer, so the main thread issues the rest of the layer and the next one while the CPU attends (on the lent H200,
2026-12-01, the join left the CPU idle ~3.5 ms per layer while the main thread issued that work after it).

The driver's entry points come from libcuda through ctypes (torch exposes no stream memory operations); the
counter's device address from cuMemHostGetDevicePointer. ``create`` returns None on a machine without CUDA, where
a symbol is missing or a call fails, or with HEADPLAN_HOST_WAIT=join (the host-join path, for A/B runs); callers
then join on the host as before. Ordering: x86 stores are seen in program order, so data written by the
publishing thread (and by the OpenMP team it joined) before ``publish`` is in memory when the GPU sees the value.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
from typing import Optional

import torch

CU_STREAM_WAIT_VALUE_GEQ = 0x0


@functools.lru_cache(maxsize=1)
def _driver() -> Optional[tuple]:
    """(cuStreamWaitValue32, cuMemHostGetDevicePointer) from libcuda, or None (looked up once)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    wait = next((getattr(lib, name) for name in ("cuStreamWaitValue32_v2", "cuStreamWaitValue32")
                 if hasattr(lib, name)), None)
    pointer = next((getattr(lib, name) for name in ("cuMemHostGetDevicePointer_v2", "cuMemHostGetDevicePointer")
                    if hasattr(lib, name)), None)
    if wait is None or pointer is None:
        return None
    wait.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint]
    wait.restype = ctypes.c_int
    pointer.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p, ctypes.c_uint]
    pointer.restype = ctypes.c_int
    return wait, pointer


class HostCounter:
    """One pinned uint32 a CUDA stream can wait on (module docstring)."""

    def __init__(self, host: torch.Tensor, device_address: int, wait_fn) -> None:
        self._host = host                     # keeps the pinned allocation alive
        self._cell = ctypes.c_uint32.from_address(host.data_ptr())
        self._device_address, self._wait_fn = device_address, wait_fn

    @classmethod
    def create(cls) -> Optional["HostCounter"]:
        """A counter at 0, or None where the stream wait is unavailable (module docstring)."""
        if os.environ.get("HEADPLAN_HOST_WAIT", "").lower() == "join" or not torch.cuda.is_available():
            return None
        driver = _driver()
        if driver is None:
            return None
        wait_fn, pointer_fn = driver
        torch.cuda.init()
        host = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        address = ctypes.c_uint64(0)
        if pointer_fn(ctypes.byref(address), ctypes.c_void_p(host.data_ptr()), 0) != 0:
            return None
        counter = cls(host, address.value, wait_fn)
        return counter if counter._self_test() else None

    def _self_test(self, timeout_s: float = 2.0) -> bool:
        """A side stream waits for a value already published; False (the stream released) if it does not pass
        within ``timeout_s`` or the driver refuses the wait. The counter is back at 0 after a pass."""
        stream, done = torch.cuda.Stream(), torch.cuda.Event()
        self.publish(1)
        try:
            self.wait(stream, 1)
        except RuntimeError:
            return False
        done.record(stream)
        deadline = time.perf_counter() + timeout_s
        while not done.query():
            if time.perf_counter() > deadline:
                self.publish(0xFFFFFFFF)   # release the stream; this counter is not used
                return False
            time.sleep(1e-4)
        self.publish(0)
        return True

    @property
    def value(self) -> int:
        return self._cell.value

    def publish(self, value: int) -> None:
        """Host side: the counter := ``value`` (a plain store; no ATen call, no GIL release)."""
        self._cell.value = value

    def release(self, device: torch.device) -> None:
        """Before the counter is dropped: a 4-byte non-blocking copy of it on ``device``'s current stream, so that
        torch's pinned-memory cache keeps the block until the stream has passed every wait queued on it (a block
        reused by another tensor while a wait still polls it could hold a smaller value and stall the stream)."""
        torch.empty(1, dtype=torch.int32, device=device).copy_(self._host, non_blocking=True)

    def wait_current(self, device: torch.device, value: int) -> None:
        """``wait`` on ``device``'s current stream."""
        self.wait(torch.cuda.current_stream(device), value)

    def wait(self, stream: torch.cuda.Stream, value: int) -> None:
        """Queue on ``stream`` a wait until the counter is >= ``value`` (uint32 compare)."""
        code = self._wait_fn(ctypes.c_void_p(stream.cuda_stream), self._device_address, value,
                             CU_STREAM_WAIT_VALUE_GEQ)
        if code != 0:
            raise RuntimeError(f"cuStreamWaitValue32 failed with CUDA driver error {code}")
