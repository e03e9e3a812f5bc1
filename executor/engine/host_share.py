"""HostShare: the CPU's share of a decode token's attention over the offloaded heads, beside the streamed share.

In decode (c = 1) at past s, with share F (ExecutionSettings.cpu_share), each offloaded KV head of layer l splits
its past by token range:
    host share   [0, s_h)      s_h = floor(F s): attended on the CPU where the rows lie (attention/host_attention.py)
    GPU share    [s_h, s + 1)  fetched over PCIe into the ping-pong slot (rows [0, s - s_h)) plus the new token
and the two partial results merge by log-sum-exp in float32 (attention/lse.py merge_by_lse). Exact: the same
softmax over the same keys, reordered. PCIe bytes fall by the factor (1 - F).

Per layer, with no host synchronisation on the main thread (nor, with the stream wait, any wait for the worker):
  1. submit (after the layer's write-back, on the d2h stream): the offloaded heads' query rows
     [r_l q, H_kv q) go to a pinned buffer (non-blocking copy) and an event is recorded after it; the event also
     orders every earlier write-back of host rows, since they are queued on the same stream before it;
  2. a persistent worker thread waits on that event and runs the layer's whole host job (attention/host_job.py:
     the kernel over the host rows [0, s_h) in key blocks, their merge, out [rows, d] and lse [rows] float32 into
     the pinned buffers) as ONE TorchScript call, which holds no GIL between its ATen ops, so the main thread's
     Python beside it does not stall it (the block count and the views are made on the main thread in submit);
  3. meanwhile the main thread queues the GPU share's groups (attention with lse into layer buffers);
  4. collect: the compute stream waits until the job has published its number to a pinned counter
     (runtime/stream_wait.py, cuStreamWaitValue32), then copies out and lse to the device (non-blocking) for the
     merge; the main thread goes on issuing without waiting. Where there is no stream wait (a CPU device,
     HEADPLAN_HOST_WAIT=join, a driver without it) collect joins the worker instead (``hand_off`` "join").
The pinned buffers are reused every layer: the worker writes layer l + 1's result only after its query event,
which follows layer l's merge (and so the copy reading the buffers) on the compute stream; the query buffer is
rewritten for layer l + 1 only after that merge, which waits for job l. Each job has its own query event: with the
stream wait the main thread may submit job l + 1 before job l started.
On a CPU device the same code runs: the copies are plain, the event is absent, and the "GPU" share is the math
path on the CPU, run by the main thread while the worker computes.
Timeline per layer (HostShareTiming, summed into the run report's host_share block): start_delay_s from the later
of the end of submit and the previous job's end to the job's start (worker wake-up, the event wait for the query,
re-taking the GIL: the worker idle), kernel_s the job itself, join_wait_s the main thread's wait in collect (0 with
the stream wait, whose timelines take_timings collects as the jobs finish).
Leaves out: prefill (its chunk's queries see every key; streaming is compute-bound there).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import NamedTuple, Optional

import torch

from executor.attention.host_job import host_job
from executor.kv.host_store import HostKVStore
from executor.kv.layout import KVLayout
from executor.runtime.stream_wait import HostCounter
from planner.host_share import key_blocks


def host_tokens(share: float, past_tokens: int) -> int:
    """s_h = floor(F s): the leading past tokens each offloaded head attends on the host."""
    return min(past_tokens, int(share * past_tokens))


def default_host_threads() -> int:
    """The kernel's threads when none are given: the cores this process may use less one, and at most torch's
    intra-op count. The main thread issues the GPU's work (the streamed share's fetches, the next layer) while the
    kernel runs; with every core in the kernel it shares a core with one kernel thread, and ATen's static split
    makes the whole call wait for that thread (on the H200, 2026-12-01, 16 threads on 16 cores: the kernel read
    32-41 GB/s in the runs against 49 in the profile). planner/host_share.py run_host_threads prices this count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - 1))


def stream_counter(device: torch.device) -> Optional[HostCounter]:
    """The counter the device's stream waits on for each job (runtime/stream_wait.py), None where the main thread
    joins instead (a CPU device; a machine without the stream wait; HEADPLAN_HOST_WAIT=join)."""
    return HostCounter.create() if device.type == "cuda" else None


