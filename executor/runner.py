"""Drive one head-offloaded run: chunked prefill, then greedy decode, through the unmodified transformers model.

``execute(model, input_ids, settings, new_tokens=..., device=...)`` builds the stores (host store first, after
checking host RAM), switches the model's attention implementation to the registered head-offloaded one, runs
prefill chunk by chunk with ``logits_to_keep=1`` and decode token by token (the next token stays on the GPU:
no host synchronisation in the loop; one optional sync per chunk, one chunk behind, feeds the progress bar;
with every KV head resident on one device each decode token is one replay of a CUDA graph: decode_graph.py),
and returns a Measurement (measurement.py) built from events on the streams, with the host's own time per decode
token. The stores are released on every exit path; an OOM or Ctrl-C becomes a faults.RunFault carrying the
partial Measurement.
A timing probe (``synthetic_past_tokens=N``, headplan run --tail-chunks): the stores' rows [0, N) are zero-filled
and the cache counts N tokens before the prefill, so ``input_ids`` run at positions [N, N + n) against a full-length
past that was never computed: time and memory are the full context's, the outputs are not the model's.
Leaves out: the report (report.py), the plan (api.py), sampling other than greedy.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from executor.attention_kernels import normalize_backend
from executor.decode_graph import StaticDecode, static_decode_applies
from executor.faults import RunInterrupted, RunOutOfMemory, out_of_memory_message
from executor.kv_store import EventRecorder, ExecutionSettings
from executor.measurement import Measurement, StageMeasurement, fill_stage_busy, fill_times
from executor.offload_attention import ATTENTION_NAME
from executor.offload_cache import OffloadCache
from executor.staged_engine import StagedEngine, StageParts, allocate_host_stores, build_staged_engine
from executor.stages import DeviceStage, check_stages, single_stage


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
    engine: StagedEngine
    cache: OffloadCache
    recorder: EventRecorder
    device: torch.device
    on_chunk: Optional[Callable[[int], None]]
    keep_logits: bool
    generated: list = field(default_factory=list)
    logits: list = field(default_factory=list)
    hooks: list = field(default_factory=list)
    host_s: list = field(default_factory=list)
    """per decode token, the host's time issuing it (seconds)"""
    static_decode: bool = False
    """decode through the static step (decode_graph.py), captured as a CUDA graph on a GPU"""
    static: Optional[StaticDecode] = None

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
        if self.static_decode and new_tokens > 1:
            return self._decode_static(next_ids, new_tokens)
        for step in range(1, new_tokens):
            issued_s = time.perf_counter()
            self.recorder.mark("token_start", phase="decode", chunk=step)
            next_ids = self.forward(next_ids, phase="decode", index=step, logits_to_keep=1,
                                    more=step + 1 < new_tokens)
            self.recorder.mark("token_end", phase="decode", chunk=step)
            self.host_s.append(time.perf_counter() - issued_s)
            self.generated.append(next_ids)

    def _decode_static(self, next_ids: torch.Tensor, new_tokens: int) -> None:
        """Tokens 1 .. new_tokens - 1 through StaticDecode: set up (capture) first, untimed, then one step each."""
        position = self.engine.position
        position.phase, position.chunk, position.layer = "decode", 1, None
        self.engine.more_forwards = False
        self.static = StaticDecode(self, next_ids, prompt_tokens=self.cache.get_seq_length())
        self.static.prepare()
        for step in range(1, new_tokens):
            issued_s = time.perf_counter()
            position.chunk = step
            self.recorder.mark("token_start", phase="decode", chunk=step)
            self.static.step()
            self.recorder.mark("token_end", phase="decode", chunk=step)
            self.host_s.append(time.perf_counter() - issued_s)
            self.generated.append(self.static.ids.clone())
            if self.keep_logits:
                self.logits.append(self.static.logits.clone())


