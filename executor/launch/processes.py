"""The launcher's side of a tensor-parallel run (executor/launch/__init__.py): one process per rank, started
here or by torchrun, watched, ended after a fault, and the result or the first fault collected."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from executor.faults import RunFault, RunInterrupted, RunOutOfMemory
from executor.launch.job import TensorJob, TensorResult, check_visible_gpus
from executor.launch.rank import merge_ranks, run_rank

FAULT_GRACE_S = 5.0
"""seconds the launcher lets the other ranks end by themselves after one faulted, before terminating them"""
KILL_GRACE_S = 3.0
"""seconds between SIGTERM and SIGKILL"""


def _check_before_start(job: TensorJob) -> None:
    """What can be refused before any process starts: GPUs not visible; a split that does not divide the heads
    (from the model spec where the factory has one; else each rank checks its config)."""
    from planner.tensor_parallel import check_head_split

    spec = getattr(job.model, "spec", None) or getattr(job.plan, "model", None)
    if spec is not None:
        check_head_split(spec.num_attention_heads, spec.num_key_value_heads, job.ranks)
    check_visible_gpus(job)


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


