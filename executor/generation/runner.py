"""Drive one head-offloaded run: chunked prefill, then greedy decode, through the unmodified transformers model.

``execute(model, input_ids, settings, new_tokens=..., device=..., options=RunOptions(...))`` builds the stores
(host store first, after checking host RAM), selects the registered head-offloaded attention
(engine/registration.py), runs the RunLoop (generation/loop.py: prefill chunk by chunk with ``logits_to_keep=1``,
decode token by token, no host synchronisation in the loop; with every KV head resident on one device each decode
token is one replay of a CUDA graph: generation/decode_graph.py), and returns a Measurement
(generation/measurement.py) built from events on the streams, with the host's own time per decode token. The
stores are released on every exit path; an OOM or Ctrl-C becomes a faults.RunFault carrying the partial
Measurement.
A timing probe (``options.synthetic_past_tokens=N``, headplan run --tail-chunks): the stores' rows [0, N) are
filled with a fixed random pattern (generation/tail.py) and the cache counts N tokens before the prefill, so ``input_ids`` run at positions [N, N + n) against
a full-length past that was never computed: time and memory are the full context's, the outputs are not the
model's.
A saved context (``options.past_loader``, headplan run --load-kv): the prompt's longest common prefix N with the
saved ids (at most n - 1) is loaded into rows [0, N) of the stores after they are built (kv/context_load.py, every
byte checked first), the cache counts N tokens, and only ``input_ids[:, N:]`` are prefilled; the outputs are the
model's. ``options.kv_saver`` (--save-kv) writes the prompt's rows after the run, before the stores are released.
Leaves out: the report (report/), the plan (api.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import torch

from executor.attention.kernels import backend_name
from executor.engine.cache import OffloadCache
from executor.engine.registration import offload_attention_selected
from executor.faults import RunInterrupted, RunOutOfMemory, out_of_memory_message
from executor.generation.decode_graph import static_decode_applies
from executor.generation.loop import RunLoop
from executor.generation.measurement import Measurement, StageMeasurement, fill_stage_busy, fill_times
from executor.generation.sampling import TokenChooser
from executor.generation.tail import fill_synthetic_rows, synthetic_pattern
from executor.generation.compiled_layers import compiled_layers, eager_stance, prefill_lengths, warm_up_compiled
from executor.generation.warmup import cuda_devices, warm_up
from executor.kv.layout import HeadCounts
from executor.kv.rows import KVRows
from executor.parallel.staged_engine import StagedEngine, StageParts, allocate_host_stores, build_staged_engine
from executor.parallel.stages import DeviceStage, check_stages, single_stage
from executor.runtime.cpu_steal import read_cpu_ticks, steal_between
from executor.runtime.events import EventRecorder
from executor.runtime.gpu_memory import cuda_stack_limit_bytes_on, outside_allocator_snapshot, release_grown_stack
from executor.settings import ExecutionSettings, RunOptions


def execute(model, input_ids: torch.Tensor, settings: ExecutionSettings, *, new_tokens: int,
            device: torch.device | str, options: RunOptions = RunOptions(),
            stages: Optional[list[DeviceStage]] = None, heads: Optional[HeadCounts] = None) -> Measurement:
    """Run prefill of ``input_ids`` [1, n] and up to ``new_tokens`` tokens (greedy, or as ``options.sampling``
    says; fewer when ``options.token_stream`` stops at end of sequence or a stop string); return the Measurement.

    ``stages`` (parallel/stages.py): the layers split over devices, the model already placed on them; default
    one stage of all layers on ``device`` with settings.resident_kv_heads resident slots. ``options``
    (settings.py RunOptions): ``sync_debug`` (CUDA, tests) runs the prefill and decode loops under
    torch.cuda.set_sync_debug_mode("error"), so any host synchronisation or pageable copy inside them raises;
    ``synthetic_past_tokens`` N (a timing probe, module docstring): ``input_ids`` are the tokens after position
    N; the K, V rows [0, N) of every store hold a fixed random pattern (untimed, written before the prefill)
    instead of computed ones, and
    the prefill continues at position N. The capacity must hold N + n + new_tokens - 1 tokens. The warm-up never
    uses a synthetic past. ``heads`` (kv/layout.py HeadCounts): the attention heads this process sees, which size
    every store; default the config's global counts; a tensor-parallel rank passes its local H_q / N, H_kv / N
    (parallel/tensor.py), as the sharded model hands its attention only those.
    """
    if stages is None:
        stages = single_stage(model.config.num_hidden_layers, device, settings.resident_kv_heads)
    check_stages(stages, model.config.num_hidden_layers)
    device = stages[0].device
    past_tokens = options.synthetic_past_tokens
    if options.past_loader is not None and past_tokens:
        raise ValueError("a loaded past (--load-kv) and a synthetic past (--tail-chunks) exclude each other")
    prompt_ids = [int(x) for x in input_ids[0].tolist()] if options.kv_saver or options.past_loader else []
    loaded_tokens = options.past_loader.reusable_tokens(prompt_ids) if options.past_loader is not None else 0
    input_ids = input_ids[:, loaded_tokens:]  # the prefill runs the tokens after the loaded prefix
    prompt_tokens = input_ids.shape[1]
    _check_sizes(settings, past_tokens + loaded_tokens, prompt_tokens, new_tokens)
    backend_name(settings.attention_backend)  # an unknown backend fails here, before anything is allocated
    dtype = next(model.parameters()).dtype
    measurement = Measurement(prompt_tokens=prompt_tokens, synthetic_past_tokens=past_tokens,
                              loaded_past_tokens=loaded_tokens)
    with compiled_layers(model, settings.compile_layers):
        return _execute(model, input_ids, settings, new_tokens=new_tokens, options=options, stages=stages,
                        heads=heads, measurement=measurement, dtype=dtype, prompt_ids=prompt_ids)


def _execute(model, input_ids: torch.Tensor, settings: ExecutionSettings, *, new_tokens: int, options: RunOptions,
             stages: list[DeviceStage], heads: Optional[HeadCounts], measurement: Measurement, dtype: torch.dtype,
             prompt_ids: list[int]) -> Measurement:
    """execute() after its checks, with the layers compiled when settings.compile_layers (compiled_layers.py)."""
    device = stages[0].device
    past_tokens, loaded_tokens = measurement.synthetic_past_tokens, measurement.loaded_past_tokens
    prompt_tokens = input_ids.shape[1]
    snapshot = _phase_snapshots(device, measurement)
    snapshot("start")
    if options.warmup if options.warmup is not None else device.type == "cuda":  # default: on CUDA only
        stack_baselines = {d: cuda_stack_limit_bytes_on(d) for d in cuda_devices(stages)}
        compiled = ((lambda: warm_up_compiled(model, prefill_lengths(prompt_tokens, settings.chunk_size)))
                    if settings.compile_layers else None)
        measurement.warmup_s = warm_up(_tiny_run(model, stages, heads), model, input_ids, settings, stages,
                                       context_tokens=past_tokens + loaded_tokens + prompt_tokens, heads=heads,
                                       first_past_tokens=past_tokens + loaded_tokens, compiled=compiled)
        for stage_device, baseline in stack_baselines.items():  # the warm-up's tiny shapes may have grown it
            grown = release_grown_stack(stage_device, baseline)
            if grown is not None:
                measurement.stack_released_bytes_per_thread[str(stage_device)] = grown - baseline
        snapshot("warmed-up")
    for stage_device in cuda_devices(stages):
        torch.cuda.reset_peak_memory_stats(stage_device)
    parts = allocate_host_stores(model.config, stages, settings, dtype, available_bytes=options.host_available_bytes,
                                 heads=heads)
    run = None
    try:
        run = _build_run(model, parts, settings, options, measurement)
        _synthetic_past(run, past_tokens)
        _loaded_past(run, parts, options.past_loader, loaded_tokens, measurement)
        input_ids = input_ids.to(device)  # the prompt's one pageable copy, before the loop's no-sync region
        if not options.sampling.plain_argmax:
            run.chooser = TokenChooser(options.sampling, device=device, capacity_tokens=settings.capacity_tokens,
                                       prompt_ids=input_ids)
        ticks_start = read_cpu_ticks()
        with torch.inference_mode(), offload_attention_selected(model), _sync_guard(stages, options.sync_debug):
            next_ids = run.prefill(input_ids, settings.chunk_size, new_tokens)
            snapshot("prefilled")
            ticks_prefilled = read_cpu_ticks()
            with eager_stance(settings.compile_layers):  # decode eager: compiled_layers.py says why
                run.decode(next_ids, new_tokens)
            snapshot("decoded")
        _finish(run, measurement)
        # after _finish's synchronisation: the CPU share's last jobs are in the decode window
        measurement.prefill_cpu_steal = steal_between(ticks_start, ticks_prefilled)
        measurement.decode_cpu_steal = steal_between(ticks_prefilled, read_cpu_ticks())
        if options.kv_saver is not None:  # after _finish: every stream is synchronised, the rows are final
            run.engine.position.phase, run.engine.position.chunk, run.engine.position.layer = "save-kv", None, None
            saved = options.kv_saver(_kv_rows(run, parts), prompt_ids)
            measurement.kv_reuse.update(save_path=str(saved.path), saved_bytes=saved.nbytes, save_s=saved.save_s)
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


def _phase_snapshots(device: torch.device, measurement: Measurement):
    """snapshot(phase): record the first GPU's memory outside PyTorch's allocator and the CUDA stack limit
    (runtime/gpu_memory.py) under ``phase``; nothing on the CPU. Reads driver figures only: no synchronisation."""
    def snapshot(phase: str) -> None:
        if device.type == "cuda":
            measurement.gpu_outside_allocator_by_phase[phase] = outside_allocator_snapshot(device)
    return snapshot


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


def _tiny_run(model, stages: list[DeviceStage], heads: Optional[HeadCounts]):
    """The warm-up's run: the same engine path on ``stages``, no warm-up of its own, no synthetic past."""
    def run(ids: torch.Tensor, settings: ExecutionSettings, new_tokens: int) -> None:
        execute(model, ids, settings, new_tokens=new_tokens, device=stages[0].device,
                options=RunOptions(warmup=False), stages=stages, heads=heads)
    return run