class HostShareTiming(NamedTuple):
    """One layer's host-share timeline, host clock (time.perf_counter), seconds."""

    start_delay_s: float
    """the later of the end of submit and the previous job's end -> the job's start: the worker's wake-up, its wait
    on the query event, re-taking the GIL"""
    kernel_s: float
    """the job: kernel calls, merge and the writes into the pinned buffers"""
    join_wait_s: float
    """the main thread's wait for the job's result in collect"""


class _Worker:
    """One persistent thread running submitted jobs in order; exceptions come back to the caller of result().
    ``warm_up`` runs on the thread before its first job (the scripted job's first calls profile and optimise its
    graph, ~25 ms on the development VM: off the decode's first token)."""

    def __init__(self, threads: Optional[int], warm_up=None):
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._threads, self._warm_up = threads, warm_up
        self._thread = threading.Thread(target=self._loop, name="headplan-host-attention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)   # this thread's own OpenMP team (the main thread keeps its own)
        if self._warm_up is not None:
            try:
                with torch.inference_mode():
                    self._warm_up()
            except Exception:  # noqa: BLE001 - a failing warm-up fails the first real job the same way, reported
                pass
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                with torch.inference_mode():
                    self._results.put((job(), None))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                self._results.put((None, exc))

    def submit(self, job) -> None:
        self._jobs.put(job)

    def has_result(self) -> bool:
        return not self._results.empty()

    def result(self):
        value, error = self._results.get()
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)


