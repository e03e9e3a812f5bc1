"""Run one plan by heads over N ranks (tensor parallelism): start the processes, shard, run, gather, report.

    result = launch_tensor_parallel(TensorJob(ranks=2, device_type="cuda", plan=plan, model=RandomModel(spec,
                                              "bfloat16", seed=0), input_ids=ids, new_tokens=16))
    result.report                   rank 0's RunReport: per rank (``gpus``) and total

``model`` is a picklable factory of the full model on a device (inputs/model_loader.py RandomModel, CheckpointModel).
Start-up: one process per rank, started here with torch.multiprocessing (spawn on GPUs; fork on the CPU, after
pre-importing: _start_method), torch.distributed over NCCL on GPUs (rank r on cuda:r) and gloo on the CPU
(``device_type="cpu"``: N ranks on the CPU, for tests). Launched by
torchrun instead (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), the calling process is one rank and the
function returns the result on rank 0 and None elsewhere. Each rank:
    1. builds the same full model (``model(device)``: random weights are seeded per parameter, so every rank
       draws the unsharded model's weights), shards it (parallel/tensor.py shard_model), caps its GPU at the
       plan's budget once the full weights are gone;
    2. runs api.run_plan on one stage of all layers on its device with ``heads`` = its local H_q / N, H_kv / N
       (its own host store on its GPU's NUMA node, its own resident heads: ``resident_per_rank`` or the plan's,
       its own links); decode runs eagerly (no CUDA graph over the collectives);
    3. sends its Measurement to rank 0, which merges them (one ``stages`` entry per rank, counters and host
       stores summed, GPU figures of the fullest rank) and builds the report.
Faults: a rank whose run stops (GPU OOM, Ctrl-C: faults.RunFault) has already released its stores (runner.execute's
finally: pinned pages unregistered); it writes its partial report and exits with the fault's code. The others are
then blocked in a collective that will never complete: the launcher waits FAULT_GRACE_S for them, then terminates
and kills them (the OS releases their pinned pages with the process), and raises the fault with that partial
report. Ctrl-C in the launcher is forwarded to every rank as SIGINT (a terminal sends it to all of them anyway),
then the same. The report is built on a rank (rank 0, or the rank that faulted) and written by the caller.
Leaves out: several hosts, loading only each rank's shard of a checkpoint, a progress bar.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from executor.faults import RunFault, RunInterrupted, RunOutOfMemory
from executor.generation.measurement import Measurement, merge_rank_measurements
from executor.inputs.model_loader import CheckpointModel, RandomModel  # noqa: F401  (part of this API)
from executor.report.schema import RunReport
from executor.settings import ExecutionSettings, RunOptions

FAULT_GRACE_S = 5.0
"""seconds the launcher lets the other ranks end by themselves after one faulted, before terminating them"""
KILL_GRACE_S = 3.0
"""seconds between SIGTERM and SIGKILL"""


@dataclass(frozen=True, kw_only=True)
class TensorJob:
    """Everything a rank needs (pickled to each spawned process)."""

    ranks: int
    device_type: str
    """"cuda" (rank r on cuda:r, NCCL) or "cpu" (gloo)"""
    plan: object
    """a planner Plan made with parallel 'heads', or ExecutionSettings (no predictions; tests)"""
    model: Callable[[torch.device], torch.nn.Module]
    input_ids: torch.Tensor
    new_tokens: int
    tail_chunks: Optional[int] = None
    resident_per_rank: Optional[tuple[int, ...]] = None
    """each rank's resident (layer, local KV head) slots; default the plan's (settings') resident_kv_heads"""
    trace: bool = False
    keep_logits: bool = False
    host_available_bytes: Optional[int] = None
    """host RAM all ranks' stores may take together (each rank checks its 1/N share)"""
    gpu_budget_bytes: Optional[int] = None
    runtime_overhead_bytes: int = 0
    context: object = None
    """report.assemble.ReportContext (None: the default)"""
    fault_at: Optional[tuple] = None
    """(rank, chunk) or (rank, chunk, "interrupt"): that rank raises a GPU out-of-memory error (or a Ctrl-C) after
    that prefill chunk (fault tests)"""


@dataclass
class TensorResult:
    generated_ids: list[int]
    report: RunReport
    measurement: Measurement
    rank_generated_ids: list[list[int]] = field(default_factory=list)


def check_job(job: TensorJob, config) -> None:
    """ValueError before anything starts: N must divide H_q, H_kv and I; N GPUs must be visible; one resident
    count per rank."""
    from executor.parallel.tensor import check_ranks

    check_ranks(config, job.ranks)
    if job.device_type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if job.ranks > visible:
            raise ValueError(f"--gpus {job.ranks} by heads but {visible} CUDA GPU(s) are visible")
    if job.resident_per_rank is not None and len(job.resident_per_rank) != job.ranks:
        raise ValueError(f"{len(job.resident_per_rank)} resident counts for {job.ranks} ranks")


def _check_before_start(job: TensorJob) -> None:
    """What can be refused before any process starts: GPUs not visible; a split that does not divide the heads
    (from the model spec where the factory has one; else each rank checks its config)."""
    from planner.tensor_parallel import check_head_split

    spec = getattr(job.model, "spec", None) or getattr(job.plan, "model", None)
    if spec is not None:
        check_head_split(spec.num_attention_heads, spec.num_key_value_heads, job.ranks)
    if job.device_type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if job.ranks > visible:
            raise ValueError(f"--gpus {job.ranks} by heads but {visible} CUDA GPU(s) are visible")


def torchrun_rank() -> Optional[tuple[int, int]]:
    """(rank, world size) when started by torchrun (RANK and WORLD_SIZE set), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def launch_tensor_parallel(job: TensorJob) -> Optional[TensorResult]:
    """Run ``job`` over its ranks (module doc); raises the faulting rank's RunFault (``.report`` its partial
    report) when any rank stops."""
    _check_before_start(job)
    with tempfile.TemporaryDirectory(prefix="headplan-tp-") as folder:
        out = Path(folder)
        under_torchrun = torchrun_rank()
        if under_torchrun is not None:
            rank, world = under_torchrun
            if world != job.ranks:
                raise ValueError(f"torchrun started {world} ranks for a job of {job.ranks}")
            code = _rank_main(rank, job, out, None)
            return _collect(out, {rank: code}) if rank == 0 else None
        return _collect(out, _spawn_and_watch(job, out))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn_and_watch(job: TensorJob, out: Path) -> dict[int, Optional[int]]:
    """Start the ranks and wait; after a rank exits non-zero (or Ctrl-C here), give the others FAULT_GRACE_S,
    then terminate and kill them. Returns each rank's exit code (negative: ended by that signal)."""
    import torch.multiprocessing as mp

    context = mp.get_context(_start_method(job))
    port = _free_port()
    procs = [context.Process(target=_rank_main, args=(rank, job, out, port), daemon=False)
             for rank in range(job.ranks)]
    for proc in procs:
        proc.start()
    interrupted = False
    try:
        while any(p.exitcode is None for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            time.sleep(0.02)
    except KeyboardInterrupt:
        interrupted = True
        _forward_interrupt(procs, out)
    if interrupted or any(p.exitcode not in (None, 0) for p in procs):
        _end_all(procs)
    for proc in procs:
        proc.join()
    codes = {rank: proc.exitcode for rank, proc in enumerate(procs)}
    if interrupted and not (out / "fault.pkl").exists():
        raise RunInterrupted("interrupted while the ranks started (no partial report)")
    return codes


def _forward_interrupt(procs, out: Path) -> None:
    """Ctrl-C at a terminal reaches every rank (one process group) and each ends with its partial report; a second
    SIGINT could cut that short, so the ranks get one from here only if none has reported within a second (the
    launcher alone was interrupted)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not (out / "fault.pkl").exists():
        time.sleep(0.02)
    if not (out / "fault.pkl").exists():
        for proc in procs:
            if proc.exitcode is None:
                os.kill(proc.pid, signal.SIGINT)


def _start_method(job: TensorJob) -> str:
    """spawn on GPUs (a forked child cannot use CUDA once the parent touched it); fork for CPU ranks on Linux, after
    importing here what every rank imports anyway (transformers' model classes, DTensor and what its first dispatch
    loads), so each rank starts in well under a second instead of ~15 s of imports on a 2-core machine."""
    if job.device_type == "cuda" or "fork" not in _start_methods():
        return "spawn"
    import torch._dynamo  # noqa: F401  (DTensor's first dispatch imports it)
    import torch.distributed.tensor.parallel  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
        getattr(__import__("transformers", fromlist=[name]), name)
    return "fork"


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _end_all(procs) -> None:
    """Give the ranks FAULT_GRACE_S to end on their own, then terminate, then (KILL_GRACE_S later) kill them."""
    for grace_s, end in ((FAULT_GRACE_S, "terminate"), (KILL_GRACE_S, "kill")):
        deadline = time.monotonic() + grace_s
        while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        for proc in procs:
            if proc.exitcode is None:
                getattr(proc, end)()


def _collect(out: Path, codes: dict[int, Optional[int]]) -> TensorResult:
    """rank 0's result, or the first fault's (its partial report attached), or an error naming the exit codes."""
    if (out / "fault.pkl").exists():
        fault = pickle.loads((out / "fault.pkl").read_bytes())
        kind = {"gpu_out_of_memory": RunOutOfMemory, "interrupted": RunInterrupted}.get(fault["kind"], RunFault)
        error = kind(f"rank {fault['rank']}: {fault['message']} (the other ranks were ended: exit codes "
                     f"{codes})", fault["measurement"])
        error.report = fault["report"]
        raise error
    if not (out / "result.pkl").exists():
        errors = "; ".join(p.read_text() for p in sorted(out.glob("error-*.txt")))
        raise RuntimeError(f"tensor-parallel ranks ended without a result: exit codes {codes}"
                           + (f": {errors}" if errors else ""))
    return pickle.loads((out / "result.pkl").read_bytes())


def _rank_main(rank: int, job: TensorJob, out: Path, port: Optional[int]) -> int:
    """One rank (module doc). In a spawned process, exits with the fault's code without tearing down the
    process group (its peers may be blocked in a collective); under torchrun returns the code."""
    import torch.distributed as dist

    if port is not None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(job.ranks), LOCAL_RANK=str(rank))
    device = torch.device("cuda", rank) if job.device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # N ranks share the cores: one thread each, not N x all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.ranks))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=job.ranks)
    try:
        result, model = run_rank(rank, job, device)
    except RunFault as fault:
        _write_fault(out, rank, fault)
        if port is not None:
            os._exit(fault.exit_code)  # no teardown: the peers' collectives never complete
        return fault.exit_code
    except Exception as exc:  # e.g. a collective broken by a peer that faulted: one line, not a traceback
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        (out / f"error-{rank}.txt").write_text(f"rank {rank}: {type(exc).__name__}: {first}")
        if port is None:
            raise
        print(f"headplan run: rank {rank} ended: {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        os._exit(1)
    gathered = [None] * job.ranks if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    if rank == 0:
        (out / "result.pkl").write_bytes(pickle.dumps(merge_ranks(job, gathered, model)))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _write_fault(out: Path, rank: int, fault: RunFault) -> None:
    """The first fault's partial report (a later rank's fault does not overwrite it)."""
    path = out / "fault.pkl"
    if path.exists():
        return
    data = {"rank": rank, "kind": fault.kind, "message": str(fault), "measurement": fault.partial,
            "report": getattr(fault, "report", None)}
    tmp = out / f"fault-{rank}.tmp"
    tmp.write_bytes(pickle.dumps(data))
    try:
        os.link(tmp, path)  # atomic: the first rank to fault wins
    except FileExistsError:
        pass


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
