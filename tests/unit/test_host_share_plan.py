"""The planner's CPU share of decode attention (planner/host_share.py): chosen where the host can pay, 0 where it
cannot or where the profile has no CPU-attention figures, fixed when asked; the streamed bytes fall by (1 - F)."""

import pytest

from hwprofiles.schema import CpuAttentionPoint, HostConcurrencyPoint
from planner.host_share import choose_share, host_share_rates
from planner.model_spec import load_model_spec
from planner.solver import make_plan
from planner.units import GIB
from tests.unit.planner_test_profiles import G, scalar_profile

MODEL = load_model_spec("llama-3-8b")


def cpu_profile(kernel_gbs: float, *, dma_gbs: float | None = None, cpu_read_gbs: float | None = None,
                handoff_s: float = 20e-6):
    """A 25 GB/s PCIe link, a 24 GB card and a host whose kernel reads KV at ``kernel_gbs``."""
    points = [CpuAttentionPoint(threads=16, kv_heads=8, ratio=4, key_tokens=k, head_dim=128,
                                bytes_per_s=kernel_gbs * G) for k in (32768, 1 << 20)]
    concurrency = []
    if dma_gbs is not None:
        concurrency = [HostConcurrencyPoint(cpu_threads=16, h2d_bytes_per_s=dma_gbs * G,
                                            cpu_read_bytes_per_s=cpu_read_gbs * G, h2d_alone_bytes_per_s=25 * G,
                                            cpu_alone_bytes_per_s=kernel_gbs * G)]
    return scalar_profile(cpu_attention_table=points, host_concurrency_table=concurrency,
                          host_read_bytes_per_s=80 * G, host_read_threads=16, host_share_handoff_s=handoff_s,
                          host_mem_bytes=200 * GIB)


def plan(profile, **kw):
    return make_plan(MODEL, profile, context_tokens=524288, decode_tokens=8, gpu_mem_bytes=24 * GIB, **kw)


def test_old_profile_keeps_share_zero():
    chosen = plan(scalar_profile(host_mem_bytes=200 * GIB))
    assert chosen.cpu_share == 0.0
    assert any("no CPU-attention figures" in note for note in chosen.notes)


def test_fast_host_takes_a_share_and_decodes_faster():
    profile = cpu_profile(60.0)
    chosen = plan(profile)
    streamed = plan(profile, cpu_share=0.0, resident_kv_heads=chosen.resident_kv_heads,
                    heads_per_group=chosen.heads_per_group, chunk_size=chosen.chunk_size)
    assert 0.5 < chosen.cpu_share < 0.9                      # balance: 60 / (60 + 25) = 0.71
    assert chosen.predicted.decode_s_per_token < 0.7 * streamed.predicted.decode_s_per_token
    bytes_full = streamed.predicted.terms["decode_h2d_bytes"]
    bytes_left = chosen.predicted.terms["decode_h2d_bytes"]
    assert bytes_left == pytest.approx(bytes_full * (1 - chosen.cpu_share), rel=1e-3)
    assert chosen.predicted.terms["decode_host_share_bytes"] == pytest.approx(bytes_full * chosen.cpu_share,
                                                                               rel=1e-3)


def test_contention_lowers_the_gain():
    free, shared = plan(cpu_profile(60.0)), plan(cpu_profile(60.0, dma_gbs=17.5, cpu_read_gbs=56.0))
    assert shared.predicted.decode_s_per_token > free.predicted.decode_s_per_token


def test_slow_host_keeps_share_zero():
    chosen = plan(cpu_profile(0.2))
    assert chosen.cpu_share == 0.0
    assert any("CPU share 0: the best share" in note for note in chosen.notes)


def test_huge_handoff_keeps_share_zero():
    assert plan(cpu_profile(60.0, handoff_s=1.0)).cpu_share == 0.0


def test_fixed_share_is_honoured():
    chosen = plan(cpu_profile(60.0), cpu_share=0.25)
    assert chosen.cpu_share == 0.25
    assert any("fixed by --cpu-share" in note for note in chosen.notes)


def test_choose_share_prefers_zero_on_a_tie():
    rates = host_share_rates(cpu_profile(60.0), head_dim=128, element_bytes=2)
    choice = choose_share(lambda share: 1.0, rates, fixed=None, balance_share=0.5)
    assert choice.share == 0.0


def test_plan_json_round_trip(tmp_path):
    from planner.plan import read_plan, write_plan
    chosen = plan(cpu_profile(60.0))
    write_plan(chosen, tmp_path / "plan.json")
    assert read_plan(tmp_path / "plan.json").cpu_share == chosen.cpu_share
