"""The profiler on a CUDA GPU: a tiny-size profile (seconds) checking every section ran with the executor's
backends, and the quick profile (under a minute on an H100) checking fields are positive and in plausible
ranges. No timing is asserted as a performance claim: ranges are wide sanity bounds."""

from __future__ import annotations

import dataclasses
import io

import pytest

torch = pytest.importorskip("torch")

from executor.profiler import ProfileOptions, run_profile  # noqa: E402
from executor.profiler.pinning import register_host, unregister_host  # noqa: E402
from executor.runtime.timing import measure  # noqa: E402
from hwprofiles import load_profile, write_profile  # noqa: E402

pytestmark = pytest.mark.gpu


def test_measure_with_cuda_events_is_positive():
    a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    stats = measure(lambda: a @ a, warmup=2, repeats=5, device="cuda")
    assert stats.median_s > 0 and stats.rejected_count == 0 and len(stats.samples_s) == 5


def test_register_and_unregister_host_memory():
    buffer = torch.empty(4 << 20, dtype=torch.uint8)
    buffer[::4096].fill_(1)
    register_host(buffer)
    device_copy = buffer.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    unregister_host(buffer)
    assert device_copy.numel() == buffer.numel()


@pytest.fixture(scope="module")
def tiny_gpu_run():
    return run_profile(ProfileOptions(sizes="tiny", device="cuda"), stream=io.StringIO())


def test_tiny_gpu_profile_has_every_section(tiny_gpu_run, tmp_path):
    profile = tiny_gpu_run.profile
    assert profile.origin == "measured" and profile.measurement.mode == "quick"
    assert profile.gpu_name == torch.cuda.get_device_name()
    backends = {p.backend for p in profile.attention_table}
    assert "flash" in backends
    if "cuDNN attention unavailable" not in profile.measurement.notes:
        assert "cudnn" in backends and profile.cudnn_graph_build_s is not None
        assert all(not p.causal for p in profile.attention_table if p.backend == "cudnn")
    assert all(p.causal for p in profile.attention_table if p.backend == "flash")
    directions = {(p.direction, p.host_memory, p.concurrent_with) for p in profile.transfer_table}
    assert {("h2d", "pinned", "none"), ("d2h", "pinned", "none"), ("h2d", "pageable", "none"),
            ("bidir", "pinned", "none"), ("h2d", "pinned", "matmul")} <= directions
    assert {p.method for p in profile.pinning_table} == {"torch_pin_memory", "cuda_host_register"}
    assert profile.runtime_overhead_bytes > 0
    assert profile.host_attention_call_s is not None and profile.host_attention_call_s >= 0   # pinned, CUDA event
    written = write_profile(profile, tmp_path / "gpu.json")
    assert load_profile(str(tmp_path / "gpu.json")) == written


@pytest.mark.slow
def test_quick_gpu_profile_plausible(tmp_path):
    run = run_profile(ProfileOptions(quick=True), stream=io.StringIO())
    profile = run.profile
    assert profile.measurement.mode == "quick"
    assert profile.matmul_table and profile.attention_table and profile.transfer_table and profile.pinning_table
    assert 1e12 < profile.matmul_flops_per_s < 1e16  # between a small GPU and beyond any current one
    assert 1e11 < profile.attention_flops_per_s < 1e16
    assert 1e10 < profile.hbm_bytes_per_s < 1e14
    for rate in (profile.pcie_h2d_bytes_per_s, profile.pcie_d2h_bytes_per_s, profile.pcie_bidir_total_bytes_per_s):
        assert 1e8 < rate < 1e12
    assert 1e6 < profile.pin_bytes_per_s < 1e12
    assert 1e7 < profile.runtime_overhead_bytes < 32 * 2**30
    assert 0 < profile.launch_overhead_s < 1e-3
    assert profile.sm_count == torch.cuda.get_device_properties(0).multi_processor_count
    assert all(p.flops_per_s > 0 and p.spread_rel >= 0 for p in profile.attention_table)
    backends = {p.backend for p in profile.attention_table}
    assert backends <= {"flash", "cudnn", "flash-step", "cudnn-split-step", "flex"} and "flash-step" in backends
    write_profile(profile, tmp_path / "quick.json")
    assert load_profile(str(tmp_path / "quick.json")).content_hash


def test_attention_step_section_on_gpu():
    """The executor's per-group step (attention_step.py) on a small grid: both backends, warmed up, points."""
    from executor.attention.split import cudnn_available
    from executor.profiler.attention_step import STEP_QUICK, measure_attention_step
    from executor.profiler.config import GPU_QUICK
    from executor.profiler.context import ProfileContext

    grid = dataclasses.replace(STEP_QUICK, head_dims=(64,), kv_heads=(1, 2), chunks=(1024,), pasts=(0, 2048, 6144),
                               budget_s=30.0)
    preset = dataclasses.replace(GPU_QUICK, extra_shapes=())  # the grid's own shapes only (ratio 4)
    ctx = ProfileContext(device=torch.device("cuda"), preset=preset, stream=io.StringIO())
    points = measure_attention_step(ctx, grid=grid)
    expected = {"flash-step", "cudnn-split-step"} if cudnn_available() else {"flash-step"}
    assert {p.backend for p in points} == expected
    assert len(points) == 6 * len(expected)
    assert all(p.causal and p.q_heads == 4 * p.kv_heads and p.flops_per_s > 0 for p in points)
