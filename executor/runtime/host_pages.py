"""Huge pages for the host KV store: ``madvise(MADV_HUGEPAGE)`` on its allocation before the first touch.

A 16-64 GiB store in 4 KiB pages is 4-16 million page-table entries: the first touch faults each page in, the
CPU share's decode kernel (attention/host_attention.py) walks them through the TLB, and cudaHostRegister pins
each. Linux's transparent huge pages back the same memory with 2 MiB pages, but under THP's common "madvise"
mode only where the program asks. ``torch.empty`` of that size is a fresh anonymous mapping from glibc whose
pages are untouched, so advising its whole 2 MiB-aligned interior before the touch gives it huge pages where the
kernel has them free (it falls back to 4 KiB pages silently elsewhere; nothing is lost).

    thp_mode()                  "always", "madvise", "never", or None where the kernel has no THP
    advise_huge_pages(tensor)   bytes advised (0: not applied: THP "never", not Linux, too small, or refused)
    anon_huge_bytes()           this process's AnonHugePages (/proc/self/smaps_rollup), None where unknown
    huge_pages_wanted()         HEADPLAN_HOST_PAGES: "huge" (the default) or "base" (4 KiB pages, for A/B runs)

Linux only; everywhere else these report "not applied" and change nothing.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SMAPS_ROLLUP = Path("/proc/self/smaps_rollup")
HUGE_PAGE_BYTES = 2 << 20
MADV_HUGEPAGE = 14
ENV = "HEADPLAN_HOST_PAGES"


def thp_mode(path: Path = THP_ENABLED) -> Optional[str]:
    """The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled ("always [madvise] never")."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages_wanted() -> bool:
    """False only where HEADPLAN_HOST_PAGES=base; any other value than huge/base is refused (ValueError)."""
    value = os.environ.get(ENV, "huge").strip().lower()
    if value not in ("huge", "base"):
        raise ValueError(f"{ENV}={value!r}: expected 'huge' (2 MiB pages where the kernel grants them) or 'base'")
    return value == "huge"


def aligned_interior(start: int, size: int, align: int = HUGE_PAGE_BYTES) -> tuple[int, int]:
    """(first, length) of the whole ``align``-sized blocks inside [start, start + size); length 0 if none."""
    first = -(-start // align) * align
    last = (start + size) // align * align
    return first, max(0, last - first)


def advise_huge_pages(tensor, mode: Optional[str] = None) -> int:
    """madvise(MADV_HUGEPAGE) over the tensor's whole 2 MiB blocks; call before its pages are first touched.
    Returns the bytes advised (0 where not applied). Under THP "always" nothing needs asking: returns 0."""
    mode = thp_mode() if mode is None else mode
    if mode != "madvise" or os.uname().sysname != "Linux":
        return 0
    first, length = aligned_interior(tensor.data_ptr(), tensor.numel() * tensor.element_size())
    if length == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    code = libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(length), ctypes.c_int(MADV_HUGEPAGE))
    return length if code == 0 else 0


def anon_huge_bytes(path: Path = SMAPS_ROLLUP) -> Optional[int]:
    """AnonHugePages of this process in bytes (the huge pages it holds now), None where unknown."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
