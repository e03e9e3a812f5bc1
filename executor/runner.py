"""Drive one head-offloaded run: chunked prefill, then greedy decode, through the unmodified transformers model.

``execute(model, input_ids, settings, new_tokens=..., device=...)`` builds the stores (host store first, after
checking host RAM), switches the model's attention implementation to the registered head-offloaded one, runs
prefill chunk by chunk with ``logits_to_keep=1`` and decode token by token (the next token stays on the GPU:
no host synchronisation in the loop; one optional sync per chunk, one chunk behind, feeds the progress bar),
and returns a Measurement built from events on the streams. The stores are released on every exit path; an
OOM or Ctrl-C becomes a faults.RunFault carrying the partial Measurement.
Leaves out: the report (report.py), the plan (api.py), sampling other than greedy.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from executor.attention_kernels import normalize_backend
from executor.faults import RunInterrupted, RunOutOfMemory, out_of_memory_message
from executor.kv_store import (EventRecorder, ExecutionSettings, GpuKVStore, HostKVStore, KVLayout, StreamSet)
from executor.offload_attention import ATTENTION_NAME, OffloadEngine, PhaseCounters
from executor.offload_cache import OffloadCache


@dataclass
class Measurement:
    """What a run measured (seconds, bytes). Partial runs fill what they reached."""

    prompt_tokens: int
    chunk_tokens: list[int] = field(default_factory=list)
    chunk_s: list[float] = field(default_factory=list)
    prefill_s: Optional[float] = None
    time_to_first_token_s: Optional[float] = None
    decode_s_per_token: Optional[float] = None
    decode_tokens_timed: int = 0
    generated_token_ids: list[int] = field(default_factory=list)
    layer_attention_s: dict[str, list[float]] = field(default_factory=dict)
    attention_s: dict[str, float] = field(default_factory=dict)
    counters: dict[str, PhaseCounters] = field(default_factory=dict)
    host_store_bytes: int = 0
    host_pin_s: float = 0.0
    gpu_store_bytes: dict[str, int] = field(default_factory=dict)
    gpu_peak_allocated_bytes: Optional[int] = None
    gpu_peak_reserved_bytes: Optional[int] = None
    gpu_process_used_bytes: Optional[int] = None
    gpu_outside_allocator_bytes: Optional[int] = None
    """driver-reported process use minus PyTorch's reserved memory at the end (CUDA context, workspaces)"""
    warmup_s: Optional[float] = None
    """wall time of the warm-up pass before the timed run (CUDA: module loading, library handles, first launches)"""
    trace_events: list[tuple[str, dict, float, str]] = field(default_factory=list)
    step_logits: Optional[torch.Tensor] = None
    """[steps, vocab] float32 on CPU: logits of the last position of prefill and of each decode step"""


def layout_for(model, settings: ExecutionSettings) -> KVLayout:
    """KVLayout from a transformers Llama-family config."""
    config = model.config
    query_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or query_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // query_heads
    return KVLayout.build(num_layers=config.num_hidden_layers, kv_heads=kv_heads, query_heads=query_heads,
                          head_dim=head_dim, settings=settings)


