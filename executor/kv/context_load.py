"""Load the common token prefix of a saved context (kv/context_manifest.py) into a run's stores (kv/rows.py).

ContextLoader(directory, fingerprint=..., dtype=..., ...) reads and checks the manifest (format, its sizes, each
file's size on disk), the model fingerprint (kv/fingerprint.py), dtype and shapes, and the token ids (CRC-32)
before the run allocates anything. ``reusable_tokens(prompt_ids)`` is the longest common prefix of the prompt and
the saved ids, capped at len(prompt) - 1 so the last prompt token is always computed again (fresh logits).
``load(rows, tokens)`` then reads the segments covering [0, tokens) on DEFAULT_WORKERS threads. A whole segment is
read with one scatter read (os.preadv) straight into its destinations: each host-store block [t_s, d] into its row
of the pinned store (no staging copy), each GPU-resident block into the worker's staging buffer; its pieces are
then CRC-checked over those same blocks in file order, and only after the check are the staged resident blocks
copied host-to-device. A partial last segment (a prefix ending inside it) is read whole into the staging buffer,
checked, and only its first rows copied. Staging (``staging_bytes``, one segment per worker) is the only extra host
memory.

Nothing unverified is used: a host-store block may hold bytes before its segment's check, but the stores loaded
into belong to the run being set up (allocated just before and not read until the load returns); a check that
fails raises before the prefill, and the runner (or DocumentEngine) releases or disowns those stores unread, so a
bad file can never leave a half-loaded context in use. A context whose manifest marks tokens [0, N) as a timing
probe's synthetic pattern (``synthetic_past_tokens``) is refused unless ``allow_synthetic`` (benchmarks timing the disk):
its KV is not the model's. Only raw bytes are read (preadv / readinto + views): nothing unpickles.
"""

from __future__ import annotations

import os
import queue
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from executor.kv.context_manifest import ContextFormatError, ContextManifest, ModelFingerprint, read_manifest
from executor.kv.context_save import _numpy_bytes, _piece_crcs
from executor.kv.fingerprint import fingerprint_mismatch
from executor.kv.rows import KVRows
from planner.units import GIB


IOV_BATCH = 512
"""buffers per os.preadv call (Linux IOV_MAX is 1024)"""
DEFAULT_WORKERS = 4
"""segments loaded at once, each by one thread (read, check, copy) into its own staging buffer: several reads in
flight keep the disk's queue full, and the checks and copies of one segment overlap the others' reads"""


class ContextMismatchError(ValueError):
    """A saved context of another model, other weights, another dtype or shape."""


@dataclass(frozen=True)
class LoadResult:
    path: str
    tokens: int
    nbytes: int
    load_s: float


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    x, y = np.asarray(a[:n], dtype=np.int64), np.asarray(b[:n], dtype=np.int64)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if differ.size else n