def _synthetic_past(run: RunLoop, tokens: int) -> None:
    """The synthetic past of a timing probe: rows [0, N) of every stage's K, V stores (resident [r_l, T, d] on its
    GPU, host [H_kv - r_l, T, d]; the ping-pong slots are filled from the host rows) get the fixed random pattern
    of generation/tail.py (fill_synthetic_rows: random, not zeros, so the kernels draw a real prefill's power),
    then the cache counts N tokens so the prefill's positions start at N. Nothing is allocated beyond one pattern
    per device (in-place fills of the stores' views); the GPU fills are queued on the compute stream, ahead of the
    prefill that reads them."""
    if not tokens:
        return
    patterns: dict = {}
    for engine in run.engine.engines:
        stores = ((engine.gpu.resident_keys, engine.gpu.resident_values), (engine.host.keys, engine.host.values),
                  (engine.gpu.window_keys, engine.gpu.window_values))  # windows: their last W - 1 rows
        for per_layer_pair in stores:
            for which, per_layer in enumerate(per_layer_pair):
                for rows in per_layer:
                    if rows is not None:
                        key = (rows.device, rows.dtype, rows.shape[-1])
                        if key not in patterns:
                            patterns[key] = synthetic_pattern(rows.shape[-1], rows.dtype, rows.device)
                        fill_synthetic_rows(rows, tokens, patterns[key][which])
    run.cache.advance(tokens)