def execute(model, input_ids: torch.Tensor, settings: ExecutionSettings, *, new_tokens: int,
            device: torch.device | str, trace: bool = False, keep_logits: bool = False,
            on_chunk: Optional[Callable[[int], None]] = None,
            host_available_bytes: Optional[int] = None, sync_debug: bool = False,
            warmup: Optional[bool] = None, stages: Optional[list[DeviceStage]] = None,
            synthetic_past_tokens: int = 0) -> Measurement:
    """Run prefill of ``input_ids`` [1, n] and ``new_tokens`` greedy tokens; return the Measurement.

    ``stages`` (executor/stages.py): the layers split over devices, the model already placed on them; default
    one stage of all layers on ``device`` with settings.resident_kv_heads resident slots. ``sync_debug``
    (CUDA, tests): the prefill and decode loops run under torch.cuda.set_sync_debug_mode("error"), so any host
    synchronisation or pageable copy inside them raises. ``synthetic_past_tokens`` N (a timing probe, module
    docstring): ``input_ids`` are the tokens after position N; the K, V rows [0, N) of every store are zero-filled
    (untimed, before the prefill) instead of computed, and the prefill continues at position N. The capacity must
    hold N + n + new_tokens - 1 tokens. The warm-up never uses a synthetic past.
    """
    if stages is None:
        stages = single_stage(model.config.num_hidden_layers, device, settings.resident_kv_heads)
    check_stages(stages, model.config.num_hidden_layers)
    device = stages[0].device
    prompt_tokens = input_ids.shape[1]
    _check_sizes(settings, synthetic_past_tokens, prompt_tokens, new_tokens)
    dtype = next(model.parameters()).dtype
    measurement = Measurement(prompt_tokens=prompt_tokens, synthetic_past_tokens=synthetic_past_tokens)
    if warmup if warmup is not None else device.type == "cuda":  # default: warm up on CUDA only
        measurement.warmup_s = warm_up(model, input_ids, settings, stages,
                                       context_tokens=synthetic_past_tokens + prompt_tokens)
    for stage_device in _cuda_devices(stages):
        torch.cuda.reset_peak_memory_stats(stage_device)
    parts = allocate_host_stores(model.config, stages, settings, dtype, available_bytes=host_available_bytes)
    run = None
    try:
        run = _build_run(model, parts, settings, trace, keep_logits, on_chunk, measurement)
        _zero_filled_past(run, synthetic_past_tokens)
        input_ids = input_ids.to(device)  # the prompt's one pageable copy, before the loop's no-sync region
        with torch.inference_mode(), offload_attention_selected(model), _sync_guard(stages, sync_debug):
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
            if run.static is not None:
                run.static.close()
            run.engine.close()
            for hook in run.hooks:
                hook.remove()
        for part in parts:
            part.host.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return measurement


def _check_sizes(settings: ExecutionSettings, past_tokens: int, prompt_tokens: int, new_tokens: int) -> None:
    """ValueError unless new_tokens >= 1, past_tokens >= 0 and the capacity holds past + prompt + new - 1 tokens
    (the last generated token is never written to the stores)."""
    if new_tokens < 1:
        raise ValueError("new_tokens must be at least 1")
    if past_tokens < 0:
        raise ValueError(f"synthetic_past_tokens must be >= 0, got {past_tokens}")
    if settings.capacity_tokens < past_tokens + prompt_tokens + new_tokens - 1:
        past = f"synthetic past {past_tokens} + " if past_tokens else ""
        raise ValueError(f"capacity {settings.capacity_tokens} tokens < {past}prompt {prompt_tokens} + "
                         f"{new_tokens - 1} decoded tokens")


def _zero_filled_past(run: _Run, tokens: int) -> None:
    """The synthetic past of a timing probe: zero the K, V rows [0, N) of every stage's stores (resident
    [r_l, T, d] on its GPU, host [H_kv - r_l, T, d]; the ping-pong slots are filled from the host rows), then
    count N tokens in the cache so the prefill's positions start at N. Nothing is allocated (in-place fills of
    the stores' views); the GPU fills are queued on the compute stream, ahead of the prefill that reads them."""
    if not tokens:
        return
    for engine in run.engine.engines:
        stores = (engine.gpu.resident_keys, engine.gpu.resident_values, engine.host.keys, engine.host.values)
        for per_layer in stores:
            for rows in per_layer:
                rows[:, :tokens].zero_()
    run.cache.advance(tokens)


