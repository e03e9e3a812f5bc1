"""planner/hw_lookup.py: interpolation in the measured tables, and the scalar fallbacks."""

import math

import numpy as np
import pytest

from planner.hw_lookup import FULL_RATE_QUERY_ROWS, RateLookup, wave_efficiency
from planner.units import GIB

from hwprofiles.schema import AttentionPoint

from planner_test_profiles import G, T, scalar_profile, table_profile


def test_attention_exact_at_points_and_log_linear_between():
    lookup = RateLookup(table_profile())
    rate = lambda k: float(lookup.attention_flops_per_s(backend="flash", q_heads=4, q_len=8192, k_len=k,
                                                        head_dim=128, causal=True))
    assert rate(131072) == pytest.approx(200 * T)
    assert rate(524288) == pytest.approx(300 * T)
    assert rate(262144) == pytest.approx(250 * T, rel=1e-3)          # halfway in log2(k_len)
    assert rate(16384) == pytest.approx(200 * T) and rate(1 << 24) == pytest.approx(300 * T)   # clamped


def test_attention_array_and_shape_blend():
    lookup = RateLookup(table_profile())
    rates = lookup.attention_flops_per_s(backend="flash", q_heads=8, q_len=8192, k_len=np.array([131072, 524288]),
                                         head_dim=128, causal=True)
    assert rates.shape == (2,)
    assert rates[0] == pytest.approx(200 * T) and rates[1] == pytest.approx(300 * T)


def test_attention_small_rows_derated():
    lookup = RateLookup(table_profile())
    full = lookup.attention_flops_per_s(backend="flash", q_heads=4, q_len=8192, k_len=131072, head_dim=128,
                                        causal=True)
    quarter = lookup.attention_flops_per_s(backend="flash", q_heads=4, q_len=2048, k_len=131072, head_dim=128,
                                           causal=True)
    assert float(quarter) == pytest.approx(float(full) / 4, rel=1e-6)


def test_wave_efficiency_counts_the_last_wave():
    assert wave_efficiency(4, 4096, 132) == pytest.approx(128 / 132)         # 128 tiles: one wave
    assert wave_efficiency(4, 6144, 132) == pytest.approx(192 / 264)         # 192 tiles: two waves, the 2nd part-full
    assert wave_efficiency(4, 6100, 132) == wave_efficiency(4, 6144, 132)    # a part tile is a whole tile
    assert wave_efficiency(1, 128, 132) == pytest.approx(1 / 132)
    assert wave_efficiency(4, 6144, None) == 1.0


def _wave_profile(sm_count):
    """cuDNN points at 4 query heads, 4K and 10K queries, each at its shape's wave efficiency x 700 TFLOP/s."""
    points = [AttentionPoint(backend="cudnn", head_dim=128, q_heads=4, kv_heads=1, q_len=q, k_len=k, causal=False,
                             flops_per_s=700 * T * wave_efficiency(4, q, 132))
              for q in (4096, 10240) for k in (65536, 524288)]
    return table_profile(cudnn_tflops=None, attention_table=points, sm_count=sm_count)


def test_attention_between_shapes_keeps_the_waves():
    """The H200 case: 6K chunks at 1 KV head per group (192 tiles on 132 SMs) ran 16% under the rates blended from
    the 4K and 10K points; with the SM count the lookup prices the idle part of the second wave."""
    rate = lambda profile, q: float(RateLookup(profile).attention_flops_per_s(
        backend="cudnn", q_heads=4, q_len=q, k_len=131072, head_dim=128, causal=False))
    waves = _wave_profile(132)
    for q in (4096, 10240):                                                  # exact at the measured shapes
        assert rate(waves, q) == pytest.approx(700 * T * wave_efficiency(4, q, 132))
    assert rate(waves, 6144) == pytest.approx(700 * T * 192 / 264)
    assert rate(waves, 1024) == pytest.approx(700 * T * 32 / 132)             # few tiles: SMs idle in proportion
    blended = rate(_wave_profile(None), 6144)                                # without it: between the two points
    assert min(rate(waves, 4096), rate(waves, 10240)) < blended < rate(waves, 4096)


def test_attention_fallbacks():
    lookup = RateLookup(scalar_profile())
    rate = lookup.attention_flops_per_s(backend="flash", q_heads=32, q_len=8192, k_len=4096, head_dim=128,
                                        causal=True)
    assert float(rate) == pytest.approx(100 * T)
    small = lookup.attention_flops_per_s(backend="flash", q_heads=1, q_len=FULL_RATE_QUERY_ROWS // 2, k_len=4096,
                                         head_dim=128, causal=True)
    assert float(small) == pytest.approx(50 * T)
    assert lookup.attention_flops_per_s(backend="cudnn", q_heads=4, q_len=8192, k_len=4096, head_dim=128,
                                        causal=False) is None
    assert not lookup.has_backend("cudnn") and RateLookup(table_profile()).has_backend("cudnn")
    assert not RateLookup(table_profile(cudnn_tflops=None)).has_backend("cudnn")
    # another head dim / causal flag: the nearest measured one is used
    other = RateLookup(table_profile()).attention_flops_per_s(backend="cudnn", q_heads=4, q_len=8192,
                                                              k_len=131072, head_dim=64, causal=True)
    assert float(other) == pytest.approx(600 * T)


