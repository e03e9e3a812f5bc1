"""Sequential disk bandwidth of a folder (headplan profile --disk DIR), measured the way a saved context is written
and read (executor/kv/context_save.py, context_load.py), with their own functions.

Write: ``nbytes`` of random bytes (zeros could be compressed or deduplicated by the file system) as files of one
context segment's size (at most SEGMENT_BYTES, 512 MiB: a Llama-3-8B bf16 segment), SAVE_WORKERS at once, each
through the saver's _write_file (os.writev, fsync, rename); the rate counts the fsyncs (a save is not done before
its data is on the device). Read: the same files after fsync and posix_fadvise(POSIX_FADV_DONTNEED), which drops
their now-clean pages from the page cache without root, the loader's DEFAULT_WORKERS at once, each whole through
the loader's preadv_exact (buffered, sequential hint) into a host buffer. So "the load ran at X% of the disk's
read rate" compares like with like. Also measured, for comparison, one stream: one file of ``nbytes`` written in
64 MiB writes + fsync and read back with readinto (``single_stream_*``: the figures this section gave in
its first version). Not O_DIRECT: the loader does not use it (it needs aligned buffers and offsets and bypasses the
read-ahead), so an O_DIRECT figure would measure another path. Where the hint cannot drop the pages (tmpfs, some
overlay file systems), the read figure is the page cache's: noted in the profile.
Sizes: tiny 32 MiB, quick 1 GiB, full 4 GiB, at most a quarter of the free disk and of the available host RAM.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from executor.kv.context_load import DEFAULT_WORKERS, preadv_exact
from executor.kv.context_save import SAVE_WORKERS, _write_file
from executor.profiler.context import ProfileContext
from executor.runtime.host_memory import host_available_bytes
from planner.units import GIB, MIB

DISK_BYTES = {"tiny": 32 * MIB, "quick": 1 * GIB, "full": 4 * GIB}
BLOCK_BYTES = 64 * MIB
FILE_NAME = ".headplan-disk-probe.bin"
SEGMENT_BYTES = 512 * MIB


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


def _parallel(paths: list[Path], pieces: list[np.ndarray], workers: int, job) -> float:
    from concurrent.futures import ThreadPoolExecutor

    start_s = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(job, paths, pieces))
    return time.perf_counter() - start_s


def _segment_way(folder: Path, buffer: np.ndarray) -> tuple[float, float, bool]:
    """(write_s, read_s, cache dropped) of ``buffer`` as segment-sized files, the saver's and the loader's way."""
    size = min(SEGMENT_BYTES, max(MIB, buffer.size // max(SAVE_WORKERS, DEFAULT_WORKERS)))
    pieces = [buffer[a: a + size] for a in range(0, buffer.size, size)]
    paths = [folder / f"{FILE_NAME}.{i}" for i in range(len(pieces))]
    try:
        write_s = _parallel(paths, pieces, SAVE_WORKERS, lambda p, b: _write_file(p, [b]))
        dropped = all([_drop_cache(p) for p in paths])
        read_s = _parallel(paths, pieces, DEFAULT_WORKERS, lambda p, b: preadv_exact(p, [b]))
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    return write_s, read_s, dropped


def measure_disk(ctx: ProfileContext, directory: str | Path | None = None) -> dict:
    """{'disk_write_bytes_per_s', 'disk_read_bytes_per_s' (the saver's and loader's way), 'single_stream_write_bytes_per_s',
    'single_stream_read_bytes_per_s', 'disk_path', 'nbytes', 'cache_dropped', 'workers'} for ``directory`` (default:
    the working directory). The probe files are removed on every exit path."""
    folder = Path(directory) if directory is not None else Path.cwd()
    if not folder.is_dir():
        raise ValueError(f"--disk {folder} is not a folder")
    nbytes = probe_bytes(ctx.preset.mode, shutil.disk_usage(folder).free, host_available_bytes())
    buffer = np.random.default_rng(0).integers(0, 256, size=nbytes, dtype=np.uint8)
    path = folder / FILE_NAME
    try:
        single_write_s = _write(path, buffer)
        single_dropped = _drop_cache(path)
        single_read_s = _read(path, buffer)
    finally:
        path.unlink(missing_ok=True)
    write_s, read_s, dropped = _segment_way(folder, buffer)
    result = {"disk_write_bytes_per_s": nbytes / write_s, "disk_read_bytes_per_s": nbytes / read_s,
              "single_stream_write_bytes_per_s": nbytes / single_write_s,
              "single_stream_read_bytes_per_s": nbytes / single_read_s,
              "disk_path": str(folder.absolute()), "nbytes": nbytes, "cache_dropped": dropped and single_dropped,
              "workers": {"write": SAVE_WORKERS, "read": DEFAULT_WORKERS}}
    ctx.progress("disk", f"write {nbytes / MIB:.0f} MiB + fsync, {SAVE_WORKERS} files at once, {folder}",
                 f"{result['disk_write_bytes_per_s'] / 1e9:.2f} GB/s (one stream "
                 f"{result['single_stream_write_bytes_per_s'] / 1e9:.2f})")
    ctx.progress("disk", ("read after dropping the page cache" if result["cache_dropped"] else
                          "read (page cache not dropped)") + f", {DEFAULT_WORKERS} files at once",
                 f"{result['disk_read_bytes_per_s'] / 1e9:.2f} GB/s (one stream "
                 f"{result['single_stream_read_bytes_per_s'] / 1e9:.2f})")
    if not result["cache_dropped"]:
        ctx.note("disk read: the page cache could not be dropped, so the read figure may be the cache's")
    return result