def preadv_exact(path: Path, views: Sequence[np.ndarray]) -> int:
    """Fill ``views`` (uint8 arrays, in order) with the bytes of ``path`` from offset 0, IOV_BATCH buffers per
    os.preadv call, retrying short reads; ContextFormatError when the file ends first. Returns the bytes read.
    Hints the kernel that the file is read sequentially (a larger read-ahead window)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        offset = 0
        for start in range(0, len(views), IOV_BATCH):
            pending = [memoryview(v) for v in views[start: start + IOV_BATCH] if v.size]
            while pending:
                got = os.preadv(fd, pending, offset)
                if not got:
                    raise ContextFormatError(f"{path} ended after {offset} B (truncated)")
                offset += got
                while pending and got >= len(pending[0]):
                    got -= len(pending[0])
                    pending.pop(0)
                if pending and got:
                    pending[0] = pending[0][got:]
        return offset
    finally:
        os.close(fd)


def _read_exact(path: Path, buffer: np.ndarray) -> None:
    """Fill ``buffer`` (uint8) from the start of ``path``; ContextFormatError when the file is shorter."""
    view, pos = memoryview(buffer), 0
    with open(path, "rb", buffering=0) as f:
        while pos < len(view):
            got = f.readinto(view[pos:])
            if not got:
                raise ContextFormatError(f"{path} ended after {pos} of {len(view)} B (truncated)")
            pos += got


class ContextLoader:
    """A saved context checked against this run's model; loads its prefix into a run's stores (module doc)."""

    def __init__(self, directory: Path | str, *, fingerprint: ModelFingerprint, dtype: torch.dtype, num_layers: int,
                 kv_heads: int, head_dim: int, progress: bool = True, workers: Optional[int] = None,
                 allow_synthetic: bool = False):
        self.path = Path(directory)
        self.manifest: ContextManifest = read_manifest(self.path)
        self.progress, self.workers = progress, workers or min(DEFAULT_WORKERS, os.cpu_count() or 1)
        m = self.manifest
        dtype_name = str(dtype).removeprefix("torch.")
        if m.dtype != dtype_name:
            raise ContextMismatchError(f"--load-kv {self.path}: saved in {m.dtype}, this run is {dtype_name}")
        why = fingerprint_mismatch(m.model, fingerprint)
        if why:
            raise ContextMismatchError(f"--load-kv {self.path}: {why}")
        if m.synthetic_past_tokens and not allow_synthetic:
            raise ContextMismatchError(
                f"--load-kv {self.path}: tokens [0, {m.synthetic_past_tokens}) of this context are a timing probe's "
                "synthetic KV (--tail-chunks: a fixed random pattern), not the model's: it would answer from nothing; refused")
        self.synthetic_past_tokens = m.synthetic_past_tokens
        shape = (m.layout.num_layers, m.layout.kv_heads, m.layout.head_dim)
        if shape != (num_layers, kv_heads, head_dim) or not m.layout.k_after_rope:
            raise ContextMismatchError(f"--load-kv {self.path}: KV of (layers, KV heads, head dim) {shape}, this "
                                       f"model has {(num_layers, kv_heads, head_dim)}")
        self.saved_ids = self._read_ids()

    def _read_ids(self) -> np.ndarray:
        m = self.manifest
        raw = np.empty(m.tokens_nbytes, dtype=np.uint8)
        _read_exact(self.path / m.tokens_file, raw)
        if zlib.crc32(raw) != m.tokens_crc32:
            raise ContextFormatError(f"{self.path / m.tokens_file}: checksum mismatch (corrupt)")
        return raw.view("<i4").astype(np.int64)

    def reusable_tokens(self, prompt_ids: Sequence[int]) -> int:
        """Longest common prefix of ``prompt_ids`` and the saved ids, at most len(prompt_ids) - 1."""
        return min(common_prefix(list(prompt_ids), self.saved_ids.tolist()), max(len(prompt_ids) - 1, 0))

    @property
    def staging_bytes(self) -> int:
        """Host memory a load takes besides the stores: one segment buffer per worker."""
        return min(self.workers, len(self.manifest.segments)) * max(s.nbytes for s in self.manifest.segments)

    def check_host_ram(self, store_bytes: int, available_bytes: Optional[int]) -> None:
        """ContextMismatchError when the run's host store (``store_bytes``) plus the staging buffers exceed
        ``available_bytes`` (None: unknown, not checked)."""
        need = store_bytes + self.staging_bytes
        if available_bytes is not None and need > available_bytes:
            raise ContextMismatchError(
                f"--load-kv {self.path}: the host KV store ({store_bytes / GIB:.2f} GiB) and the load's staging "
                f"buffers ({self.staging_bytes / GIB:.2f} GiB) need {need / GIB:.2f} GiB of host RAM but only "
                f"{available_bytes / GIB:.2f} GiB is available")

    def load(self, rows: KVRows, tokens: int) -> LoadResult:
        """Copy tokens [0, tokens) of every (layer, KV head) into ``rows`` (module docstring)."""
        from tqdm import tqdm

        if tokens <= 0:
            return LoadResult(str(self.path), 0, 0, 0.0)
        if tokens > min(self.manifest.token_count, rows.capacity_tokens):
            raise ValueError(f"cannot load {tokens} tokens: the context has {self.manifest.token_count}, the "
                             f"stores hold {rows.capacity_tokens}")
        segments = self.manifest.segments_for(tokens)
        nbytes = sum(s.nbytes for s in segments)
        free: queue.Queue = queue.Queue()
        for _ in range(min(self.workers, len(segments))):
            buffer = np.empty(max(s.nbytes for s in segments), dtype=np.uint8)
            buffer[::4096] = 0  # fault the pages in here, not inside the reads (0.5 GB/s measured on tmpfs)
            free.put(buffer)
        start_s = time.perf_counter()
        bar = tqdm(total=nbytes, unit="B", unit_scale=True, desc="load KV", file=sys.stderr,
                   disable=not self.progress)
        with ThreadPoolExecutor(free.qsize()) as pool, bar:
            jobs = [pool.submit(self._load_segment, rows, seg, tokens, free, bar) for seg in segments]
            try:
                for job in jobs:
                    job.result()
            except BaseException:
                for job in jobs:
                    job.cancel()
                raise
        for device in {p.resident_keys.device for p in rows.layers if p.resident_keys.device.type == "cuda"}:
            torch.cuda.synchronize(device)  # the resident rows' host-to-device copies are complete
        return LoadResult(str(self.path), tokens, nbytes, time.perf_counter() - start_s)

    def _load_segment(self, rows: KVRows, seg, tokens: int, free: queue.Queue, bar) -> None:
        """One worker's segment: read (straight into the host rows when the segment is needed whole), check every
        piece, then copy what is staged (module docstring)."""
        staging = free.get()
        try:
            if seg.first_token + seg.tokens <= tokens:
                self._load_whole(rows, seg, staging)
            else:
                buffer = staging[: seg.nbytes]
                _read_exact(self.path / seg.file, buffer)
                self._check(seg, buffer)
                self._copy(rows, seg, buffer, tokens)
            bar.update(seg.nbytes)
        finally:
            free.put(staging)

    def _load_whole(self, rows: KVRows, seg, staging: np.ndarray) -> None:
        views, staged = _scatter_targets(rows, seg, staging)
        got = preadv_exact(self.path / seg.file, views)
        if got != seg.nbytes:  # the sizes were checked when the manifest was read; the file changed since
            raise ContextFormatError(f"{self.path / seg.file}: read {got} B, the manifest says {seg.nbytes}")
        crcs = _piece_crcs(views, self.manifest.checksum_piece_bytes)
        self._compare(seg, crcs)
        for destination, source in staged:  # resident rows: only checked bytes go to the GPU
            destination.copy_(source)

    def _compare(self, seg, crcs: Sequence[int]) -> None:
        bad = [k for k, (got, want) in enumerate(zip(crcs, seg.piece_crc32)) if got != want]
        if bad or len(crcs) != len(seg.piece_crc32):
            raise ContextFormatError(f"{self.path / seg.file}: checksum mismatch in piece {bad[0] if bad else 0} "
                                     f"of {len(crcs)} (corrupt)")

    def _check(self, seg, buffer: np.ndarray) -> None:
        piece, view = self.manifest.checksum_piece_bytes, memoryview(buffer)
        self._compare(seg, [zlib.crc32(view[a: a + piece]) for a in range(0, seg.nbytes, piece)])

    @staticmethod
    def _copy(rows: KVRows, seg, buffer: np.ndarray, tokens: int) -> None:
        """Blocks [t_s, d] of the checked segment into the rows: tokens [first, first + take) of each."""
        take = min(seg.tokens, tokens - seg.first_token)
        source = torch.from_numpy(buffer).view(rows.dtype).view(-1, seg.tokens, rows.head_dim)
        block = 0
        for layer in range(len(rows.layers)):
            for head in range(rows.kv_heads):
                for row in rows.rows(layer, head):
                    row[seg.first_token: seg.first_token + take].copy_(source[block, :take])
                    block += 1


def _scatter_targets(rows: KVRows, seg, staging: np.ndarray) -> tuple[list[np.ndarray], list]:
    """The destinations of a whole segment's blocks in file order (uint8 views): a host-store block is its row's
    tokens [first, first + t_s) of the pinned store itself; a resident block is the next piece of ``staging``,
    paired in the second list with its store row for the copy after the check."""
    views, staged, offset = [], [], 0
    block_bytes = seg.tokens * rows.head_dim * rows.dtype.itemsize
    for layer in range(len(rows.layers)):
        for head in range(rows.kv_heads):
            for row in rows.rows(layer, head):
                destination = row[seg.first_token: seg.first_token + seg.tokens]
                if rows.is_resident(layer, head) or not destination.is_contiguous():
                    piece = staging[offset: offset + block_bytes]
                    offset += block_bytes
                    staged.append((destination, torch.from_numpy(piece).view(rows.dtype).view(destination.shape)))
                    views.append(piece)
                else:
                    views.append(_numpy_bytes(destination))
    return views, staged
