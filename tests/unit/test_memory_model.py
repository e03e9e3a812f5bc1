"""Every memory term against a hand computation (Llama-3-8B, bf16)."""

from planner import memory_model as mm
from planner.builtin_models import BUILTIN_MODELS
from planner.units import GIB, MIB

M = BUILTIN_MODELS["llama-3-8b"]
T = 131072 + 16


def test_weights():
    assert mm.weights_bytes(M, 2) == 8_030_261_248 * 2
    assert abs(mm.weights_bytes(M, 2) / GIB - 14.96) < 0.01


def test_chunk_activations():
    c = 8192
    held = c * 2 * 2 * 4096  # inputs_embeds and the layer's input, kept alive by the model forward
    attention_phase = held + c * 2 * (2 * 4096 + 2 * (32 + 16) * 128 + 2 * 32 * 128)
    mlp_phase = held + c * 2 * (2 * 4096 + 3 * 14336)
    assert mlp_phase > attention_phase
    assert mm.chunk_activation_bytes(M, c, 2) == mlp_phase + 128256 * (2 + 4)


def test_head_buffers_resident_chunk_and_host():
    assert mm.head_buffer_bytes(M, 2, T, 2) == 2 * 2 * 2 * T * 128 * 2
    assert mm.resident_kv_bytes(M, 100, T, 2) == 100 * 2 * 128 * T * 2
    assert mm.chunk_kv_bytes(M, 4096, 2, True) == 2 * 2 * 8 * 4096 * 128 * 2
    assert mm.chunk_kv_bytes(M, 4096, 2, False) == 0
    assert mm.host_kv_bytes(M, 100, T, 2) == (256 - 100) * 2 * 128 * T * 2
    # all slots on host at 1M tokens: 128 GiB (2 x 32 layers x 8 KV heads x 128 x 2 bytes per token)
    assert mm.host_kv_bytes(M, 0, 1024**2, 2) == 128 * GIB


def test_predict_memory_sums_terms():
    mem = mm.predict_memory(M, runtime_overhead_bytes=GIB, chunk_tokens=4096, heads_per_group=2,
                            resident_kv_heads=40, capacity_tokens=T, elem_bytes=2, gpu_budget_bytes=80 * GIB,
                            host_budget_bytes=100 * GIB)
    bd = mem.gpu_breakdown
    assert mem.kv_detail == {"resident": 40 * 2 * 128 * T * 2, "buffers": 2 * 2 * 2 * T * 128 * 2,
                             "chunk": 2 * 2 * 8 * 4096 * 128 * 2}
    assert bd.kv == sum(mem.kv_detail.values())
    assert mem.gpu_peak_bytes == bd.weights + bd.kv + bd.activations + bd.overhead
    assert bd.overhead == GIB and mem.host_kv_bytes == (256 - 40) * 2 * 128 * T * 2
    # all resident: no buffers, no in-flight chunk, nothing on host
    full = mm.predict_memory(M, runtime_overhead_bytes=0, chunk_tokens=4096, heads_per_group=8,
                             resident_kv_heads=256, capacity_tokens=T, elem_bytes=2, gpu_budget_bytes=1,
                             host_budget_bytes=1)
    assert full.kv_detail["buffers"] == 0 and full.kv_detail["chunk"] == 0 and full.host_kv_bytes == 0


def test_max_resident_heads_is_the_most_that_fits():
    kwargs = dict(runtime_overhead_bytes=GIB, chunk_tokens=4096, capacity_tokens=T, elem_bytes=2)
    for budget in (18 * GIB, 22 * GIB, 30 * GIB, 40 * GIB, 70 * GIB):
        for group in (1, 2, 4, 8):
            most = mm.max_resident_heads(M, heads_per_group=group, gpu_budget_bytes=budget, **kwargs)
            peak = lambda r: mm.predict_memory(M, heads_per_group=group, resident_kv_heads=r, gpu_budget_bytes=budget,
                                               host_budget_bytes=0, **kwargs).gpu_peak_bytes
            assert most >= 0
            assert peak(most) <= budget
            if most < 256:
                assert peak(most + 1) > budget or most + 1 == 256 and peak(256) > budget
    assert mm.max_resident_heads(M, heads_per_group=1, gpu_budget_bytes=10 * GIB, **kwargs) == -1


def test_min_resident_for_host():
    per_slot = 2 * 128 * T * 2
    assert mm.min_resident_for_host(M, capacity_tokens=T, elem_bytes=2, host_budget_bytes=200 * per_slot) == 56
    assert mm.min_resident_for_host(M, capacity_tokens=T, elem_bytes=2, host_budget_bytes=10**15) == 0
    assert abs(mm.chunk_activation_bytes(M, 1024, 2) / MIB - 116.73) < 0.01  # 1024*2*(4*4096+3*14336) + V*6


def test_overhead_adds_allocator_slack_to_the_measured_runtime():
    assert mm.overhead_bytes(0) == mm.ALLOCATOR_SLACK_BYTES == 256 * MIB
    assert mm.overhead_bytes(GIB) == GIB + 256 * MIB


def test_split_parts_count_in_the_attention_phase():
    """cudnn-split holds its parts until the merge: (parts + packed query) x (h q) c d b in the attention phase,
    h the widest call's KV heads (ceil(R / L) resident, or G), and the layer's chunk part H_q c (d b + 4); it shows
    in the peak only where the attention phase then outgrows the MLP phase."""
    c = 16384
    held = mm.split_held_parts(131072, c)
    assert held == 5                          # pasts of 8 x 16K: popcount(8 i) <= 3 past parts + the chunk part + q
    assert mm.largest_call_kv_heads(M, 0, 8) == 8 and mm.largest_call_kv_heads(M, 64, 2) == 2
    assert mm.largest_call_kv_heads(M, 256, 8) == 8 and mm.largest_call_kv_heads(M, 33, 1) == 2
    parts = mm.split_parts_bytes(M, chunk_tokens=c, context_tokens=131072, call_kv_heads=8, elem_bytes=2)
    assert parts == held * 32 * c * 128 * 2 + 32 * c * (128 * 2 + 4)   # + the layer's chunk part, out and lse
    kwargs = dict(runtime_overhead_bytes=GIB, chunk_tokens=c, heads_per_group=8, resident_kv_heads=0,
                  capacity_tokens=T, elem_bytes=2, gpu_budget_bytes=24 * GIB, host_budget_bytes=100 * GIB)
    with_split = mm.predict_memory(M, split_context_tokens=131072, **kwargs).gpu_breakdown.activations
    without = mm.predict_memory(M, **kwargs).gpu_breakdown.activations
    attention_phase = c * 2 * 2 * 4096 + c * 2 * (2 * 4096 + 2 * (32 + 16) * 128 + 2 * 32 * 128) + parts
    assert with_split == max(attention_phase, without - 128256 * 6) + 128256 * 6
    assert mm.split_held_parts(32768, 32768) == 0   # one chunk, no past: a single part, no merge