def _kv_rows(run: RunLoop, parts: list[StageParts]) -> KVRows:
    """The (layer, KV head) rows of every stage's stores (kv/rows.py)."""
    layout = parts[0].layout
    stores = [(p.stage.first_layer, e.host, e.gpu) for p, e in zip(parts, run.engine.engines)]
    return KVRows.from_stores(stores, kv_heads=layout.kv_heads, head_dim=layout.head_dim,
                              capacity_tokens=layout.capacity_tokens, dtype=parts[0].host.dtype)


def _loaded_past(run: RunLoop, parts: list[StageParts], loader, tokens: int, measurement: Measurement) -> None:
    """--load-kv: copy the saved context's first N tokens into every store (kv/context_load.py: each segment is
    checked before a byte of it is copied; a failure raises here, before the prefill, and the stores, allocated by
    this run and never read, are released by execute's finally), then count N tokens in the cache so the prefill
    starts at position N, as the synthetic past does."""
    if loader is None:
        return
    measurement.kv_reuse.update(load_path=str(loader.path), loaded_bytes=0, load_s=0.0)
    if not tokens:
        return
    loaded = loader.load(_kv_rows(run, parts), tokens)
    measurement.kv_reuse.update(loaded_bytes=loaded.nbytes, load_s=loaded.load_s)
    run.cache.advance(tokens)