def _cuda_devices(stages: list[DeviceStage]) -> list[torch.device]:
    seen: list[torch.device] = []
    for stage in stages:
        if stage.device.type == "cuda" and stage.device not in seen:
            seen.append(stage.device)
    return seen


WARMUP_CHUNK_TOKENS = 32
WARMUP_PROMPT_TOKENS = 96


def warm_up(model, input_ids: torch.Tensor, settings: ExecutionSettings, stages: list[DeviceStage], *,
            context_tokens: Optional[int] = None) -> float:
    """One tiny run through the same engine path (same stages, head groups and resident layout, a 96-token
    prompt in 32-token chunks, 2 new tokens, no synthetic past), so the timed run does not pay the process's
    one-time costs: CUDA module loading, cuBLAS / cuDNN handles, first launches of each kernel, and (cudnn-split)
    one cuDNN call of each kind at the first chunk's shapes (attention_split.warm_up_cudnn: cuDNN compiles its
    kernels the first time a machine runs them) and the Triton merge of each part count a prefill of
    ``context_tokens`` (default: the prompt's length; after a synthetic past, past + prompt) will merge. Returns
    its wall seconds (reported as ``warmup_s``, not hidden). Shape-specific costs (cuDNN graphs of the real block
    sizes beyond the first chunk's) stay in the run."""
    import dataclasses

    start_s = time.perf_counter()
    tiny = dataclasses.replace(settings, chunk_size=WARMUP_CHUNK_TOKENS,
                               capacity_tokens=WARMUP_PROMPT_TOKENS + 2)
    execute(model, input_ids[:, :WARMUP_PROMPT_TOKENS], tiny, new_tokens=2, device=stages[0].device,
            warmup=False, stages=stages)
    if normalize_backend(settings.attention_backend) == "cudnn-split":
        from executor.attention_split import warm_up_cudnn, warm_up_merge

        config, dtype = model.config, next(model.parameters()).dtype
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = config.num_key_value_heads
        for device in _cuda_devices(stages):
            warm_up_cudnn(device, dtype, head_dim=head_dim, query_heads_per_kv=config.num_attention_heads // kv_heads,
                          kv_heads=min(settings.heads_per_group, kv_heads),
                          chunk_tokens=min(settings.chunk_size, input_ids.shape[1]))
            warm_up_merge(device, dtype, head_dim, context_tokens or input_ids.shape[1], settings.chunk_size)
    for device in _cuda_devices(stages):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start_s


@contextlib.contextmanager
def _sync_guard(stages: list[DeviceStage], enabled: bool):
    if not (enabled and _cuda_devices(stages)):
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _build_run(model, parts: list[StageParts], settings, trace, keep_logits, on_chunk, measurement) -> _Run:
    device = parts[0].stage.device
    dtype_bytes = parts[0].host.dtype.itemsize
    measurement.host_store_bytes = sum(p.host.nbytes for p in parts)
    measurement.host_pin_s = sum(p.host.pin_s for p in parts)
    measurement.stages = [StageMeasurement(
        index=p.stage.index, device=str(p.stage.device), first_layer=p.stage.first_layer,
        num_layers=p.stage.num_layers, resident_kv_heads=p.stage.resident_kv_heads, numa_node=p.numa_node,
        numa_bound=p.numa_bound, host_store_bytes=p.host.nbytes, host_pin_s=p.host.pin_s,
        gpu_store_bytes={"resident": p.layout.resident_bytes(dtype_bytes),
                         "ping_pong": p.layout.slot_bytes(dtype_bytes)}) for p in parts]
    fullest = max(measurement.stages, key=lambda st: sum(st.gpu_store_bytes.values()))
    measurement.gpu_store_bytes = dict(fullest.gpu_store_bytes)
    recorder = EventRecorder(device=device)
    engine = build_staged_engine(parts, settings, normalize_backend(settings.attention_backend), recorder, trace)
    cache = OffloadCache(model.config.num_hidden_layers, settings.capacity_tokens, engine=engine)
    run = _Run(model=model, engine=engine, cache=cache, recorder=recorder, device=device, on_chunk=on_chunk,
               keep_logits=keep_logits,
               static_decode=static_decode_applies([p.layout for p in parts], settings, parts[0].host.dtype,
                                                   device))
    if len(parts) > 1:
        run.hooks = _stage_span_hooks(model, engine)
    return run


