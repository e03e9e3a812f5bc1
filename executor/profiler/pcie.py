"""Host <-> GPU copy bandwidth by transfer size, host memory kind and concurrency (TransferPoint table).

Host buffers (one of the largest size per kind, sliced per transfer; random bytes):
- ``pinned``: ``torch.empty(n, pin_memory=True)``; ``registered``: empty + touch + cudaHostRegister (the
  executor's KV store); ``pageable``: plain ``torch.empty``.
Measured, each a single contiguous ``copy_`` timed with CUDA events on the stream that runs it:
- h2d and d2h for every kind and size (pinned/registered copies are ``non_blocking``: the async DMA path);
- ``bidir``: h2d and d2h of the same size at once on two streams (pinned); bytes_per_s is the total of
  both directions (2 n / time), like ``pcie_bidir_total_bytes_per_s``;
- contention: pinned h2d on a copy stream while bf16 matmuls run on the compute stream, enough of them to
  outlast the copy (concurrent_with="matmul").
Leaves out: device-to-device copies (hbm.py) and the cost of pinning (pinning.py).
"""

from __future__ import annotations

import torch

from executor.profiler.context import ProfileContext
from executor.profiler.host import read_meminfo, touch_pages
from executor.profiler.pinning import HostRegisterError, empty_host_cache, register_host, unregister_host
from hwprofiles.schema import TransferPoint
from planner.units import MIB

PAGEABLE_REPEATS = 3  # pageable copies of 1 GiB take ~70 ms each: fewer repeats keep the mode's time bound


def _size_label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // 1024} KiB"


def _host_buffers(ctx: ProfileContext, nbytes: int, source: torch.Tensor) -> dict[str, torch.Tensor]:
    """One host buffer of ``nbytes`` per kind, filled with the random device bytes in ``source``."""
    buffers = {"pinned": torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)}
    registered = torch.empty(nbytes, dtype=torch.uint8)
    touch_pages(registered)
    try:
        register_host(registered)
        buffers["registered"] = registered
    except HostRegisterError as exc:
        ctx.note(f"registered host memory not profiled: {exc}")
    buffers["pageable"] = torch.empty(nbytes, dtype=torch.uint8)
    for buffer in buffers.values():
        buffer.copy_(source[:nbytes])
    return buffers


def _point(ctx: ProfileContext, direction: str, kind: str, nbytes: int, fn, *, stream=None,
           concurrent_with: str = "none", moved_bytes: int | None = None) -> TransferPoint:
    repeats = PAGEABLE_REPEATS if kind == "pageable" and nbytes >= 64 * MIB else None
    stats = ctx.time(fn, repeats=repeats, stream=stream)
    rate = stats.rate(moved_bytes or nbytes)
    extra = f" during {concurrent_with}" if concurrent_with != "none" else ""
    ctx.progress("pcie", f"{direction} {kind} {_size_label(nbytes)}{extra}", f"{rate / 1e9:.1f} GB/s", stats)
    return TransferPoint(direction=direction, host_memory=kind, size_bytes=nbytes, bytes_per_s=rate,
                         concurrent_with=concurrent_with, spread_rel=stats.spread_rel)


def _one_way(ctx: ProfileContext, device_buffer: torch.Tensor, host: dict[str, torch.Tensor]) -> list[TransferPoint]:
    points = []
    for kind, buffer in host.items():
        asynchronous = kind != "pageable"
        for nbytes in ctx.preset.transfer_sizes:
            dev, hst = device_buffer[:nbytes], buffer[:nbytes]
            points.append(_point(ctx, "h2d", kind, nbytes, lambda d=dev, h=hst: d.copy_(h, non_blocking=asynchronous)))
            points.append(_point(ctx, "d2h", kind, nbytes, lambda d=dev, h=hst: h.copy_(d, non_blocking=asynchronous)))
    return points


