"""Save a run's prompt KV as a context folder (format: kv/context_manifest.py), straight from the stores.

For each segment s (tokens [a, b) = [s * S, min(a + S, n))), for each (layer l, KV head h) in order, K then V:
the block rows[a:b] [b - a, d] of that head's row (kv/rows.py). A host-store block is written from the store's own
memory (a numpy view of the tensor's storage, no copy); the GPU-resident blocks of one segment are first copied to
a bounce buffer of at most one segment's resident bytes (2 * sum_l r_l * S * d * bytes), one per worker.
SAVE_WORKERS threads write segments at once, each computing its file's CRC-32 pieces and writing the same blocks
(zlib and os.writev both release the GIL).

Commit protocol: every file is written as NAME.tmp, fsync'ed, then renamed; manifest.json is written last the same
way and the folder fsync'ed, so a folder is a context exactly when it has a manifest.json, and an interrupted save
(Ctrl-C, a full disk, a killed process) never leaves one. On an exception the files this save wrote are removed.
A folder that already holds a manifest.json is refused: nothing is overwritten.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import shutil
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from executor.kv.context_manifest import (CONTEXT_FORMAT_VERSION, MANIFEST_NAME, TOKENS_NAME, ContextFormatError,
                                          ContextManifest, KVFileLayout, ModelFingerprint, SegmentEntry,
                                          save_bytes_needed, segment_name)
from executor.kv.rows import KVRows
from planner.units import GIB

DEFAULT_SEGMENT_TOKENS = 4096
"""S: Llama-3-8B bf16 (128 KiB per token): 512 MiB per segment; Llama-3.2-1B (32 KiB): 128 MiB"""
DEFAULT_PIECE_BYTES = 64 << 20
"""checksum piece: small enough to verify a segment's pieces in parallel, large enough for few manifest lines"""
SAVE_WORKERS = 4
"""segment files written at once, each by one thread: several writes in flight keep the disk's queue full"""
IOV_BATCH = 512
"""blocks per os.writev call (Linux IOV_MAX is 1024)"""


@dataclass(frozen=True)
class SaveResult:
    path: str
    tokens: int
    nbytes: int
    save_s: float


class DiskSpaceError(ValueError):
    """Too little free disk for a save (raised before anything is written)."""


def torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_save_target(directory: Path | str) -> None:
    """ContextFormatError when ``directory`` already holds a context (manifest.json) or is not a folder."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ContextFormatError(f"--save-kv {directory} exists and is not a folder")
    if (directory / MANIFEST_NAME).exists():
        raise ContextFormatError(f"--save-kv {directory} already holds a saved context; nothing is overwritten "
                                 "(remove it or choose another folder)")


def check_free_disk(directory: Path | str, needed_bytes: int, free_bytes: Optional[int] = None) -> None:
    """DiskSpaceError when the file system of ``directory`` (or its nearest existing parent) has less than
    ``needed_bytes`` free (``free_bytes`` overrides the measurement, for tests)."""
    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    free = free_bytes if free_bytes is not None else shutil.disk_usage(probe).free
    if needed_bytes > free:
        raise DiskSpaceError(f"--save-kv {directory}: the context needs {needed_bytes / GIB:.2f} GiB "
                             f"({needed_bytes} B) but {probe} has {free / GIB:.2f} GiB free")


def _numpy_bytes(block: torch.Tensor) -> np.ndarray:
    """A uint8 numpy view of a contiguous CPU tensor's bytes (no copy)."""
    return block.view(torch.uint8).reshape(-1).numpy()


def _piece_crcs(blocks: Sequence[np.ndarray], piece_bytes: int) -> list[int]:
    """CRC-32 of each ``piece_bytes`` piece of the concatenation of ``blocks`` (the file's bytes)."""
    crcs, crc, filled = [], 0, 0
    for block in blocks:
        view, pos = memoryview(block), 0
        while pos < len(view):
            take = min(piece_bytes - filled, len(view) - pos)
            crc, filled, pos = zlib.crc32(view[pos: pos + take], crc), filled + take, pos + take
            if filled == piece_bytes:
                crcs.append(crc)
                crc, filled = 0, 0
    if filled:
        crcs.append(crc)
    return crcs