class HostShare:
    """Pinned hand-off buffers, the worker and the per-layer submit / collect of the host share."""

    def __init__(self, layout: KVLayout, host: HostKVStore, *, share: float, device: torch.device,
                 threads: Optional[int] = None):
        self.layout, self.host, self.share, self.device = layout, host, share, device
        self.threads = threads if threads is not None else default_host_threads()
        ratio = layout.query_heads // layout.kv_heads
        rows = max(layout.offloaded_per_layer, default=0) * ratio
        pin = device.type == "cuda"
        self.query = torch.empty((rows, layout.head_dim), dtype=host.dtype, pin_memory=pin)
        self.out = torch.empty((rows, layout.head_dim), dtype=torch.float32, pin_memory=pin)
        self.lse = torch.empty((rows,), dtype=torch.float32, pin_memory=pin)
        self.counter = stream_counter(device)
        """where set, the GPU waits for each job on the stream (runtime/stream_wait.py) and nobody joins"""
        self.job = job = host_job()
        dtype, head_dim = host.dtype, layout.head_dim
        # the worker's team is the thread count the blocks are cut for (key_blocks in submit)
        self._worker = _Worker(self.threads, warm_up=lambda: _warm_up(job, dtype, head_dim))
        self._ticket = 0
        """jobs submitted so far; job n publishes n to the counter when done"""
        self._pending = 0
        """jobs submitted whose results (timings or faults) were not taken yet"""
        self._last_end = 0.0
        """the previous job's end (host clock), for the start delay"""

    @property
    def hand_off(self) -> str:
        """"stream": the GPU waits for each job on the stream; "join": the main thread joins the worker every layer
        (no stream wait: a CPU device, HEADPLAN_HOST_WAIT=join, or a driver without it). The run report's
        host_share.hand_off."""
        return "join" if self.counter is None else "stream"

    def tokens(self, past_tokens: int) -> int:
        return host_tokens(self.share, past_tokens)

    def submit(self, layer: int, query: torch.Tensor, past_tokens: int, streams, *, scale: float) -> int:
        """Queue layer ``layer``'s host share for q [1, H_q, 1, d] at past s; returns its key count s_h.
        Call on the main thread right after the layer's write-back (same d2h stream)."""
        resident = self.layout.resident_per_layer[layer]
        ratio = self.layout.query_heads // self.layout.kv_heads
        heads = self.layout.kv_heads - resident
        rows = heads * ratio
        key_tokens = self.tokens(past_tokens)
        source = query[0, resident * ratio:, 0, :]                       # [rows, d], strided view
        # an event per job: with the stream wait the main thread may submit layer l + 1 before job l started, and a
        # re-recorded event would make job l wait for a query that itself waits for job l
        event = torch.cuda.Event() if streams.cuda else None
        with streams.on(streams.d2h):
            streams.wait(streams.d2h, streams.chunk_ready)
            self.query[:rows].copy_(source, non_blocking=True)
            if event is not None:
                event.record(streams.d2h)
        if streams.cuda:
            query.record_stream(streams.d2h)
        run, counter = self.job.run, self.counter
        keys, values = self.host.keys[layer][:, :key_tokens], self.host.values[layer][:, :key_tokens]
        query_rows = self.query[:rows].view(heads, ratio, self.layout.head_dim)
        out_rows, lse_rows = self.out[:rows], self.lse[:rows]
        blocks = key_blocks(key_tokens, heads, self.threads)
        self._ticket += 1
        ticket = self._ticket

        def job() -> tuple[float, float, float]:
            try:
                if event is not None:
                    event.synchronize()  # the query is in the buffer and the host rows [0, s) are written
                start = time.perf_counter()
                run(query_rows, keys, values, blocks, scale, out_rows, lse_rows)   # one call, GIL released inside
                return submitted_at, start, time.perf_counter()
            finally:
                if counter is not None:
                    counter.publish(ticket)   # even after a fault: the stream must not wait forever

        self._pending += 1
        submitted_at = time.perf_counter()
        self._worker.submit(job)
        return key_tokens

    def collect(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, Optional[HostShareTiming]]:
        """Layer ``layer``'s host share: (out [1, rows, 1, d] float32, lse [1, rows, 1] float32) on the device,
        copied non-blocking on the current stream, and the layer's timeline (HostShareTiming).
        With the stream wait (``hand_off`` "stream") the current stream waits for the job and the copies follow; the
        host does not wait, and the timeline is None (``take_timings`` returns it later). Else the main thread
        joins the worker here."""
        timing = None
        if self.counter is not None:
            self.counter.wait_current(self.device, self._ticket)
        else:
            join_start = time.perf_counter()
            timing = self._timing(self._take(), join_wait_s=time.perf_counter() - join_start)
        rows = (self.layout.kv_heads - self.layout.resident_per_layer[layer]) * (
            self.layout.query_heads // self.layout.kv_heads)
        out = self.out[:rows].to(self.device, non_blocking=True)
        lse = self.lse[:rows].to(self.device, non_blocking=True)
        if self.device.type == "cpu":  # the pinned buffers are reused by the next layer: keep our own copy
            out, lse = out.clone(), lse.clone()
        return out[None, :, None, :], lse[None, :, None], timing

    def _take(self) -> tuple[float, float, float]:
        """The oldest job's (submitted, start, end), waiting for it; its fault is raised here."""
        self._pending -= 1   # taken, whatever it holds
        try:
            return self._worker.result()
        except BaseException:
            self._last_end = time.perf_counter()
            raise

    def _timing(self, times: tuple[float, float, float], join_wait_s: float = 0.0) -> HostShareTiming:
        """A job's timeline from its (submitted, start, end), in job order: the start delay counts from the later of
        its submit and the previous job's end (with the stream wait the host submits ahead, and the time queued
        behind the previous job is the worker busy, not waiting)."""
        submitted, start, end = times
        ready = max(submitted, self._last_end)
        self._last_end = end
        return HostShareTiming(start_delay_s=max(0.0, start - ready), kernel_s=end - start, join_wait_s=join_wait_s)

    def take_timings(self, wait: bool = False) -> list[HostShareTiming]:
        """The timelines of the jobs done since the last call (the stream-wait path's; with ``wait``, of every
        job submitted, waiting for them). A job's fault is raised here, on the main thread."""
        timings = []
        while self._pending and (wait or self._worker.has_result()):
            timings.append(self._timing(self._take()))
        return timings

    def close(self) -> None:
        while self._pending:
            try:
                self._take()
            except BaseException:  # noqa: BLE001 - closing after a fault: the fault is already on its way
                pass
        self._worker.close()
        if self.counter is not None:
            self.counter.release(self.device)


def _warm_up(job, dtype: torch.dtype, head_dim: int) -> None:
    """Two calls of the job on 2 heads x 33 keys (a block and a remainder): TorchScript's profiling executor
    optimises the graph after its first runs, and the later calls at other key lengths reuse it."""
    query = torch.zeros((2, 1, head_dim), dtype=dtype)
    keys = torch.zeros((2, 33, head_dim), dtype=dtype)
    out, lse = torch.empty((2, head_dim)), torch.empty((2,))
    for _ in range(2):
        job.run(query, keys, keys, 2, 1.0, out, lse)