def _bidirectional(ctx: ProfileContext, device_buffers: list[torch.Tensor], host_in: torch.Tensor,
                   host_out: torch.Tensor) -> list[TransferPoint]:
    streams = [torch.cuda.Stream(ctx.device), torch.cuda.Stream(ctx.device)]
    points = []
    for nbytes in ctx.preset.bidir_sizes:
        def both_ways(n=nbytes) -> None:
            current = torch.cuda.current_stream(ctx.device)
            for stream in streams:
                stream.wait_stream(current)  # start after the start event
            with torch.cuda.stream(streams[0]):
                device_buffers[0][:n].copy_(host_in[:n], non_blocking=True)
            with torch.cuda.stream(streams[1]):
                host_out[:n].copy_(device_buffers[1][:n], non_blocking=True)
            for stream in streams:
                current.wait_stream(stream)  # the end event waits for both

        points.append(_point(ctx, "bidir", "pinned", nbytes, both_ways, moved_bytes=2 * nbytes))
    return points


def _contended(ctx: ProfileContext, device_buffer: torch.Tensor, host_in: torch.Tensor,
               h2d_rates: dict[int, float]) -> list[TransferPoint]:
    dtype = torch.bfloat16
    side = 4096
    a, b = ctx.randn(side, side, dtype=dtype), ctx.randn(side, side, dtype=dtype)
    matmul_s = ctx.time(lambda: a @ b).median_s
    copy_stream = torch.cuda.Stream(ctx.device)
    points = []
    for nbytes in ctx.preset.contention_sizes:
        alone_s = nbytes / h2d_rates.get(nbytes, 1e9)
        matmul_count = int(2 * alone_s / matmul_s) + 2  # compute outlasts the copy even if it slows down

        def copy_under_matmul(n=nbytes, count=matmul_count) -> None:
            for _ in range(count):
                torch.matmul(a, b)
            with torch.cuda.stream(copy_stream):
                device_buffer[:n].copy_(host_in[:n], non_blocking=True)

        points.append(_point(ctx, "h2d", "pinned", nbytes, copy_under_matmul, stream=copy_stream,
                             concurrent_with="matmul"))
    return points


def measure_pcie(ctx: ProfileContext) -> list[TransferPoint]:
    """The transfer table (see the module docstring). GPU only."""
    sizes = set(ctx.preset.transfer_sizes) | set(ctx.preset.bidir_sizes) | set(ctx.preset.contention_sizes)
    nbytes = max(sizes)
    available_bytes = read_meminfo()["available_bytes"]
    if 4 * nbytes > available_bytes // 2 or not ctx.fits(2 * nbytes):
        ctx.note(f"PCIe transfers capped below {_size_label(nbytes)}: host or device memory")
        while nbytes > MIB and (4 * nbytes > available_bytes // 2 or not ctx.fits(2 * nbytes)):
            nbytes //= 2
    device_buffers = [ctx.random_bytes(nbytes), ctx.random_bytes(nbytes)]
    host = _host_buffers(ctx, nbytes, device_buffers[0])
    host_out = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    original = ctx.preset
    try:
        ctx.preset = _capped(original, nbytes)
        points = _one_way(ctx, device_buffers[0], host)
        h2d_pinned = {p.size_bytes: p.bytes_per_s for p in points if p.direction == "h2d" and p.host_memory == "pinned"}
        points += _bidirectional(ctx, device_buffers, host["pinned"], host_out)
        points += _contended(ctx, device_buffers[0], host["pinned"], h2d_pinned)
    finally:
        ctx.preset = original
        torch.cuda.synchronize(ctx.device)
        if "registered" in host:
            unregister_host(host["registered"])
        del host, host_out, device_buffers
        empty_host_cache()
        ctx.free_memory()
    return points


def _capped(preset, max_bytes: int):
    """The preset with every transfer size above ``max_bytes`` dropped."""
    from dataclasses import replace

    return replace(
        preset,
        transfer_sizes=tuple(n for n in preset.transfer_sizes if n <= max_bytes),
        bidir_sizes=tuple(n for n in preset.bidir_sizes if n <= max_bytes),
        contention_sizes=tuple(n for n in preset.contention_sizes if n <= max_bytes),
    )