def _stage_span_hooks(model, engine: StagedEngine) -> list:
    """Marks 'stage_start' when a stage's first layer begins computing (a pre-hook on its input norm, so after
    the hidden state has arrived on the device) and 'stage_end' when its last layer returns, on the stage's own
    recorder: the stage's busy time per forward, on its own device's clock."""
    hooks = []
    layers = model.model.layers
    for stage_engine, part in zip(engine.engines, engine.parts):
        first, last = layers[part.stage.first_layer], layers[part.stage.layers[-1]]
        recorder, position = stage_engine.recorder, engine.position

        def start(module, args, _recorder=recorder, _position=position):
            _recorder.mark("stage_start", phase=_position.phase, chunk=_position.chunk)

        def end(module, args, output, _recorder=recorder, _position=position):
            _recorder.mark("stage_end", phase=_position.phase, chunk=_position.chunk)

        hooks.append(first.input_layernorm.register_forward_pre_hook(start))
        hooks.append(last.register_forward_hook(end))
    return hooks


def _finish(run: _Run, measurement: Measurement) -> None:
    """Resolve the events (one synchronize per device) into the Measurement."""
    events = run.recorder.resolve()
    stage_events = [events] + [r.resolve() for r in run.engine.recorders if r is not run.recorder]
    fill_times(events, measurement, extra=[e for extra in stage_events[1:] for e in extra])
    measurement.counters = run.engine.counters
    measurement.decode_host_s = list(run.host_s)
    if run.static is not None:
        measurement.decode_step = "graph" if run.static.graph is not None else "static"
        measurement.decode_graph_setup_s = run.static.setup_s
        measurement.decode_graph_fallback = run.static.fallback
    for stage, engine, stage_evts in zip(measurement.stages, run.engine.engines, _per_stage(run, stage_events)):
        stage.counters = dict(engine.counters)
        fill_stage_busy(stage, stage_evts, measurement, single=len(measurement.stages) == 1)
    if run.generated:
        measurement.generated_token_ids = [int(x) for x in torch.cat(run.generated, dim=1)[0].tolist()]
    if run.logits:
        measurement.step_logits = torch.stack(run.logits).cpu()
    for stage in measurement.stages:
        if torch.device(stage.device).type == "cuda":
            stage.read_gpu_peaks(torch.device(stage.device))
    if run.device.type == "cuda":
        measurement.take_fullest_gpu()


def _per_stage(run: _Run, stage_events: list) -> list:
    """Events of each stage's recorder (stage 0 and any stage sharing the run's recorder get the run's)."""
    by_recorder = {id(run.recorder): stage_events[0]}
    others = [r for r in run.engine.recorders if r is not run.recorder]
    for recorder, evts in zip(others, stage_events[1:]):
        by_recorder[id(recorder)] = evts
    return [by_recorder[id(engine.recorder)] for engine in run.engine.engines]


def _finish_partial(run: Optional[_Run], measurement: Measurement) -> None:
    if run is None:
        return
    try:
        for stage_device in _cuda_devices([p.stage for p in run.engine.parts]):
            torch.cuda.synchronize(stage_device)
        _finish(run, measurement)
    except Exception:  # the partial report must not hide the original fault
        pass


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
