"""HostKVStore: the offloaded K, V in host memory, one flat allocation per run (per stage).

Layout (kv/layout.py): per layer K_l, V_l [H_kv - r_l, T, d]. On CUDA the pages are touched once and then
page-locked with cudaHostRegister at their exact size (the caching host allocator would round a 70 GiB request up
to 128 GiB), and unregistered before they are freed, on every exit path; plain memory on CPU. Host RAM is checked
before anything is allocated. Before the first touch the allocation is advised to huge pages
(runtime/host_pages.py; HEADPLAN_HOST_PAGES=base keeps 4 KiB pages): ``touch_s`` and ``huge_page_bytes`` say
what the touch cost and what the kernel granted.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from executor.kv.layout import KVLayout
from executor.runtime.host_pages import advise_huge_pages, anon_huge_bytes, huge_pages_wanted
from executor.runtime.host_memory import host_available_bytes
from planner.units import GIB


class HostMemoryError(ValueError):
    """Host RAM cannot hold the offloaded KV store (raised before anything is allocated)."""


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
        self.layout, self.dtype, self.nbytes = layout, dtype, layout.host_bytes(dtype.itemsize)
        self.check_host_ram(self.nbytes, available_bytes if available_bytes is not None else host_available_bytes())
        self.pinned, self.pin_s, self.numa_bound = False, 0.0, False
        self.touch_s, self.huge_page_bytes = 0.0, 0
        self._flat = torch.empty(self.nbytes, dtype=torch.uint8)
        if numa_node is not None and self.nbytes:
            from executor.runtime.numa import prefer_node

            self.numa_bound = prefer_node(self._flat, numa_node)  # before the first touch places the pages
        if self.nbytes:
            self._touch(advise=huge_pages_wanted())
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

    def _touch(self, advise: bool) -> None:
        """Advise huge pages (when asked), then touch every page once so registering does not fault them."""
        before = anon_huge_bytes()
        if advise:
            advise_huge_pages(self._flat)
        start = time.perf_counter()
        self._flat[:: self.PAGE_BYTES].zero_()
        self.touch_s = time.perf_counter() - start
        after = anon_huge_bytes()
        self.huge_page_bytes = max(0, after - before) if before is not None and after is not None else 0

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

