"""Python API: run a plan on a transformers model and get the generated ids and the report.

    from executor.api import run_plan
    result = run_plan(model, plan, input_ids, new_tokens=16, device="cuda")
    result.generated_ids        # list[int], greedy
    result.report               # executor.report.schema.RunReport (predicted, measured, error, ...)

``plan`` is a planner Plan (its settings and predictions are used) or an ExecutionSettings (no predictions).
``model`` is a Llama / Mistral / Qwen2 ``*ForCausalLM`` already on ``device`` (executor/inputs/model_loader.py
builds one); for a plan over N GPUs, already placed on its stages (``build_random(..., stages=stages_from_plan(plan,
devices_for(N, "cuda")))``); the report then has a per-GPU block.
``input_ids`` is [1, n] int64. The model is not modified; its attention implementation is switched for the
run and restored after. Faults raise executor.faults.RunFault with ``.report`` set to a partial report.
``tail_chunks=K`` (with a Plan) is a timing probe: only the prompt's last K prefill chunks run, at their real
positions, over a synthetic KV past (a fixed random pattern) standing in for the earlier chunks (generation/tail.py); the report's
prefill figures, predicted and measured, are those K chunks' and its ``tail`` block says so; the outputs are not
the model's, so ``verify`` is refused.
``offloaded_cache(model, plan, device=...)`` is the same engine as a Cache for transformers' own ``generate``:

    with offloaded_cache(model, plan, device="cuda") as cache:
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), past_key_values=cache,
                             prefill_chunk_size=cache.chunk_size, max_new_tokens=64, streamer=TextStreamer(tok))

(any generation config: sampling, stop strings, streamers are transformers' own; the run's timing, CUDA-graph
decode and report belong to ``run_plan`` and the CLI). Leaves out: batches, the CLI (headplan/cmd_run.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch

from executor.attention.kernels import backend_name
from executor.engine.cache import OffloadCache
from executor.engine.registration import bound_cache, offload_attention_selected
from executor.faults import RunFault
from executor.generation.measurement import Measurement
from executor.generation.runner import execute
from executor.generation.tail import check_tail_request, tail_split
from executor.kv.layout import HeadCounts
from executor.parallel.staged_engine import allocate_host_stores, build_staged_engine
from executor.parallel.stages import DeviceStage, devices_for, single_stage, stages_from_plan
from executor.report.assemble import ReportContext, build_report
from executor.report.schema import RunReport
from executor.report.verify import verify_against_standard
from executor.runtime.events import EventRecorder
from executor.settings import ExecutionSettings, RunOptions, SplitOptions
from planner.plan import Plan


@dataclass
class RunResult:
    generated_ids: list[int]
    report: RunReport
    measurement: Measurement
    extras: dict = field(default_factory=dict)


def settings_from_plan(plan: Plan, new_tokens: int, prompt_tokens: Optional[int] = None) -> ExecutionSettings:
    """ExecutionSettings of a Plan; capacity = prompt + new tokens (at least the plan's context + decode)."""
    prompt = prompt_tokens if prompt_tokens is not None else plan.context_tokens
    capacity = max(prompt + new_tokens, plan.context_tokens + plan.decode_tokens)
    return ExecutionSettings(chunk_size=plan.chunk_size, heads_per_group=plan.heads_per_group,
                             resident_kv_heads=plan.resident_kv_heads, capacity_tokens=capacity,
                             attention_backend=plan.attention_backend, decode_graphs=plan.decode_graphs,
                             cpu_share=plan.cpu_share, split=SplitOptions(past_cut=plan.past_cut,
                                                                            chunk_backend=plan.chunk_backend),
                             compile_layers=plan.compile_layers)


def run_plan(model, plan: Union[Plan, ExecutionSettings], input_ids: torch.Tensor, *, new_tokens: int,
             device: Union[str, torch.device], options: RunOptions = RunOptions(), verify: bool = False,
             tail_chunks: Optional[int] = None, stages: Optional[list[DeviceStage]] = None,
             context: ReportContext = ReportContext(), heads: Optional[HeadCounts] = None) -> RunResult:
    """Head-offloaded prefill of ``input_ids`` [1, n] and ``new_tokens`` greedy tokens; see the module doc.

    ``options`` (settings.py RunOptions): tracing, progress callback, host RAM the stores may take (default:
    MemAvailable); ``keep_logits`` is set by ``verify``. ``stages``: the layers split over devices
    (parallel/stages.py), the model already placed on them (inputs/model_loader.py does both); default: a plan
    for several GPUs runs its plan.stages on cuda:0 .. cuda:N-1, else one stage on ``device``. ``tail_chunks``
    K >= 1 (a Plan only; not with ``verify``): run only the last K of the prompt's prefill chunks over a synthetic
    past (module doc); K at least the chunk count runs the whole prompt as usual (``report.tail`` None);
    ``options.on_chunk`` then counts the chunks run (0 .. K - 1). ``context``: the report's model name, extra
    memory fields and warnings. ``heads``: the attention heads this process sees (kv/layout.py HeadCounts; one
    tensor-parallel rank's local counts, executor/launch/rank.py), which size the stores; ``verify`` is refused with
    it (the standard forward of a sharded model is not the unsharded one)."""
    check_tail_request(tail_chunks, verify)
    if heads is not None and verify:
        raise ValueError("verify runs the unsharded standard forward: not on one rank of a tensor-parallel run")
    if isinstance(plan, ExecutionSettings):
        if tail_chunks is not None:
            raise ValueError("tail_chunks needs a Plan (its per-chunk predictions), not bare ExecutionSettings")
        settings, plan_obj, tail = plan, None, None
    else:
        settings, plan_obj = settings_from_plan(plan, new_tokens, input_ids.shape[1]), plan
        tail = tail_split(input_ids.shape[1], plan.chunk_size, tail_chunks)
        if stages is None and plan.gpus > 1 and plan.parallel == "layers":
            stages = stages_from_plan(plan, devices_for(plan.gpus, torch.device(device).type))
    common = dict(model=model, plan=plan_obj, settings=settings, input_ids=input_ids, new_tokens=new_tokens,
                  device=device, context=context, tail=tail)
    past = tail.skipped_tokens if tail is not None else 0
    options = dataclasses.replace(options, keep_logits=options.keep_logits or verify, synthetic_past_tokens=past)
    try:
        measurement = execute(model, input_ids[:, past:], settings, new_tokens=new_tokens, device=device,
                              options=options, stages=stages, heads=heads)
    except RunFault as fault:
        fault.report = build_report(measurement=fault.partial, status=fault.kind, fault=str(fault), **common)
        raise
    verify_block = verify_against_standard(model, input_ids, measurement, device) if verify else None
    report = build_report(measurement=measurement, verify=verify_block, **common)
    return RunResult(generated_ids=measurement.generated_token_ids, report=report, measurement=measurement)


@contextlib.contextmanager
def offloaded_cache(model, plan: Union[Plan, ExecutionSettings], *, device: Union[str, torch.device],
                    new_tokens: Optional[int] = None, stages: Optional[list[DeviceStage]] = None,
                    host_available_bytes: Optional[int] = None) -> Iterator[OffloadCache]:
    """The head-offloaded KV of ``plan`` as a Cache for ``model.generate(past_key_values=cache, ...)``.

    Allocates the plan's stores (host store pinned, resident heads and ping-pong slots on the GPU), selects the
    head-offloaded attention and binds the cache to it for the block, and releases everything after. Capacity:
    the plan's context + decode tokens, or at least ``new_tokens`` more than its context. ``cache.chunk_size`` is
    the plan's prefill chunk: pass it as generate's ``prefill_chunk_size`` (a prompt in one piece would need the
    activations of the whole prompt at once). One generate call per block: the cache does not rewind."""
    if isinstance(plan, ExecutionSettings):
        settings = plan
    else:
        settings = settings_from_plan(plan, new_tokens or plan.decode_tokens)
        if stages is None and plan.gpus > 1:
            stages = stages_from_plan(plan, devices_for(plan.gpus, torch.device(device).type))
    backend_name(settings.attention_backend)
    stages = stages or single_stage(model.config.num_hidden_layers, device, settings.resident_kv_heads)
    dtype = next(model.parameters()).dtype
    parts = allocate_host_stores(model.config, stages, settings, dtype, available_bytes=host_available_bytes)
    engine = None
    try:
        engine = build_staged_engine(parts, settings, backend_name(settings.attention_backend),
                                     EventRecorder(device=stages[0].device), trace=False)
        cache = OffloadCache(model.config.num_hidden_layers, settings.capacity_tokens, engine=engine,
                             drives_phase=True)
        cache.chunk_size = settings.chunk_size
        with offload_attention_selected(model), bound_cache(cache):
            yield cache
    finally:
        if engine is not None:
            engine.close()
        for part in parts:
            part.host.close()
