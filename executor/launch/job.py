"""What a tensor-parallel job is (pickled to every rank), what it returns, and what is refused before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from executor.generation.measurement import Measurement
from executor.report.schema import RunReport


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
    check_visible_gpus(job)
    if job.resident_per_rank is not None and len(job.resident_per_rank) != job.ranks:
        raise ValueError(f"{len(job.resident_per_rank)} resident counts for {job.ranks} ranks")


def check_visible_gpus(job: TensorJob) -> None:
    """ValueError when a CUDA job asks for more ranks than there are visible GPUs."""
    if job.device_type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if job.ranks > visible:
            raise ValueError(f"--gpus {job.ranks} by heads but {visible} CUDA GPU(s) are visible")