def _write_all(fd: int, blocks: Sequence[np.ndarray]) -> None:
    """Write the blocks in order, batched through os.writev, retrying short writes."""
    for start in range(0, len(blocks), IOV_BATCH):
        pending = [memoryview(b) for b in blocks[start: start + IOV_BATCH] if b.size]
        while pending:
            written = os.writev(fd, pending)
            while pending and written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            if pending and written:
                pending[0] = pending[0][written:]


def _write_file(path: Path, blocks: Sequence[np.ndarray]) -> None:
    """NAME.tmp, written, fsync'ed, renamed to NAME."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, blocks)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _SegmentBlocks:
    """The blocks of one segment in file order; resident blocks copied to a reused bounce buffer."""

    def __init__(self, rows: KVRows):
        self.rows = rows
        self.resident_slots = 2 * sum(part.resident_heads for part in rows.layers)  # K and V rows
        self.bounce = torch.empty(0, dtype=rows.dtype)  # grown to one segment's resident bytes, then reused

    def blocks(self, first: int, tokens: int) -> list[np.ndarray]:
        rows, out = self.rows, []
        need = self.resident_slots * tokens * rows.head_dim
        if self.bounce.numel() < need:
            self.bounce = torch.empty(need, dtype=rows.dtype)
        offset = 0
        for layer in range(len(rows.layers)):
            for head in range(rows.kv_heads):
                for row in rows.rows(layer, head):
                    block = row[first: first + tokens]
                    if rows.is_resident(layer, head):  # GPU (or a CPU test store): a bounded copy to host
                        size = block.numel()
                        staged = self.bounce[offset: offset + size].view(block.shape)
                        staged.copy_(block)
                        block, offset = staged, offset + size
                    out.append(_numpy_bytes(block))
        return out


def save_context(rows: KVRows, token_ids: Sequence[int], directory: Path | str, fingerprint: ModelFingerprint, *,
                 segment_tokens: int = DEFAULT_SEGMENT_TOKENS, piece_bytes: int = DEFAULT_PIECE_BYTES,
                 progress: bool = True, synthetic_past_tokens: int = 0) -> SaveResult:
    """Write tokens [0, n) of ``rows`` (n = len(token_ids)) and the ids as a context in ``directory`` (module
    docstring). The stores must be idle (the run synchronised). ``synthetic_past_tokens`` N > 0: rows [0, N) are a
    timing probe's synthetic pattern, recorded in the manifest so that no normal load uses them (context_load.py)."""
    directory = Path(directory)
    check_save_target(directory)
    n = len(token_ids)
    if not 0 < n <= rows.capacity_tokens:
        raise ValueError(f"cannot save {n} tokens from stores of {rows.capacity_tokens}")
    if not 0 <= synthetic_past_tokens < n:
        raise ValueError(f"synthetic_past_tokens must be in [0, {n}), got {synthetic_past_tokens}")
    layout = KVFileLayout(num_layers=len(rows.layers), kv_heads=rows.kv_heads, head_dim=rows.head_dim)
    check_free_disk(directory, save_bytes_needed(n, layout, rows.dtype.itemsize))
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    start_s = time.perf_counter()
    try:
        segments = _write_segments(rows, n, directory, segment_tokens, piece_bytes, progress, written)
        ids = np.asarray(token_ids, dtype="<i4")
        written.append(directory / TOKENS_NAME)
        _write_file(directory / TOKENS_NAME, [ids.view(np.uint8)])
        save_s = time.perf_counter() - start_s
        manifest = ContextManifest(
            format_version=CONTEXT_FORMAT_VERSION, created=dt.datetime.now(dt.timezone.utc).isoformat(),
            model=fingerprint, dtype=torch_dtype_name(rows.dtype), layout=layout, token_count=n,
            segment_tokens=segment_tokens, checksum_piece_bytes=piece_bytes, tokens_nbytes=ids.nbytes,
            tokens_crc32=zlib.crc32(ids.tobytes()), kv_bytes=sum(s.nbytes for s in segments), segments=segments,
            save_s=save_s, synthetic_past_tokens=synthetic_past_tokens)
        written.append(directory / MANIFEST_NAME)
        _write_file(directory / MANIFEST_NAME, [np.frombuffer(manifest.model_dump_json(indent=1).encode(), np.uint8)])
        _fsync_dir(directory)
    except BaseException:
        for path in written:
            for leftover in (path, path.with_name(path.name + ".tmp")):
                leftover.unlink(missing_ok=True)
        raise
    return SaveResult(str(directory), n, manifest.kv_bytes, time.perf_counter() - start_s)


