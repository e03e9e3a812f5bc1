"""One rank of a tensor-parallel run (executor/launch/__init__.py): build, shard and run its share; rank 0 merges
the ranks' Measurements and builds the report."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from executor.generation.measurement import merge_rank_measurements
from executor.launch.job import TensorJob, TensorResult, check_job
from executor.settings import ExecutionSettings, RunOptions


def run_rank(rank: int, job: TensorJob, device: torch.device) -> tuple[dict, torch.nn.Module]:
    """Build, shard and run this rank's share; returns what rank 0 merges (the Measurement and the generated ids)
    and the sharded model (rank 0 builds the report with it).
    A RunFault carries this rank's partial report (built here, where the model is)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from executor.api import run_plan
    from executor.parallel.stages import single_stage
    from executor.parallel.tensor import local_heads, shard_model
    from executor.report.assemble import ReportContext

    mesh = init_device_mesh(device.type, (job.ranks,))
    if hasattr(job.model, "sharded"):  # random weights: shard-first, the whole model never on the device
        model = job.model.sharded(device, mesh)
        check_job(job, model.config)
    else:
        model = job.model(device)
        check_job(job, model.config)
        shard_model(model, mesh)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the full weights are gone: only the shard counts against the budget
        if job.gpu_budget_bytes:
            from executor.runtime.gpu_memory import apply_gpu_budget

            apply_gpu_budget(job.gpu_budget_bytes, job.runtime_overhead_bytes, device)
    plan = _eager_decode(job.plan)
    resident = _resident_of(job, rank)
    stages = single_stage(model.config.num_hidden_layers, device, resident)
    options = RunOptions(trace=job.trace, keep_logits=job.keep_logits, on_chunk=_fault_hook(job, rank),
                         host_available_bytes=_host_share(job))
    if device.type == "cuda":
        _warm_dtensor_shapes(model, job, device)
    dist.barrier()  # every rank sharded before any starts timing
    result = run_plan(model, plan, job.input_ids, new_tokens=job.new_tokens, device=device, options=options,
                      tail_chunks=job.tail_chunks, stages=stages, context=_by_heads(job.context or ReportContext()),
                      heads=local_heads(model.config, job.ranks))
    return {"rank": rank, "measurement": result.measurement, "generated_ids": result.generated_ids}, model


def _warm_dtensor_shapes(model, job: TensorJob, device: torch.device) -> None:
    """One standard forward at the prefill chunk's shape and one at a decode token's (no cache, the model's own
    attention): DTensor works out the sharding of each op once per new input shape on the host (0.1-0.2 s per op on
    a 2-core CPU, torch 2.13), which would otherwise land in the first timed chunk and token. Untimed, before the
    run; the run's own warm-up then covers the kernels."""
    chunk = min(job.plan.chunk_size, job.input_ids.shape[1])
    with torch.inference_mode():
        for tokens in (chunk, 1):
            model(job.input_ids[:, :tokens].to(device), use_cache=False, logits_to_keep=1)
    torch.cuda.synchronize(device)


def _eager_decode(plan):
    """The plan (or settings) with decode graphs off: a captured graph over the collectives is not a path the
    executor has been checked on."""
    if isinstance(plan, ExecutionSettings):
        return dataclasses.replace(plan, decode_graphs=False)
    return plan.model_copy(update={"decode_graphs": False})


def _resident_of(job: TensorJob, rank: int) -> int:
    if job.resident_per_rank is not None:
        return job.resident_per_rank[rank]
    return job.plan.resident_kv_heads


def _host_share(job: TensorJob) -> Optional[int]:
    return job.host_available_bytes // job.ranks if job.host_available_bytes is not None else None


def _fault_hook(job: TensorJob, rank: int):
    if job.fault_at is None or job.fault_at[0] != rank:
        return None
    chunk, interrupt = job.fault_at[1], job.fault_at[2:] == ("interrupt",)

    def hook(index: int) -> None:
        if index == chunk and interrupt:
            raise KeyboardInterrupt
        if index == chunk:
            raise torch.OutOfMemoryError(f"injected out-of-memory on rank {rank} after chunk {chunk}")
    return hook


def _by_heads(context):
    return dataclasses.replace(context, parallel="heads")


def merge_ranks(job: TensorJob, gathered: list[dict], model) -> TensorResult:
    """Rank 0: one Measurement of the run (its ``stages`` one per rank: device, resident heads, host store,
    busy time = that rank's own prefill and decode, counters) and the report built from it."""
    from executor.api import settings_from_plan
    from executor.generation.tail import tail_split
    from executor.report.assemble import ReportContext, build_report

    gathered = sorted(gathered, key=lambda g: g["rank"])
    merged = merge_rank_measurements([g["measurement"] for g in gathered])
    plan = _eager_decode(job.plan)
    ids = job.input_ids
    if isinstance(plan, ExecutionSettings):
        settings, plan_obj, tail = plan, None, None
    else:
        settings, plan_obj = settings_from_plan(plan, job.new_tokens, ids.shape[1]), plan
        tail = tail_split(ids.shape[1], plan.chunk_size, job.tail_chunks)
    report = build_report(model=model, plan=plan_obj,
                          settings=settings, input_ids=ids, new_tokens=job.new_tokens, device=merged.stages[0].device,
                          measurement=merged, context=_by_heads(job.context or ReportContext()), tail=tail)
    return TensorResult(generated_ids=merged.generated_token_ids, report=report, measurement=merged,
                        rank_generated_ids=[g["generated_ids"] for g in gathered])
