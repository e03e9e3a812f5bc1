"""The planner's CPU share of decode attention (planner/host_share.py): chosen where the host can pay, 0 where it
cannot or where the profile has no CPU-attention figures, fixed when asked; the streamed bytes fall by (1 - F)."""

import pytest

from hwprofiles.schema import CpuAttentionPoint, HostConcurrencyPoint
from planner.host_share import choose_share, host_share_rates, scaled_cpu_rates
from planner.model_spec import load_model_spec
from planner.solver import make_plan
from planner.units import GIB
from tests.unit.planner_test_profiles import G, scalar_profile

MODEL = load_model_spec("llama-3-8b")


def cpu_profile(kernel_gbs: float, *, dma_gbs: float | None = None, cpu_read_gbs: float | None = None,
                handoff_s: float = 20e-6, call_s: float | None = None):
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
                          host_attention_call_s=call_s, host_mem_bytes=200 * GIB)


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


def test_key_blocks_split_tasks_evenly_over_the_threads():
    from planner.host_share import key_blocks, task_balance
    # 6 offloaded heads on 16 threads: the old rule cut 11 blocks (66 tasks, 5 on the busiest thread: 0.825)
    assert task_balance(66, 16) == pytest.approx(66 / 80)
    for heads, threads in [(6, 16), (8, 16), (8, 15), (6, 15), (2, 15)]:
        blocks = key_blocks(1 << 20, heads, threads)
        assert task_balance(heads * blocks, threads) == 1.0
    assert key_blocks(1 << 20, 8, 16) == 8           # unchanged where it was even: 64 tasks, 4 per thread
    assert key_blocks(100, 8, 16) == 1 and key_blocks(0, 8, 16) == 0


def run_threads_profile(*, kernel15_gbs: float, kernel16_gbs: float, during15_gbs: float, alone15_gbs: float):
    """A host with kernel points at 15 and 16 threads and a concurrency point at each (16: no contention)."""
    points = [CpuAttentionPoint(threads=t, kv_heads=8, ratio=4, key_tokens=k, head_dim=128, bytes_per_s=rate * G)
              for t, rate in ((15, kernel15_gbs), (16, kernel16_gbs)) for k in (32768, 1 << 20)]
    concurrency = [HostConcurrencyPoint(cpu_threads=15, h2d_bytes_per_s=20 * G, cpu_read_bytes_per_s=during15_gbs * G,
                                        h2d_alone_bytes_per_s=25 * G, cpu_alone_bytes_per_s=alone15_gbs * G),
                   HostConcurrencyPoint(cpu_threads=16, h2d_bytes_per_s=25 * G, cpu_read_bytes_per_s=60 * G,
                                        h2d_alone_bytes_per_s=25 * G, cpu_alone_bytes_per_s=50 * G)]
    return scalar_profile(cpu_attention_table=points, host_concurrency_table=concurrency,
                          host_read_bytes_per_s=80 * G, host_read_threads=16, host_share_handoff_s=20e-6,
                          host_mem_bytes=200 * GIB)


def test_rates_are_read_at_the_runs_threads_with_their_contention():
    profile = run_threads_profile(kernel15_gbs=40.0, kernel16_gbs=60.0, during15_gbs=30.0, alone15_gbs=40.0)
    rates = host_share_rates(profile, head_dim=128, element_bytes=2)
    assert rates.threads == 15                        # cores - 1: the executor's default (host_read_threads - 1)
    assert rates.cpu_factor == pytest.approx(0.75)    # the 15-thread pair, not the 16-thread one (60 / 50 > 1)
    assert rates.dma_factor == pytest.approx(0.8)
    assert rates.cpu_bytes_per_s(131072) == pytest.approx(40.0 * G * 0.75)


def test_kernel_level_is_the_concurrency_probes_absolute_rate():
    """The worker's kernel beside the fetches (30) against the back-to-back table (60), not against the same worker
    alone (40): the probe's absolute rate is what decode gets, the table only its shape over key length."""
    profile = run_threads_profile(kernel15_gbs=60.0, kernel16_gbs=60.0, during15_gbs=30.0, alone15_gbs=40.0)
    rates = host_share_rates(profile, head_dim=128, element_bytes=2)
    assert rates.cpu_factor == pytest.approx(0.5)
    assert rates.cpu_bytes_per_s(131072) == pytest.approx(30.0 * G)


def test_a_factor_above_one_is_capped():
    profile = run_threads_profile(kernel15_gbs=40.0, kernel16_gbs=60.0, during15_gbs=50.0, alone15_gbs=40.0)
    assert host_share_rates(profile, head_dim=128, element_bytes=2).cpu_factor == 1.0


def test_fewer_heads_pay_for_an_uneven_split():
    rates = host_share_rates(cpu_profile(60.0), head_dim=128, element_bytes=2)   # 16 threads (no 15 in the table)
    assert rates.threads == 16
    # 4096 keys: at most 2 blocks; 8 heads -> 16 tasks (even), 6 heads -> 12 tasks on 16 threads (0.75)
    assert rates.cpu_bytes_per_s(4096, 6) == pytest.approx(rates.cpu_bytes_per_s(4096) * 0.75)
    assert rates.cpu_bytes_per_s(1 << 19, 6) == pytest.approx(rates.cpu_bytes_per_s(1 << 19))