@contextlib.contextmanager
def _sync_guard(stages: list[DeviceStage], enabled: bool):
    if not (enabled and cuda_devices(stages)):
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _build_run(model, parts: list[StageParts], settings: ExecutionSettings, options: RunOptions,
               measurement: Measurement) -> RunLoop:
    device = parts[0].stage.device
    dtype_bytes = parts[0].host.dtype.itemsize
    measurement.host_store_bytes = sum(p.host.nbytes for p in parts)
    measurement.host_pin_s = sum(p.host.pin_s for p in parts)
    measurement.host_touch_s = sum(p.host.touch_s for p in parts)
    measurement.host_huge_page_bytes = sum(p.host.huge_page_bytes for p in parts)
    measurement.stages = [StageMeasurement(
        index=p.stage.index, device=str(p.stage.device), first_layer=p.stage.first_layer,
        num_layers=p.stage.num_layers, resident_kv_heads=p.stage.resident_kv_heads, numa_node=p.numa_node,
        numa_bound=p.numa_bound, host_store_bytes=p.host.nbytes, host_pin_s=p.host.pin_s,
        gpu_store_bytes={"resident": p.layout.resident_bytes(dtype_bytes),
                         "ping_pong": p.layout.slot_bytes(dtype_bytes)}) for p in parts]
    fullest = max(measurement.stages, key=lambda st: sum(st.gpu_store_bytes.values()))
    measurement.gpu_store_bytes = dict(fullest.gpu_store_bytes)
    recorder = EventRecorder(device=device)
    engine = build_staged_engine(parts, settings, backend_name(settings.attention_backend), recorder, options.trace)
    cache = OffloadCache(model.config.num_hidden_layers, settings.capacity_tokens, engine=engine)
    run = RunLoop(model=model, engine=engine, cache=cache, recorder=recorder, device=device,
                  on_chunk=options.on_chunk, keep_logits=options.keep_logits, stream=options.token_stream,
                  static_decode=static_decode_applies([p.layout for p in parts], settings, parts[0].host.dtype,
                                                      device)
                  and getattr(model.config, "attn_logit_softcapping", None) is None)  # its kernel has no cap
    if len(parts) > 1:
        run.hooks = _stage_span_hooks(model, engine)
    if options.share_rebalancing is not None and settings.cpu_share > 0:
        run.after_token = (options.share_rebalancing.after_tokens,
                           lambda: _rebalance_share(run, settings, options.share_rebalancing, measurement))
    return run


