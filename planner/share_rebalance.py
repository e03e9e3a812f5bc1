"""Decode's CPU share F chosen again during a run, from the rate the CPU's kernel reaches in that process. No torch.

The profile prices the kernel from short measurements; a run's kernel reads at its own rate, which moved by up to
64% between processes of one plan on the H200 (2026-12-01: 8.5 and 23.5 GB/s, Llama-3-8B at 128K, F 0.15; the
decode 228 and 184 ms per token against 179 predicted). After REBALANCE_AFTER_TOKENS decode tokens the executor
measures j_run (the CPU share's bytes over its jobs' seconds) and asks ``rebalanced_share``:

    b        bytes per job: 2 x the layer's offloaded heads x F s keys x d x element bytes
    c_plan   the kernel rate the plan priced, at the plan's F (planner/host_share.py HostShareRates.cpu_bytes_per_s,
             contended, at F s keys per head and the layers' offloaded heads)
    t_call   the profile's fixed cost per job (host_attention_call_s): a job's seconds are b / c + t_call, so the
             plan's job rate is j_plan = b / (b / c_plan + t_call)
    c_run    the run's kernel rate as the table prices it: b / (b / j_run - t_call)
    factor   k = c_run / c_plan
    F'       the planner's own choice of F (candidates.choose_cpu_share: the grid, the balance point, MIN_GAIN)
             for the plan's knobs on the profile with every CPU-attention rate scaled by k

and keeps F when |k - 1| < MIN_RATE_CHANGE or F' equals it. Only F changes: the stores, the knobs and prefill do not.
(Comparing j_run with c_plan itself, as before 2026-12-01's last H200 runs, read a run at the profile's speed as
~0.75x at 128K, F 0.3, where t_call is a quarter of each job.)
Leaves out: measuring j_run and switching the share (executor/generation/loop.py RunLoop.rebalance_share).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hwprofiles.schema import HardwareProfile
from planner.candidates import Candidate, make_setup, time_candidate
from planner.host_share import host_share_rates, host_tokens, scaled_cpu_rates
from planner.memory_model import dtype_bytes
from planner.model_spec import ModelSpec
from planner.plan import Plan

REBALANCE_AFTER_TOKENS = 4
"""decode tokens before the rate is read: the first ones pay the worker's and the pools' first-time costs"""
MAX_RATE_FACTOR = 10.0
"""the fastest a run's kernel is read against the plan's (PricedJob.kernel_rate_of)"""
MIN_RATE_CHANGE = 0.15
"""re-plan only when the run's kernel rate is this far from the plan's (the profile's figures spread ~10%)"""


@dataclass(frozen=True)
class Rebalance:
    """One decision: the plan's F and job rate (j_plan), the run's job rate (j_run), and the share from now on
    (``share`` == ``planned``: kept)."""

    planned_share: float
    planned_cpu_bytes_per_s: float
    measured_cpu_bytes_per_s: float
    share: float
    reason: str


@dataclass(frozen=True)
class PricedJob:
    """One layer's CPU job as the plan prices it (module docstring): b, c_plan and t_call."""

    bytes_per_job: float
    kernel_bytes_per_s: float
    call_s: float

    @property
    def job_bytes_per_s(self) -> float:
        """j_plan = b / (b / c_plan + t_call): the rate a run's jobs show at the profile's speed."""
        return self.bytes_per_job / (self.bytes_per_job / self.kernel_bytes_per_s + self.call_s)

    def kernel_rate_of(self, job_bytes_per_s: float) -> float:
        """c_run = b / (b / j_run - t_call), the run's jobs less their fixed cost, at most MAX_RATE_FACTOR x c_plan
        (jobs shorter than the fixed cost alone: this process's t_call is below the profile's, and the run is
        faster than planned)."""
        kernel_s = self.bytes_per_job / job_bytes_per_s - self.call_s
        floor_s = self.bytes_per_job / (MAX_RATE_FACTOR * self.kernel_bytes_per_s)
        return self.bytes_per_job / max(kernel_s, floor_s)


def planned_job(plan: Plan) -> Optional[PricedJob]:
    """The plan's CPU job (PricedJob), None without a share or CPU figures."""
    return priced_job(plan.model, plan.hardware, dtype=plan.dtype, context_tokens=plan.context_tokens,
                      decode_tokens=plan.decode_tokens, cpu_share=plan.cpu_share,
                      resident_kv_heads=plan.resident_kv_heads)


def priced_job(model: ModelSpec, hardware: HardwareProfile, *, dtype: str, context_tokens: int,
               decode_tokens: int, cpu_share: float, resident_kv_heads: int) -> Optional[PricedJob]:
    """planned_job for a configuration given by its knobs (a run's as-run settings): c_plan at F s keys per head
    (s the context plus half the decode) over the mean offloaded heads per layer."""
    if cpu_share <= 0:
        return None
    element = dtype_bytes(dtype)
    rates = host_share_rates(hardware, head_dim=model.head_dim, element_bytes=element)
    if rates is None:
        return None
    past = context_tokens + max(decode_tokens - 1, 0) / 2
    offloaded = max(1, round(model.kv_head_slots / model.num_hidden_layers
                             - resident_kv_heads / model.num_hidden_layers))
    keys = max(host_tokens(cpu_share, past), 1.0)
    return PricedJob(bytes_per_job=2 * offloaded * keys * model.head_dim * element,
                     kernel_bytes_per_s=float(rates.cpu_bytes_per_s(keys, offloaded)), call_s=rates.call_s)


def rebalanced_share(plan: Plan, measured_cpu_bytes_per_s: float) -> Optional[Rebalance]:
    """The share from now on for a run whose CPU kernel reads at ``measured_cpu_bytes_per_s`` (module docstring);
    None when the plan has no CPU share to re-balance, or runs on several GPUs (one stage's share is not the
    pipeline's)."""
    job = planned_job(plan)
    if job is None or measured_cpu_bytes_per_s <= 0 or plan.gpus > 1:
        return None
    planned = job.job_bytes_per_s
    factor = job.kernel_rate_of(measured_cpu_bytes_per_s) / job.kernel_bytes_per_s
    if abs(factor - 1.0) < MIN_RATE_CHANGE:
        return Rebalance(plan.cpu_share, planned, measured_cpu_bytes_per_s, plan.cpu_share,
                         f"kept F {plan.cpu_share:g}: the kernel read {factor:.2f}x the planned rate")
    hardware = scaled_cpu_rates(plan.hardware, factor)
    setup = make_setup(plan.model, hardware, context_tokens=plan.context_tokens, decode_tokens=plan.decode_tokens,
                       gpu_mem_bytes=plan.memory.gpu_budget_bytes, host_mem_bytes=plan.memory.host_budget_bytes,
                       dtype=plan.dtype, attention_backend=plan.attention_backend, decode_graphs=plan.decode_graphs,
                       past_cut=plan.past_cut, compile_layers=plan.compile_layers)
    cand = Candidate.build(setup, plan.strategy, plan.chunk_size, plan.heads_per_group, plan.resident_kv_heads)
    time_candidate(setup, cand, backend=plan.attention_backend, chunk_backend=plan.chunk_backend)
    return Rebalance(plan.cpu_share, planned, measured_cpu_bytes_per_s, cand.cpu_share,
                     f"the kernel read {factor:.2f}x the planned rate: {cand.cpu_share_reason}")