def test_contended_rate_below_break_even_keeps_share_zero():
    # alone the kernel would pay (60 GB/s beside a 25 GB/s link); beside the run's DMA and issue it reads 3 GB/s
    fast_alone = run_threads_profile(kernel15_gbs=60.0, kernel16_gbs=60.0, during15_gbs=60.0, alone15_gbs=60.0)
    assert plan(fast_alone).cpu_share > 0
    starved = run_threads_profile(kernel15_gbs=60.0, kernel16_gbs=60.0, during15_gbs=3.0, alone15_gbs=60.0)
    chosen = plan(starved)
    assert chosen.cpu_share == 0.0
    assert any("CPU share 0: the best share" in note and "measured contention" in note for note in chosen.notes)


def test_call_cost_is_priced_per_layer_and_named_in_the_note():
    fixed = dict(cpu_share=0.9, resident_kv_heads=0, heads_per_group=2, chunk_size=4096)   # the CPU side binds
    free, costly = plan(cpu_profile(60.0), **fixed), plan(cpu_profile(60.0, call_s=1.4e-3), **fixed)
    layers = MODEL.num_hidden_layers
    assert (costly.predicted.terms["decode_host_share_s"] - free.predicted.terms["decode_host_share_s"] ==
            pytest.approx(layers * 1.4e-3, rel=1e-6))
    assert costly.predicted.decode_s_per_token > free.predicted.decode_s_per_token
    assert any("1.40 ms fixed cost per layer's CPU call" in note for note in costly.notes)
    assert any("no fixed cost per CPU call measured" in note for note in plan(cpu_profile(60.0)).notes)


def test_a_larger_call_cost_never_raises_the_chosen_share():
    for kernel_gbs in (30.0, 60.0):
        shares = [plan(cpu_profile(kernel_gbs, call_s=call_s)).cpu_share
                  for call_s in (None, 0.0, 0.5e-3, 1.4e-3, 5e-3, 20e-3)]
        assert shares[0] == shares[1] and shares[0] > 0
        assert all(later <= earlier for earlier, later in zip(shares, shares[1:]))


def test_a_call_cost_that_eats_the_gain_keeps_share_zero():
    # streamed 512K at 25 GB/s: ~2 s per token; 32 layers x 0.2 s per call costs more than any share saves
    chosen = plan(cpu_profile(60.0, call_s=0.2))
    assert chosen.cpu_share == 0.0
    assert any("CPU share 0: the best share" in note and "200.00 ms fixed cost" in note for note in chosen.notes)


def test_the_call_cost_field_leaves_older_profiles_and_their_hash_alone():
    from hwprofiles import known_profiles, load_profile
    from hwprofiles.schema import profile_hash, with_hash

    for name in known_profiles():
        profile = load_profile(name)
        assert profile.content_hash == profile_hash(profile)
        if name != "h200-sxm-measured":  # the one catalog profile re-measured with the field
            assert profile.host_attention_call_s is None
    base = with_hash(cpu_profile(60.0))
    measured = with_hash(cpu_profile(60.0, call_s=1.4e-3))
    assert base.content_hash != measured.content_hash
    assert base.content_hash == with_hash(cpu_profile(60.0, call_s=None)).content_hash


def test_a_plan_with_a_share_is_priced_on_a_slower_host_too():
    """The "slow host" note: the chosen knobs and F on the profile with every CPU rate x SLOW_HOST_FACTOR
    (planner/solver.py slow_host_note) beside F = 0; a plan without a share has no such note."""
    import re

    from planner.solver import SLOW_HOST_FACTOR

    profile = cpu_profile(60.0)
    chosen = plan(profile)
    knobs = dict(resident_kv_heads=chosen.resident_kv_heads, heads_per_group=chosen.heads_per_group,
                 chunk_size=chosen.chunk_size)
    slow = plan(scaled_cpu_rates(profile, SLOW_HOST_FACTOR), cpu_share=chosen.cpu_share, **knobs)
    streamed = plan(profile, cpu_share=0.0, **knobs)
    note = next(n for n in chosen.notes if n.startswith("slow host:"))
    ms = [float(x) for x in re.findall(r"([\d.]+) ms", note)]
    assert ms == [pytest.approx(slow.predicted.decode_s_per_token * 1e3, abs=0.05),
                  pytest.approx(streamed.predicted.decode_s_per_token * 1e3, abs=0.05)]
    assert slow.predicted.decode_s_per_token > chosen.predicted.decode_s_per_token    # the CPU side binds slower
    assert f"at {SLOW_HOST_FACTOR:g}x" in note and "--cpu-share 0" in note
    assert ("still faster than" in note) == (ms[0] < ms[1])
    assert not any(n.startswith("slow host:") for n in streamed.notes)