def _rebalance_share(run: RunLoop, settings: ExecutionSettings, rebalancing, measurement: Measurement) -> None:
    """Between two decode tokens: wait for the host share's jobs, measure the CPU kernel's rate so far (decode
    bytes / kernel seconds over every stage), ask ``rebalancing.choose`` for the share from now on, and where it
    differs rebuild the host share at it (the devices synchronised first: no layer's copy or wait is in flight)."""
    decode = run.engine.counters.get("decode")  # settles every stage's host jobs, then sums the stages
    if decode is None or decode.host_attention_s <= 0 or decode.host_attention_bytes <= 0:
        return
    measured = decode.host_attention_bytes / decode.host_attention_s
    decision = rebalancing.choose(measured)
    if decision is None:
        return
    shares = [engine.host_share for engine in run.engine.engines if engine.host_share is not None]
    measurement.host_share_hand_off = shares[0].hand_off if shares else None
    measurement.share_rebalance = dict(
        at_token=rebalancing.after_tokens, planned_share=settings.cpu_share, share=decision.share,
        planned_cpu_bytes_per_s=getattr(decision, "planned_cpu_bytes_per_s", None),
        measured_cpu_bytes_per_s=measured, reason=decision.reason)
    if decision.share == settings.cpu_share:
        return
    for device in {part.stage.device for part in run.engine.parts}:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
    run.engine.set_cpu_share(dataclasses.replace(settings, cpu_share=decision.share))


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


def _finish(run: RunLoop, measurement: Measurement) -> None:
    """Resolve the events (one synchronize per device) into the Measurement."""
    events = run.recorder.resolve()
    stage_events = [events] + [r.resolve() for r in run.engine.recorders if r is not run.recorder]
    fill_times(events, measurement, extra=[e for extra in stage_events[1:] for e in extra])
    measurement.counters = run.engine.counters
    shares = [e.host_share for e in run.engine.engines if e.host_share is not None]
    if shares or measurement.share_rebalance is None:  # a share re-balanced to 0 keeps the hand-off it ran with
        measurement.host_share_hand_off = shares[0].hand_off if shares else None
    measurement.decode_host_s = list(run.host_s)
    if run.static is not None:
        measurement.decode_step = "graph" if run.static.graph is not None else "static"
        measurement.decode_graph_setup_s = run.static.setup_s
        measurement.decode_graph_fallback = run.static.fallback
    for stage, engine, stage_evts in zip(measurement.stages, run.engine.engines, _per_stage(run, stage_events)):
        stage.counters = dict(engine.counters)
        fill_stage_busy(stage, stage_evts, measurement, single=len(measurement.stages) == 1)
    measurement.generated_token_ids = run.generated_ids()
    if run.stream is not None:
        measurement.stop_reason = run.stream.stop_reason
    if run.logits:
        measurement.step_logits = torch.stack(run.logits).cpu()
    for stage in measurement.stages:
        if torch.device(stage.device).type == "cuda":
            stage.read_gpu_peaks(torch.device(stage.device))
    if run.device.type == "cuda":
        measurement.take_fullest_gpu()


def _per_stage(run: RunLoop, stage_events: list) -> list:
    """Events of each stage's recorder (stage 0 and any stage sharing the run's recorder get the run's)."""
    by_recorder = {id(run.recorder): stage_events[0]}
    others = [r for r in run.engine.recorders if r is not run.recorder]
    for recorder, evts in zip(others, stage_events[1:]):
        by_recorder[id(recorder)] = evts
    return [by_recorder[id(engine.recorder)] for engine in run.engine.engines]


def _finish_partial(run: Optional[RunLoop], measurement: Measurement) -> None:
    if run is None:
        return
    try:
        for stage_device in cuda_devices([p.stage for p in run.engine.parts]):
            torch.cuda.synchronize(stage_device)
        _finish(run, measurement)
    except Exception:  # the partial report must not hide the original fault
        pass
