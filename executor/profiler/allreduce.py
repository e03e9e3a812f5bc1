"""All-reduce time by size over the GPUs of this host (the collective of tensor parallelism: two per decoder layer,
planner/tensor_parallel.py allreduce_s), measured only where several GPUs are visible.

``measure_allreduce(ctx)``: one process per visible GPU (torch.multiprocessing spawn, NCCL), an in-place sum
all-reduce of a bf16 tensor of each size, a few warm-up calls, then ``repeats`` calls each timed by CUDA events on
rank 0 (after a barrier, so every rank enters together); the median per size. Returns the AllReducePoint dicts
(gpus, size_bytes, seconds, bus_bytes_per_s = 2 (N - 1) / N * size / seconds, nccl-tests' busbw).
``allreduce_points(ranks, device_type, sizes, repeats)`` is the same over gloo on the CPU (the structural test:
tests/cpu/test_profiler.py); a CPU figure is not a GPU one and the profiler never records it.
Leaves out: subsets of the GPUs (one table for all of them), other collectives, several hosts.
"""

from __future__ import annotations

import os
import pickle
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

SECTION = "allreduce"
SIZES_BYTES = tuple(1 << p for p in range(13, 29, 2))  # 8 KiB .. 128 MiB: a decode token's D x b to a chunk's
WARMUP_CALLS = 3
REPEATS = 10


def measure_allreduce(ctx) -> Optional[list[dict]]:
    """The table over every visible GPU, or None (with a note) where fewer than 2 are visible."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not ctx.on_gpu or visible < 2:
        ctx.note(f"all-reduce table skipped: {visible} GPU(s) visible (needs 2 or more)")
        return None
    sizes = SIZES_BYTES if ctx.preset.mode != "tiny" else SIZES_BYTES[:2]
    points = allreduce_points(visible, "cuda", sizes, REPEATS)
    ctx.progress(SECTION, f"{visible} GPUs", f"{points[-1]['bus_bytes_per_s'] / 1e9:.0f} GB/s bus at "
                 f"{points[-1]['size_bytes'] >> 20} MiB")
    return points


def allreduce_points(ranks: int, device_type: str, sizes: Sequence[int], repeats: int) -> list[dict]:
    """Median all-reduce seconds per size over ``ranks`` processes (NCCL on cuda:0..N-1, or gloo on the CPU)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="headplan-allreduce-") as folder:
        out = Path(folder) / "points.pkl"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.start_processes(_worker, args=(ranks, port, device_type, tuple(sizes), repeats, str(out)), nprocs=ranks,
                           start_method="spawn" if device_type == "cuda" else "fork")
        return pickle.loads(out.read_bytes())


def _worker(rank: int, ranks: int, port: int, device_type: str, sizes: tuple, repeats: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device_type == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=ranks)
    try:
        points = [_point(dist, ranks, device, size, repeats) for size in sizes]
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(points))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _point(dist, ranks: int, device: torch.device, size_bytes: int, repeats: int) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tensor = torch.ones(max(1, size_bytes // dtype.itemsize), dtype=dtype, device=device)
    for _ in range(WARMUP_CALLS):
        dist.all_reduce(tensor)
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        seconds.append(_timed_call(dist, tensor))
    median = statistics.median(seconds)
    nbytes = tensor.numel() * tensor.element_size()
    return {"gpus": ranks, "size_bytes": nbytes, "seconds": median,
            "bus_bytes_per_s": 2.0 * (ranks - 1) / ranks * nbytes / median, "dtype": str(dtype).removeprefix("torch.")}


def _timed_call(dist, tensor: torch.Tensor) -> float:
    if tensor.device.type != "cuda":
        start = time.perf_counter()
        dist.all_reduce(tensor)
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(tensor.device)
    start.record()
    dist.all_reduce(tensor)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0