def test_transfer_bandwidth_by_size():
    lookup = RateLookup(table_profile())
    assert float(lookup.transfer_bytes_per_s("h2d", 1 << 20)) == pytest.approx(20 * G)
    assert float(lookup.transfer_bytes_per_s("h2d", 1 << 25)) == pytest.approx(35 * G)   # halfway in log2
    assert float(lookup.transfer_bytes_per_s("d2h", 1 << 34)) == pytest.approx(50 * G)   # clamped
    assert float(RateLookup(scalar_profile()).transfer_bytes_per_s("h2d", 123)) == pytest.approx(25 * G)


def test_matmul_and_pinning():
    assert float(RateLookup(scalar_profile()).matmul_flops_per_s(1024, 4096, 4096)) == pytest.approx(160 * T)
    assert RateLookup(table_profile()).pin_seconds(8 * GIB) == pytest.approx(2.0)
    assert RateLookup(scalar_profile()).pin_seconds(8 * 10**9) == pytest.approx(2.0)
    assert RateLookup(scalar_profile()).pin_seconds(0) == 0.0
    assert math.isfinite(RateLookup(table_profile()).pin_seconds(1))


def test_step_points_are_their_own_backend():
    from hwprofiles.schema import AttentionPoint
    from planner.hw_lookup import step_backend_name

    base = table_profile()
    step = AttentionPoint(backend="flash-step", head_dim=128, q_heads=4, kv_heads=1, q_len=8192, k_len=139264,
                          causal=True, flops_per_s=150 * T)
    lookup = RateLookup(base.model_copy(update={"attention_table": list(base.attention_table) + [step]}))
    assert step_backend_name("cudnn-split") == "cudnn-split-step"
    assert lookup.has_step_points("flash") and not lookup.has_step_points("cudnn-split")
    assert not RateLookup(base).has_step_points("flash")
    rate = lookup.attention_flops_per_s(backend="flash-step", q_heads=4, q_len=8192, k_len=1 << 20, head_dim=128,
                                        causal=True)
    assert float(rate) == pytest.approx(150 * T)                       # clamped at its only point
    kernel = lookup.attention_flops_per_s(backend="flash", q_heads=4, q_len=8192, k_len=131072, head_dim=128,
                                          causal=True)
    assert float(kernel) == pytest.approx(200 * T)                     # kernel points unchanged by step points


def test_transfer_curve_keeps_the_better_page_locked_measurement():
    """At each size the better of registered and pinned points (a disturbed measurement only slows a copy), then
    non-decreasing in size; pageable points never count."""
    from hwprofiles.schema import TransferPoint

    points = [TransferPoint(direction="h2d", host_memory=kind, size_bytes=size, bytes_per_s=rate * G)
              for kind, size, rate in (("registered", 1 << 24, 44.0), ("pinned", 1 << 24, 52.0),
                                       ("registered", 1 << 26, 29.0), ("pinned", 1 << 26, 51.0),
                                       ("registered", 1 << 28, 54.0), ("pageable", 1 << 28, 90.0))]
    lookup = RateLookup(table_profile(transfer_table=points))
    assert float(lookup.transfer_bytes_per_s("h2d", 1 << 24)) == pytest.approx(52 * G)
    assert float(lookup.transfer_bytes_per_s("h2d", 1 << 26)) == pytest.approx(52 * G)   # running maximum
    assert float(lookup.transfer_bytes_per_s("h2d", 1 << 28)) == pytest.approx(54 * G)   # not the pageable 90


def test_the_planner_prices_a_part_filled_wave():
    """Llama-3-8B at 512K under 24 GB on the H200's profile: c 6K, G 1 (192 tiles on 132 SMs) ran 16% over its
    price when the lookup averaged the waves away (159.0 s against 136.7); with the SM count it is priced above
    c 8K, G 1 (256 tiles), and the planner does not choose it."""
    from hwprofiles import load_profile
    from planner.builtin_models import BUILTIN_MODELS
    from planner.solver import evaluate, make_plan

    h200 = load_profile("h200-sxm-measured")
    assert h200.sm_count == 132
    common = dict(context_tokens=512 * 1024, decode_tokens=16, gpu_mem_bytes=24 * 10**9, host_mem_bytes=None,
                  dtype="bfloat16", heads_per_group=1, resident_kv_heads=19, attention_backend="cudnn-split")
    model = BUILTIN_MODELS["llama-3-8b"]
    six = evaluate(model, h200, chunk_size=6144, **common)[2].prefill_s
    eight = evaluate(model, h200, chunk_size=8192, **common)[2].prefill_s
    blended = evaluate(model, h200.model_copy(update={"sm_count": None}), chunk_size=6144, **common)[2].prefill_s
    assert six > 1.1 * eight and six > 1.1 * blended
    plan = make_plan(model, h200, context_tokens=512 * 1024, decode_tokens=16, gpu_mem_bytes=24 * 10**9)
    assert (plan.chunk_size, plan.heads_per_group) != (6144, 1)