@contextlib.contextmanager
def offload_attention_selected(model):
    """Select the registered head-offloaded attention for the duration; restore the previous one after."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@dataclass
class _Run:
    model: object
    engine: OffloadEngine
    cache: OffloadCache
    recorder: EventRecorder
    device: torch.device
    on_chunk: Optional[Callable[[int], None]]
    keep_logits: bool
    generated: list = field(default_factory=list)
    logits: list = field(default_factory=list)

    def forward(self, ids: torch.Tensor, *, phase: str, index: int, logits_to_keep: int, more: bool,
                more_prefill: bool = False):
        self.engine.position.phase, self.engine.position.chunk, self.engine.position.layer = phase, index, None
        self.engine.more_forwards = more
        self.engine.next_phase = "prefill" if more_prefill else "decode"
        out = self.model(ids, past_key_values=self.cache, use_cache=True, logits_to_keep=logits_to_keep,
                         headplan_cache=self.cache)
        last = out.logits[:, -1, :]
        if self.keep_logits and not (phase == "prefill" and more_prefill):
            self.logits.append(last.float()[0])
        return last.argmax(-1, keepdim=True)  # [1, 1] on the device: no host sync

    def prefill(self, input_ids: torch.Tensor, chunk_size: int, new_tokens: int) -> torch.Tensor:
        prompt_tokens, next_ids = input_ids.shape[1], None
        starts = list(range(0, prompt_tokens, chunk_size))
        for index, start in enumerate(starts):
            chunk = input_ids[:, start: start + chunk_size]
            self.recorder.mark("chunk_start", phase="prefill", chunk=index, tokens=chunk.shape[1])
            more = index + 1 < len(starts) or new_tokens > 1
            next_ids = self.forward(chunk, phase="prefill", index=index, logits_to_keep=1, more=more,
                                    more_prefill=index + 1 < len(starts))
            self.recorder.mark("chunk_end", phase="prefill", chunk=index, tokens=chunk.shape[1])
            if self.on_chunk is not None:
                self._progress(index)
        self.recorder.mark("first_token", phase="prefill")
        if self.on_chunk is not None:
            self.on_chunk(len(starts) - 1)
        self.generated.append(next_ids)
        return next_ids

    def _progress(self, index: int) -> None:
        """Report chunk index - 1 as done once its end event passed (the GPU keeps chunk ``index`` queued)."""
        if index == 0:
            return
        if self.device.type == "cuda":
            ends = [m for m in self.recorder.marks if m.name == "chunk_end"]
            ends[-2].event.synchronize()
        self.on_chunk(index - 1)

    def decode(self, next_ids: torch.Tensor, new_tokens: int) -> None:
        for step in range(1, new_tokens):
            self.recorder.mark("token_start", phase="decode", chunk=step)
            next_ids = self.forward(next_ids, phase="decode", index=step, logits_to_keep=1,
                                    more=step + 1 < new_tokens)
            self.recorder.mark("token_end", phase="decode", chunk=step)
            self.generated.append(next_ids)


def execute(model, input_ids: torch.Tensor, settings: ExecutionSettings, *, new_tokens: int,
            device: torch.device | str, trace: bool = False, keep_logits: bool = False,
            on_chunk: Optional[Callable[[int], None]] = None,
            host_available_bytes: Optional[int] = None, sync_debug: bool = False,
            warmup: Optional[bool] = None) -> Measurement:
    """Run prefill of ``input_ids`` [1, n] and ``new_tokens`` greedy tokens; return the Measurement.

    ``sync_debug`` (CUDA, tests): the prefill and decode loops run under torch.cuda.set_sync_debug_mode("error"),
    so any host synchronisation or pageable copy inside them raises.
    """
    device = torch.device(device)
    prompt_tokens = input_ids.shape[1]
    if new_tokens < 1:
        raise ValueError("new_tokens must be at least 1")
    if settings.capacity_tokens < prompt_tokens + new_tokens - 1:
        raise ValueError(f"capacity {settings.capacity_tokens} tokens < prompt {prompt_tokens} + "
                         f"{new_tokens - 1} decoded tokens")
    layout = layout_for(model, settings)
    dtype = next(model.parameters()).dtype
    measurement = Measurement(prompt_tokens=prompt_tokens)
    if warmup if warmup is not None else device.type == "cuda":  # default: warm up on CUDA only
        measurement.warmup_s = warm_up(model, input_ids, settings, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    host = HostKVStore(layout, dtype, pin=device.type == "cuda", available_bytes=host_available_bytes)
    run = None
    try:
        run = _build_run(model, layout, host, settings, device, trace, keep_logits, on_chunk, measurement)
        input_ids = input_ids.to(device)  # the prompt's one pageable copy, before the loop's no-sync region
        with torch.inference_mode(), offload_attention_selected(model), _sync_guard(device, sync_debug):
            next_ids = run.prefill(input_ids, settings.chunk_size, new_tokens)
            run.decode(next_ids, new_tokens)
        _finish(run, measurement)
    except torch.OutOfMemoryError as exc:
        where = run.engine.position.describe() if run else "setup (allocating the GPU KV store)"
        _finish_partial(run, measurement)
        raise RunOutOfMemory(out_of_memory_message(where, None, str(exc)), measurement) from None
    except KeyboardInterrupt:
        where = run.engine.position.describe() if run else "setup"
        _finish_partial(run, measurement)
        raise RunInterrupted(f"interrupted at {where}", measurement) from None
    finally:
        if run is not None:
            run.engine.gpu.close()
        host.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return measurement


WARMUP_CHUNK_TOKENS = 32
WARMUP_PROMPT_TOKENS = 96


def warm_up(model, input_ids: torch.Tensor, settings: ExecutionSettings, device: torch.device) -> float:
    """One tiny run through the same engine path (same head groups and resident layout, a 96-token prompt in
    32-token chunks, 2 new tokens), so the timed run does not pay the process's one-time costs: CUDA module
    loading, cuBLAS / cuDNN handles, first launches of each kernel. Returns its wall seconds (reported as
    ``warmup_s``, not hidden). Shape-specific costs (cuDNN graphs of the real block sizes) stay in the run."""
    import dataclasses

    start_s = time.perf_counter()
    tiny = dataclasses.replace(settings, chunk_size=WARMUP_CHUNK_TOKENS,
                               capacity_tokens=WARMUP_PROMPT_TOKENS + 2)
    execute(model, input_ids[:, :WARMUP_PROMPT_TOKENS], tiny, new_tokens=2, device=device, warmup=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start_s


@contextlib.contextmanager
def _sync_guard(device: torch.device, enabled: bool):
    if not (enabled and device.type == "cuda"):
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _build_run(model, layout, host, settings, device, trace, keep_logits, on_chunk, measurement) -> _Run:
    dtype_bytes = host.keys[0].element_size() if host.keys else 2
    measurement.host_store_bytes, measurement.host_pin_s = host.nbytes, host.pin_s
    measurement.gpu_store_bytes = {"resident": layout.resident_bytes(dtype_bytes),
                                   "ping_pong": layout.slot_bytes(dtype_bytes)}
    streams = StreamSet(device, layout.num_layers)
    recorder = EventRecorder(device=device, streams=streams)
    gpu = GpuKVStore(layout, host.dtype, device)
    backend = normalize_backend(settings.attention_backend)
    engine = OffloadEngine(layout=layout, host=host, gpu=gpu, streams=streams, backend=backend,
                           decode_backend="math" if backend == "math" else "flash", recorder=recorder, trace=trace)
    cache = OffloadCache(layout.num_layers, settings.capacity_tokens, engine=engine)
    return _Run(model=model, engine=engine, cache=cache, recorder=recorder, device=device, on_chunk=on_chunk,
                keep_logits=keep_logits)


def _finish(run: _Run, measurement: Measurement) -> None:
    """Resolve the events (one synchronize) into the Measurement."""
    events = run.recorder.resolve()
    _fill_times(events, measurement)
    measurement.counters = dict(run.engine.counters)
    if run.generated:
        measurement.generated_token_ids = [int(x) for x in torch.cat(run.generated, dim=1)[0].tolist()]
    if run.logits:
        measurement.step_logits = torch.stack(run.logits).cpu()
    if run.device.type == "cuda":
        measurement.gpu_peak_allocated_bytes = torch.cuda.max_memory_allocated(run.device)
        measurement.gpu_peak_reserved_bytes = torch.cuda.max_memory_reserved(run.device)
        measurement.gpu_process_used_bytes = process_gpu_used_bytes(run.device)
        measurement.gpu_outside_allocator_bytes = max(
            0, measurement.gpu_process_used_bytes - torch.cuda.memory_reserved(run.device))


def _finish_partial(run: Optional[_Run], measurement: Measurement) -> None:
    if run is None:
        return
    try:
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        _finish(run, measurement)
    except Exception:  # the partial report must not hide the original fault
        pass


def _fill_times(events, measurement: Measurement) -> None:
    starts: dict = {}
    layer_attention: dict[str, list[float]] = {}
    first_chunk_ms = token_first_ms = token_last_ms = None
    for name, meta, ms, lane in events:
        phase = meta.get("phase")
        if name == "chunk_start":
            starts[meta["chunk"]] = ms
            first_chunk_ms = ms if first_chunk_ms is None else first_chunk_ms
        elif name == "chunk_end":
            measurement.chunk_s.append((ms - starts[meta["chunk"]]) / 1000.0)
            measurement.chunk_tokens.append(meta["tokens"])
            measurement.prefill_s = (ms - first_chunk_ms) / 1000.0
        elif name == "first_token":
            measurement.time_to_first_token_s = (ms - first_chunk_ms) / 1000.0
        elif name == "token_start":
            token_first_ms = ms if token_first_ms is None else token_first_ms
        elif name == "token_end":
            token_last_ms = ms
            measurement.decode_tokens_timed += 1
        elif name == "attn_start":
            starts[("attn", phase, meta["chunk"], meta["layer"])] = ms
        elif name == "attn_end":
            seconds = (ms - starts[("attn", phase, meta["chunk"], meta["layer"])]) / 1000.0
            layer_attention.setdefault(phase, []).append(seconds)
    if token_last_ms is not None and measurement.decode_tokens_timed:
        measurement.decode_s_per_token = (token_last_ms - token_first_ms) / 1000.0 / measurement.decode_tokens_timed
    measurement.layer_attention_s = layer_attention
    measurement.attention_s = {phase: sum(values) for phase, values in layer_attention.items()}
    measurement.trace_events = [e for e in events if e[0] in ("group_start", "group_end", "h2d_start", "h2d_end",
                                                               "d2h_start", "d2h_end", "attn_start", "attn_end")]


def process_gpu_used_bytes(device: torch.device) -> Optional[int]:
    """This process's GPU memory as the driver reports it (NVML), else total - free of the device."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        import os

        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
    except Exception:
        pass
    free, total = torch.cuda.mem_get_info(device)
    return int(total - free)


def apply_gpu_budget(budget_bytes: int, runtime_overhead_bytes: int, device: torch.device | str) -> float:
    """Cap this process's PyTorch allocations at budget - runtime overhead (a 24 GB budget on an 80 GB card
    behaves like a 24 GB card). Returns the fraction set."""
    device = torch.device(device)
    if device.index is None:  # set_per_process_memory_fraction needs an index ("cuda" alone is refused)
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    usable = budget_bytes - runtime_overhead_bytes
    if usable <= 0:
        raise ValueError(f"GPU budget {budget_bytes} B is below the runtime overhead {runtime_overhead_bytes} B")
    fraction = min(1.0, usable / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
