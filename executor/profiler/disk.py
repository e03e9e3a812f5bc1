"""Sequential disk bandwidth of a folder (headplan profile --disk DIR), the way a saved context is written and read
(executor/kv/context_save.py, context_load.py).

Write: one file of ``nbytes`` from a host buffer of random bytes (zeros could be compressed or deduplicated by the
file system), through os.writev in 64 MiB blocks, then fsync; the rate counts the fsync (a save is not done before
its data is on the device). Read: the same file, after fsync and posix_fadvise(POSIX_FADV_DONTNEED), which drops
its now-clean pages from the page cache without root, read with buffered readinto into a host buffer, as the loader
reads. Not O_DIRECT: the loader does not use it (O_DIRECT needs aligned buffers and offsets and bypasses the
read-ahead the loader profits from), so an O_DIRECT figure would measure another path. Where the hint cannot drop
the pages (tmpfs, some overlay file systems), the read figure is the page cache's: noted in the profile.
Sizes: tiny 32 MiB, quick 1 GiB, full 4 GiB, at most a quarter of the free disk and of the available host RAM.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from executor.profiler.context import ProfileContext
from executor.runtime.host_memory import host_available_bytes
from planner.units import GIB, MIB

DISK_BYTES = {"tiny": 32 * MIB, "quick": 1 * GIB, "full": 4 * GIB}
BLOCK_BYTES = 64 * MIB
FILE_NAME = ".headplan-disk-probe.bin"


def probe_bytes(mode: str, free_disk_bytes: int, available_host_bytes: int | None) -> int:
    """The file size for ``mode``: its preset, capped at a quarter of free disk and of available host RAM."""
    caps = [DISK_BYTES.get(mode, DISK_BYTES["quick"]), free_disk_bytes // 4]
    if available_host_bytes is not None:
        caps.append(available_host_bytes // 4)
    return max(MIB, min(caps) // MIB * MIB)


def _write(path: Path, buffer: np.ndarray) -> float:
    blocks = [memoryview(buffer[i: i + BLOCK_BYTES]) for i in range(0, buffer.size, BLOCK_BYTES)]
    start_s = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in blocks:
            view = block
            while len(view):
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start_s


def _drop_cache(path: Path) -> bool:
    """Ask the kernel to drop the file's clean pages; False where the hint is not available."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _read(path: Path, buffer: np.ndarray) -> float:
    view, pos = memoryview(buffer), 0
    start_s = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while pos < len(view):
            got = f.readinto(view[pos:])
            if not got:
                break
            pos += got
    return time.perf_counter() - start_s


def measure_disk(ctx: ProfileContext, directory: str | Path | None = None) -> dict:
    """{'disk_write_bytes_per_s', 'disk_read_bytes_per_s', 'disk_path', 'nbytes', 'cache_dropped'} for
    ``directory`` (default: the working directory). The probe file is removed on every exit path."""
    folder = Path(directory) if directory is not None else Path.cwd()
    if not folder.is_dir():
        raise ValueError(f"--disk {folder} is not a folder")
    nbytes = probe_bytes(ctx.preset.mode, shutil.disk_usage(folder).free, host_available_bytes())
    buffer = np.random.default_rng(0).integers(0, 256, size=nbytes, dtype=np.uint8)
    path = folder / FILE_NAME
    try:
        write_s = _write(path, buffer)
        dropped = _drop_cache(path)
        read_s = _read(path, buffer)
    finally:
        path.unlink(missing_ok=True)
    result = {"disk_write_bytes_per_s": nbytes / write_s, "disk_read_bytes_per_s": nbytes / read_s,
              "disk_path": str(folder.absolute()), "nbytes": nbytes, "cache_dropped": dropped}
    ctx.progress("disk", f"write {nbytes / MIB:.0f} MiB + fsync, {folder}",
                 f"{result['disk_write_bytes_per_s'] / 1e9:.2f} GB/s")
    ctx.progress("disk", "read after dropping the page cache" if dropped else "read (page cache not dropped)",
                 f"{result['disk_read_bytes_per_s'] / 1e9:.2f} GB/s")
    if not dropped:
        ctx.note("disk read: the page cache could not be dropped, so the read figure may be the cache's")
    return result
