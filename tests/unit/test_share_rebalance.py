"""planner/share_rebalance.py: the CPU share chosen again from the kernel rate a run measured. The plan's own rate
keeps F; a slower kernel lowers it, a faster one never lowers it; a plan without a share, or on several GPUs, has
nothing to re-balance; the scaled profile changes the CPU rates only."""

from __future__ import annotations

import pytest

from hwprofiles import load_profile
from planner.builtin_models import BUILTIN_MODELS
from planner.share_rebalance import MIN_RATE_CHANGE, scaled_cpu_rates, planned_cpu_bytes_per_s, rebalanced_share
from planner.solver import make_plan

H200 = load_profile("h200-sxm-measured")


@pytest.fixture(scope="module")
def plan():
    """Llama-3-8B at 128K under 24 GB on the H200's profile: F 0.3 (docs/cpu-share.md)."""
    made = make_plan(BUILTIN_MODELS["llama-3-8b"], H200, context_tokens=131072, decode_tokens=16,
                     gpu_mem_bytes=24 * 10**9)
    assert made.cpu_share > 0
    return made


def test_the_planned_rate_keeps_the_share(plan):
    planned = planned_cpu_bytes_per_s(plan)
    assert 10e9 < planned < 80e9                                   # a contended kernel rate of the H200's host
    for factor in (1.0, 1 - MIN_RATE_CHANGE / 2, 1 + MIN_RATE_CHANGE / 2):
        decision = rebalanced_share(plan, planned * factor)
        assert decision.share == plan.cpu_share and decision.reason.startswith("kept")


def test_a_slower_kernel_lowers_the_share_and_a_faster_one_never_does(plan):
    planned = planned_cpu_bytes_per_s(plan)
    slow, slower, fast = (rebalanced_share(plan, planned * f) for f in (0.6, 0.2, 1.6))
    assert slower.share <= slow.share < plan.cpu_share
    assert fast.share >= plan.cpu_share
    assert slow.measured_cpu_bytes_per_s == pytest.approx(planned * 0.6) and "0.60x" in slow.reason
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
