"""planner/share_rebalance.py: the CPU share chosen again from the kernel rate a run measured. The plan's own rate
keeps F; a slower kernel lowers it, a faster one never lowers it; a plan without a share, or on several GPUs, has
nothing to re-balance; the scaled profile changes the CPU rates only."""

from __future__ import annotations

import pytest

from hwprofiles import load_profile
from planner.builtin_models import BUILTIN_MODELS
from planner.host_share import scaled_cpu_rates
from planner.share_rebalance import MIN_RATE_CHANGE, planned_job, rebalanced_share
from planner.solver import make_plan

H200 = load_profile("h200-sxm-measured")


@pytest.fixture(scope="module")
def plan():
    """Llama-3-8B at 128K under 24 GB on the H200's profile: F 0.3 (docs/cpu-share.md)."""
    made = make_plan(BUILTIN_MODELS["llama-3-8b"], H200, context_tokens=131072, decode_tokens=16,
                     gpu_mem_bytes=24 * 10**9)
    assert made.cpu_share > 0
    return made


def jobs_at(plan, kernel_factor: float) -> float:
    """The jobs' rate (bytes over job seconds) a run shows with its kernel at ``kernel_factor`` x the planned rate:
    each job's fixed cost host_attention_call_s beside it."""
    job = planned_job(plan)
    return job.bytes_per_job / (job.bytes_per_job / (kernel_factor * job.kernel_bytes_per_s) + job.call_s)


def test_the_planned_rate_keeps_the_share(plan):
    planned = planned_job(plan).kernel_bytes_per_s
    assert 10e9 < planned < 80e9                                   # a contended kernel rate of the H200's host
    for factor in (1.0, 1 - MIN_RATE_CHANGE / 2, 1 + MIN_RATE_CHANGE / 2):
        decision = rebalanced_share(plan, jobs_at(plan, factor))
        assert decision.share == plan.cpu_share and decision.reason.startswith("kept")


def test_jobs_are_compared_with_jobs():
    """The H200's rebalanced 128K run of 2026-12-01: its jobs read 25.7 GB/s in the first 4 tokens, 0.69x the
    kernel's 37.5 but 0.93x the 27.7 a job shows at that rate with its 1.03 ms fixed cost: F is kept."""
    plan = make_plan(BUILTIN_MODELS["llama-3-8b"], H200, context_tokens=131072, decode_tokens=16,
                     gpu_mem_bytes=24 * 10**9, chunk_size=8192, heads_per_group=2, resident_kv_heads=83)
    job = planned_job(plan)
    assert job.call_s == pytest.approx(H200.host_attention_call_s)
    assert job.job_bytes_per_s < 0.8 * job.kernel_bytes_per_s
    assert job.kernel_rate_of(job.job_bytes_per_s) == pytest.approx(job.kernel_bytes_per_s)
    decision = rebalanced_share(plan, 25.7e9)
    assert decision.share == plan.cpu_share and decision.planned_cpu_bytes_per_s == pytest.approx(job.job_bytes_per_s)


def test_a_slower_kernel_lowers_the_share_and_a_faster_one_never_does(plan):
    slow, slower, fast = (rebalanced_share(plan, jobs_at(plan, f)) for f in (0.6, 0.2, 1.6))
    assert slower.share <= slow.share < plan.cpu_share
    assert fast.share >= plan.cpu_share
    assert slow.measured_cpu_bytes_per_s == pytest.approx(jobs_at(plan, 0.6)) and "0.60x" in slow.reason
    assert rebalanced_share(plan, 0.0) is None


def test_nothing_to_rebalance_without_a_share_or_on_several_gpus(plan):
    assert rebalanced_share(plan.model_copy(update={"cpu_share": 0.0}), 30e9) is None
    assert rebalanced_share(plan.model_copy(update={"gpus": 2}), 5e9) is None


def test_the_scaled_profile_scales_the_cpu_rates_only():
    scaled = scaled_cpu_rates(H200, 0.5)
    for a, b in zip(H200.cpu_attention_table, scaled.cpu_attention_table):
        assert b.bytes_per_s == pytest.approx(a.bytes_per_s / 2) and b.key_tokens == a.key_tokens
    for a, b in zip(H200.host_concurrency_table, scaled.host_concurrency_table):
        assert b.cpu_read_bytes_per_s == pytest.approx(a.cpu_read_bytes_per_s / 2)
        assert b.h2d_bytes_per_s == a.h2d_bytes_per_s
    assert scaled.attention_table == H200.attention_table and scaled.pcie_h2d_bytes_per_s == H200.pcie_h2d_bytes_per_s