def _write_segments(rows: KVRows, n: int, directory: Path, segment_tokens: int, piece_bytes: int, progress: bool,
                    written: list[Path]) -> list[SegmentEntry]:
    """Every segment file, SAVE_WORKERS at once (each worker: gather its blocks, CRC them, write, fsync, rename)."""
    from tqdm import tqdm

    per_token = 2 * len(rows.layers) * rows.kv_heads * rows.head_dim * rows.dtype.itemsize
    starts = list(range(0, n, segment_tokens))
    written.extend(directory / segment_name(i) for i in range(len(starts)))
    workers = min(SAVE_WORKERS, len(starts), os.cpu_count() or 1)
    sources: queue.Queue = queue.Queue()
    for _ in range(workers):
        sources.put(_SegmentBlocks(rows))
    bar = tqdm(total=n * per_token, unit="B", unit_scale=True, desc="save KV", file=sys.stderr, disable=not progress)

    def write(index: int, first: int) -> SegmentEntry:
        tokens, source = min(segment_tokens, n - first), sources.get()
        try:
            blocks = source.blocks(first, tokens)
            crcs = _piece_crcs(blocks, piece_bytes)
            _write_file(directory / segment_name(index), blocks)
        finally:
            sources.put(source)
        bar.update(tokens * per_token)
        return SegmentEntry(index=index, first_token=first, tokens=tokens, file=segment_name(index),
                            nbytes=tokens * per_token, piece_crc32=crcs)

    with ThreadPoolExecutor(workers) as pool, bar:
        jobs = [pool.submit(write, index, first) for index, first in enumerate(starts)]
        try:
            return [job.result() for job in jobs]
        except BaseException:
            for job in jobs:
                job.cancel()
            raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ContextSaver:
    """settings.py KVSaver bound to a folder and the model's fingerprint: save_context(rows, prompt ids, ...)."""

    directory: Path
    fingerprint: ModelFingerprint
    segment_tokens: int = DEFAULT_SEGMENT_TOKENS
    progress: bool = True

    def __call__(self, rows: KVRows, prompt_ids: Sequence[int]) -> SaveResult:
        return save_context(rows, prompt_ids, self.directory, self.fingerprint, segment_tokens=self.segment_tokens,
                            progress=self.progress)


@dataclass(frozen=True)
class ProbeContextSaver:
    """A KVSaver for a timing probe's run (api.run_plan(..., tail_chunks=K), which runs only the prompt's tokens
    [N, n) over rows [0, N) of the synthetic pattern): saves all n rows under the whole prompt's ids, with the manifest's
    ``synthetic_past_tokens`` = N, so the bytes and the file layout are a real n-token context's (what a save and a
    load time) while no normal load accepts it. Benchmarks only: headplan run refuses --save-kv with --tail-chunks."""

    directory: Path
    fingerprint: ModelFingerprint
    prompt_ids: tuple[int, ...]
    synthetic_past_tokens: int
    segment_tokens: int = DEFAULT_SEGMENT_TOKENS
    progress: bool = True

    def __call__(self, rows: KVRows, run_ids: Sequence[int]) -> SaveResult:
        past = self.synthetic_past_tokens
        if list(run_ids) != list(self.prompt_ids[past:]):
            raise ValueError(f"the probe ran {len(run_ids)} tokens that are not the prompt's tokens after its "
                             f"synthetic {past}")
        return save_context(rows, self.prompt_ids, self.directory, self.fingerprint,
                            segment_tokens=self.segment_tokens, progress=self.progress, synthetic_past_tokens=past)
