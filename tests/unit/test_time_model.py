"""planner/time_model.py: the pipeline formula against an exact simulation, per-chunk times, decode terms,
and the attention backend choice (flash as the fallback)."""

import numpy as np
import pytest

from hwprofiles import load_profile
from planner.candidates import make_setup, time_candidate, Candidate
from planner.hw_lookup import RateLookup
from planner.builtin_models import BUILTIN_MODELS
from planner.time_model import Workload, pipeline_period, predict_time
from planner.units import GB

from planner_test_profiles import scalar_profile, table_profile

M = BUILTIN_MODELS["llama-3-8b"]


def _simulate(other, attention, transfer, groups, layers=300):
    """Two ping-pong slots, exactly: T_j = max(T_{j-1}, A_{j-2}) + t; A_j = max(A_{j-1} + N [first], T_j) + a."""
    transfers, attentions = [], []
    for _ in range(layers):
        for group in range(groups):
            j = len(attentions)
            start = max(transfers[-1] if transfers else 0.0, attentions[j - 2] if j >= 2 else 0.0)
            transfers.append(start + transfer)
            previous = (attentions[-1] if attentions else 0.0) + (other if group == 0 else 0.0)
            attentions.append(max(previous, transfers[j]) + attention)
    window = 100
    return (attentions[-1] - attentions[-1 - window * groups]) / window


def test_pipeline_period_matches_exact_simulation():
    rng = np.random.default_rng(0)
    for _ in range(300):
        groups = int(rng.integers(1, 9))
        other, attention, transfer = rng.exponential(1.0, 3) * rng.choice([0.1, 1.0, 10.0], 3)
        period, _ = pipeline_period(np.array([other]), np.array([attention]), np.array([transfer]), groups)
        assert period[0] == pytest.approx(_simulate(other, attention, transfer, groups), rel=1e-9)
    assert pipeline_period(np.array([2.0]), np.array([1.0]), np.array([9.0]), 0)[0][0] == 2.0


def _work(**kw):
    base = dict(context_tokens=40960, decode_tokens=8, chunk_size=8192, heads_per_group=2, resident_kv_heads=64,
                elem_bytes=2, backend="flash")
    base.update(kw)
    return Workload(**base)


def test_chunk_times_listed_in_order():
    profile = table_profile()
    pred = predict_time(M, profile, RateLookup(profile), _work(context_tokens=40000))
    assert len(pred.chunk_s) == 5                          # 4 full chunks of 8K and a shorter last one
    assert sum(pred.chunk_s) == pytest.approx(pred.prefill_s)
    assert pred.chunk_s[1] < pred.chunk_s[2] < pred.chunk_s[3]   # later chunks attend to a longer past
    full = predict_time(M, profile, RateLookup(profile), _work(context_tokens=40960))
    assert pred.chunk_s[:4] == pytest.approx(full.chunk_s[:4])
    assert pred.chunk_s[4] < full.chunk_s[4]                  # the same past, fewer queries


def test_decode_terms_and_bounds():
    profile = scalar_profile(launch_overhead_s=0.0)
    lookup = RateLookup(profile)
    offloaded = predict_time(M, profile, lookup, _work(resident_kv_heads=0, heads_per_group=8))
    # all KV over PCIe: at least the bytes / bandwidth, and PCIe binds
    kv_bytes = M.kv_bytes_per_token(2) * (40960 + 3.5)
    assert offloaded.decode_s_per_token >= kv_bytes / profile.pcie_h2d_bytes_per_s
    assert offloaded.decode_bound == "pcie"
    resident = predict_time(M, profile, lookup, _work(resident_kv_heads=256))
    weights_s = M.param_count * 2 / profile.hbm_bytes_per_s
    assert resident.decode_bound == "hbm" and resident.decode_s_per_token >= weights_s
    assert resident.decode_s_per_token < offloaded.decode_s_per_token


def test_launch_bound_decode_calibrated_on_h100():
    """The imported profile's launch overhead (back-solved from transformers' own 24.5 ms Llama-3-8B decode
    step, shared/measurements) reproduces that step."""
    profile = load_profile("h100-sxm-imported")
    pred = predict_time(M, profile, RateLookup(profile), _work(context_tokens=32768, resident_kv_heads=256))
    assert pred.decode_bound == "launch"
    assert pred.decode_s_per_token == pytest.approx(24.5e-3, rel=0.02)


def test_more_resident_heads_never_slower():
    profile = table_profile()
    lookup = RateLookup(profile)
    times = [predict_time(M, profile, lookup, _work(resident_kv_heads=r)) for r in (0, 32, 64, 128, 255)]
    decode = [t.decode_s_per_token for t in times]
    assert decode == sorted(decode, reverse=True)


def _setup(profile):
    return make_setup(M, profile, context_tokens=131072, decode_tokens=4, gpu_mem_bytes=24 * GB,
                      host_mem_bytes=None, dtype="bfloat16")


def test_backend_choice_cudnn_when_faster_flash_otherwise():
    fast = _setup(table_profile(cudnn_tflops=600.0))
    cand = time_candidate(fast, Candidate.build(fast, "head-offload", 8192, 2, 64))
    assert cand.backend == "cudnn-split" and cand.other_backend_s > cand.time.prefill_s
    slow = _setup(table_profile(cudnn_tflops=50.0))
    assert time_candidate(slow, Candidate.build(slow, "head-offload", 8192, 2, 64)).backend == "flash"
    absent = _setup(table_profile(cudnn_tflops=None))
    cand = time_candidate(absent, Candidate.build(absent, "head-offload", 8192, 2, 64))
    assert cand.backend == "flash" and cand.other_backend_s is None
    datasheet = _setup(load_profile("rtx-4090"))
    assert datasheet.backends == ("flash",)


def test_cudnn_split_pays_graph_builds():
    profile = table_profile()
    pred = predict_time(M, profile, RateLookup(profile), _work(backend="cudnn-split", context_tokens=131072,
                                                               chunk_part="group"))
    builds = pred.terms["prefill_cudnn_graph_build_s"]
    # pasts 0, 8K, .., 120K in blocks of 2K: s // 2K = 4, 8, .., 60 sets bits 2..5 -> 4 key lengths, and one
    # call shape (the 2 resident heads of every layer are shaped like a group of 2); 8K chunks put the square
    # causal chunk part on cuDNN too: one more shape per call shape, in the first chunk (the per-set arrangement)
    assert builds == pytest.approx((4 + 1) * 1 * 0.05)
    other = predict_time(M, profile, RateLookup(profile), _work(backend="cudnn-split", context_tokens=131072,
                                                                resident_kv_heads=96, chunk_part="group"))
    assert other.terms["prefill_cudnn_graph_build_s"] == pytest.approx((4 + 1) * 3 * 0.05)  # resident 3; groups 2, 2, 1


# --- host time: the executor's measured per-layer / per-group costs, else counted ops ----------------------

HOST_FIELDS = dict(executor_model_host_s=1e-3, executor_decode_layer_host_s=300e-6, executor_group_host_s=100e-6,
                   executor_prefill_layer_host_s=400e-6, executor_split_part_host_s=50e-6)


def test_decode_host_time_uses_measured_executor_fields():
    from planner.host_time import HOST_OPS_PER_GROUP_HEAD

    profile = scalar_profile(launch_overhead_s=10e-6, **HOST_FIELDS)
    lookup = RateLookup(profile)
    pred = predict_time(M, profile, lookup, _work(resident_kv_heads=0, heads_per_group=2))
    # 32 layers, 8 KV heads in 4 groups of 2: model + L (layer + 4 (group + 4 ops x 2 heads x launch))
    expected = 1e-3 + 32 * (300e-6 + 4 * (100e-6 + HOST_OPS_PER_GROUP_HEAD * 2 * 10e-6))
    assert pred.terms["decode_host_s"] == pytest.approx(expected)
    hosts = [predict_time(M, profile, lookup, _work(resident_kv_heads=0, heads_per_group=g)).terms["decode_host_s"]
             for g in (8, 4, 2, 1)]
    assert hosts == sorted(hosts) and hosts[0] < hosts[-1]            # more groups, more host time
    resident = predict_time(M, profile, lookup, _work(resident_kv_heads=256))
    assert resident.terms["decode_host_s"] == pytest.approx(1e-3 + 32 * 300e-6)


def test_prefill_host_time_counts_split_parts():
    from planner.time_model import predict_prefill

    profile = table_profile(**HOST_FIELDS)
    work = _work(resident_kv_heads=256, context_tokens=40960, chunk_size=8192)
    flash_host = predict_prefill(M, RateLookup(profile), work)[1]["host"]
    assert flash_host == pytest.approx(np.full(5, 1e-3 + 32 * 400e-6))
    split_host = predict_prefill(M, RateLookup(profile), _work(resident_kv_heads=256, backend="cudnn-split",
                                                               context_tokens=40960, chunk_size=8192))[1]["host"]
    parts = np.array([0, 1, 1, 2, 1])          # popcount(s // 2K) for s = 0, 8K, .., 32K; one call per layer
    assert split_host == pytest.approx(flash_host + parts * 32 * 50e-6)


def test_host_time_falls_back_to_counted_ops_without_the_fields():
    from planner.host_time import HOST_OPS_PER_LAYER, HOST_OPS_PER_MODEL, HOST_OPS_RESIDENT

    profile = scalar_profile(launch_overhead_s=10e-6, attention_call_overhead_s=5e-6)
    pred = predict_time(M, profile, RateLookup(profile), _work(resident_kv_heads=256))
    ops = HOST_OPS_PER_MODEL + 32 * (HOST_OPS_PER_LAYER + HOST_OPS_RESIDENT)
    assert pred.terms["decode_host_s"] == pytest.approx(ops * 10e-6 + 32 * 5e-6)
    partial = scalar_profile(launch_overhead_s=10e-6, attention_call_overhead_s=5e-6,
                             executor_decode_layer_host_s=300e-6)      # group cost missing: counted model
    assert predict_time(M, partial, RateLookup(partial), _work(resident_kv_heads=256)).terms["decode_host_s"] == \
        pytest.approx(pred.terms["decode_host_s"])


def test_graph_decode_host_time_is_the_replay():
    """All KV resident on one GPU at 16 bits: decode replays a CUDA graph, host = token + L x layer figure (else
    HOST_OPS_GRAPH_TOKEN launches); eager decode keeps the executor's per-layer host time."""
    from planner.host_time import HOST_OPS_GRAPH_TOKEN, decode_runs_as_graph

    profile = scalar_profile(launch_overhead_s=10e-6, executor_graph_token_host_s=40e-6,
                             executor_graph_layer_host_s=2e-6, **HOST_FIELDS)
    lookup = RateLookup(profile)
    graphed = predict_time(M, profile, lookup, _work(resident_kv_heads=256, decode_graphs=True))
    eager = predict_time(M, profile, lookup, _work(resident_kv_heads=256))
    assert graphed.terms["decode_host_s"] == pytest.approx(40e-6 + 32 * 2e-6)
    assert eager.terms["decode_host_s"] == pytest.approx(1e-3 + 32 * 300e-6)
    assert graphed.terms["decode_gpu_s"] == pytest.approx(eager.terms["decode_gpu_s"])   # same kernels
    assert graphed.decode_s_per_token <= eager.decode_s_per_token
    bare = scalar_profile(launch_overhead_s=10e-6)
    assert predict_time(M, bare, RateLookup(bare), _work(resident_kv_heads=256, decode_graphs=True)).terms[
        "decode_host_s"] == pytest.approx(HOST_OPS_GRAPH_TOKEN * 10e-6)
    assert decode_runs_as_graph(256, 256, 2) and not decode_runs_as_graph(255, 256, 2)
    assert not decode_runs_as_graph(256, 256, 4) and not decode_runs_as_graph(256, 256, 2, gpus=2)
    assert not decode_runs_as_graph(256, 256, 2, enabled=False)


def test_plans_say_when_decode_replays_a_graph():
    from planner.solver import make_plan

    profile = table_profile()
    resident = make_plan(M, profile, context_tokens=8192, decode_tokens=16, gpu_mem_bytes=80 * GB)
    assert resident.resident_kv_heads == M.kv_head_slots and resident.decode_graphs
    off = make_plan(M, profile, context_tokens=8192, decode_tokens=16, gpu_mem_bytes=80 * GB, decode_graphs=False)
    assert not off.decode_graphs
    assert off.predicted.terms["decode_host_s"] > resident.predicted.terms["decode_host_s"]
    streamed = make_plan(M, profile, context_tokens=8192, decode_tokens=16, gpu_mem_bytes=80 * GB,
                         resident_kv_heads=100)
    assert not streamed.decode_graphs
    fp32 = make_plan(BUILTIN_MODELS["llama-3.2-1b"], profile, context_tokens=8192, decode_tokens=16,
                     gpu_mem_bytes=80 * GB, dtype="float32")
    assert fp32.resident_kv_heads == BUILTIN_MODELS["llama-3.2-1b"].kv_head_slots and not fp32.decode_graphs


# --- attention: the executor's measured step ("<backend>-step" points) first, the composed model as fallback --


def _with_step_points(profile, backend: str, rate_of):
    """``profile`` plus "<backend>-step" points at the flash points' shapes, rate_of(flash point) each."""
    from hwprofiles.schema import AttentionPoint

    steps = [AttentionPoint(backend=f"{backend}-step", head_dim=p.head_dim, q_heads=p.q_heads, kv_heads=p.kv_heads,
                            q_len=p.q_len, k_len=p.k_len, causal=True, flops_per_s=rate_of(p))
             for p in profile.attention_table if p.backend == "flash"]
    return profile.model_copy(update={"attention_table": list(profile.attention_table) + steps})


def _group_attention_s(profile, backend: str, kv_heads: int = 2) -> np.ndarray:
    from planner.time_model import attention_seconds

    past = np.arange(0, 131072, 8192, dtype=float)
    return attention_seconds(M, RateLookup(profile), kv_heads=kv_heads, chunk=np.full_like(past, 8192.0), past=past,
                             backend=backend)


def test_attention_uses_flash_step_points_at_half_rate():
    kernels = table_profile()
    steps = _with_step_points(kernels, "flash", lambda p: p.flops_per_s / 2)
    assert _group_attention_s(steps, "flash") == pytest.approx(2 * _group_attention_s(kernels, "flash"), rel=1e-9)
    # the whole prediction follows: prefill attention term twice as long
    work = _work(context_tokens=131072)
    slow = predict_time(M, steps, RateLookup(steps), work).terms["prefill_attention_s"]
    fast = predict_time(M, kernels, RateLookup(kernels), work).terms["prefill_attention_s"]
    assert slow == pytest.approx(2 * fast, rel=1e-9)


def test_attention_uses_cudnn_split_step_points_instead_of_the_composed_model():
    kernels = table_profile()
    step_rate = 250e12
    steps = _with_step_points(kernels, "cudnn-split", lambda p: step_rate)
    past = np.arange(0, 131072, 8192, dtype=float)
    flops = 4.0 * 8 * M.head_dim * (8192 * past + 8192 * 8193 / 2)
    assert _group_attention_s(steps, "cudnn-split") == pytest.approx(flops / step_rate, rel=1e-9)
    # with a past, the composed model (most of it on cuDNN at 600 TFLOP/s) is faster than the 250 steps
    assert np.all(_group_attention_s(steps, "cudnn-split")[1:] > _group_attention_s(kernels, "cudnn-split")[1:])
    # flash-step points do not stand in for cudnn-split (nor the other way round): fallback to the composed model
    flash_only = _with_step_points(kernels, "flash", lambda p: p.flops_per_s / 2)
    assert _group_attention_s(flash_only, "cudnn-split") == pytest.approx(_group_attention_s(kernels, "cudnn-split"))
    assert _group_attention_s(steps, "flash") == pytest.approx(_group_attention_s(kernels, "flash"))


def test_cudnn_split_step_points_keep_the_graph_builds():
    kernels = table_profile()
    steps = _with_step_points(kernels, "cudnn-split", lambda p: 250e12)
    work = _work(backend="cudnn-split", context_tokens=131072)
    with_steps = predict_time(M, steps, RateLookup(steps), work).terms["prefill_cudnn_graph_build_s"]
    assert with_steps == predict_time(M, kernels, RateLookup(kernels), work).terms["prefill_cudnn_graph_build_s"] > 0


def test_decode_attention_uses_the_q1_table_where_it_is_slower_than_hbm():
    """Few heads at one query row leave SMs idle: the measured q_len = 1 rate binds, not HBM; no q_len = 1
    points: HBM alone."""
    import numpy as np

    from hwprofiles import load_profile
    from planner.hw_lookup import RateLookup
    from planner.builtin_models import BUILTIN_MODELS
    from planner.time_model import decode_attention_seconds

    model = BUILTIN_MODELS["llama-3-8b"]
    measured = load_profile("h100-sxm-measured")
    past = np.array([4096.0, 131072.0])
    per_head = 2.0 * model.head_dim * 2 * (past + 1)
    hbm_only = 2 * per_head / measured.hbm_bytes_per_s
    with_table = decode_attention_seconds(model, RateLookup(measured), 2, past, per_head)
    assert np.all(with_table >= hbm_only) and with_table[1] > 1.2 * hbm_only[1]
    bare = measured.model_copy(update={"attention_table": [p for p in measured.attention_table if p.q_len != 1]})
    assert np.allclose(decode_attention_seconds(model, RateLookup(bare), 2, past, per_head), hbm_only)


def test_square_causal_builds_priced_at_the_causal_build_cost_when_profiled():
    profile = table_profile()
    work = _work(backend="cudnn-split", context_tokens=131072, chunk_part="group")
    base = predict_time(M, profile, RateLookup(profile), work).terms["prefill_cudnn_graph_build_s"]
    causal = profile.model_copy(update={"cudnn_causal_graph_build_s": 0.45})
    priced = predict_time(M, causal, RateLookup(causal), work).terms["prefill_cudnn_graph_build_s"]
    # 8K chunks: 4 past-block lengths at 0.05 s, and the square causal chunk shape now at 0.45 s (one call shape)
    assert base == pytest.approx(5 * 0.05) and priced == pytest.approx(4 * 0.05 + 0.45)


def test_layer_chunk_part_builds_only_a_shorter_last_chunks_causal_shape():
    """With the chunk part once per layer the warm-up builds the first chunk's all-heads causal graph
    (executor/attention/split.py warm_up_cudnn): the run pays a causal build only for a shorter last chunk's
    shape, once (one call shape per chunk length), and none on flash."""
    profile = table_profile(cudnn_causal_graph_build_s=0.45)
    lookup = RateLookup(profile)
    builds = {}
    for context, chunk_backend in ((131072, "cudnn"), (131072 - 4096, "cudnn"), (131072 - 4096, "flash")):
        work = _work(backend="cudnn-split", context_tokens=context, chunk_backend=chunk_backend)
        builds[context, chunk_backend] = predict_time(M, profile, lookup, work).terms["prefill_cudnn_graph_build_s"]
    assert builds[131072, "cudnn"] == pytest.approx(4 * 0.05)
    assert builds[131072 - 4096, "cudnn"] - builds[131072 - 4096, "flash"] == pytest.approx(0.45)


def _with_sustained(profile, attention_ratio: float, matmul_ratio: float, head_dim: int = 128,
                    attention_flops_per_s: float = 1e14):
    from hwprofiles.schema import SustainedPoint

    point = SustainedPoint(head_dim=head_dim, hidden_size=4096, intermediate_size=14336,
                           attention_ratio=attention_ratio, matmul_ratio=matmul_ratio,
                           attention_flops_per_s=attention_flops_per_s, matmul_flops_per_s=1e14)
    return profile.model_copy(update={"sustained_table": [point]})


def test_sustained_rates_slow_prefill_attention_and_matmuls_but_not_decode():
    """A prefill's attention runs at most at the profile's sustained attention rate (each call's seconds
    max(burst, FLOPs / ceiling)), its matmuls at the sustained ratio; decode (memory-bound, single tokens) keeps the
    tables' rates; a matmul ratio above 1 is capped at 1, and a ceiling above every burst changes nothing."""
    from planner.time_model import predict_prefill

    base = table_profile()
    work = _work(backend="cudnn-split", context_tokens=65536)
    terms = {}
    for name, profile in (("base", base), ("slow", _with_sustained(base, 0.8, 0.9, attention_flops_per_s=1e14)),
                          ("fast", _with_sustained(base, 1.2, 1.1, attention_flops_per_s=1e17))):
        lookup = RateLookup(profile)
        _, arrays = predict_prefill(M, lookup, work)
        pred = predict_time(M, profile, lookup, work)
        terms[name] = (arrays["attention"].sum(), arrays["linear"].sum(), pred.decode_s_per_token)
    assert terms["slow"][0] > terms["base"][0]
    tokens = 65536                                    # a ceiling below every call: exactly the causal FLOPs / it
    crawl = RateLookup(_with_sustained(base, 0.8, 0.9, attention_flops_per_s=1e12))
    causal_flops = M.num_hidden_layers * 4 * M.num_attention_heads * M.head_dim * tokens * (tokens + 1) / 2
    assert predict_prefill(M, crawl, work)[1]["attention"].sum() == pytest.approx(causal_flops / 1e12)
    assert terms["base"][1] / 0.9 * 0.999 < terms["slow"][1] <= terms["base"][1] / 0.9   # roofline: compute part
    assert terms["slow"][2] == pytest.approx(terms["base"][2])
    assert terms["fast"] == pytest.approx(terms["base"])


def test_the_ceiling_binds_each_call_above_it_only():
    """sustained_attention: max(burst, FLOPs / ceiling) per call: a call slower than the ceiling keeps its time."""
    from planner.time_model import sustained_attention

    burst, flops = np.array([1.0, 1.0, 2.0]), np.array([1e14, 3e14, 3e14])
    assert np.allclose(sustained_attention(burst, flops, 2e14), [1.0, 1.5, 2.0])
    assert sustained_attention(burst, flops, None) is burst


def test_sustained_ratios_from_the_nearest_head_dim():
    from hwprofiles.schema import SustainedPoint

    points = [SustainedPoint(head_dim=d, hidden_size=h, intermediate_size=i, attention_ratio=a, matmul_ratio=m,
                             attention_flops_per_s=1e14, matmul_flops_per_s=1e14)
              for d, h, i, a, m in ((128, 4096, 14336, 0.87, 0.95), (64, 2048, 8192, 0.97, 1.04))]
    lookup = RateLookup(table_profile(sustained_table=points))
    assert lookup.sustained_ratios(128) == (0.87, 0.95)
    assert lookup.sustained_ratios(64) == (0.97, 1.0)
    assert lookup.sustained_ratios(256) == (0.87, 0.95)
    assert RateLookup(table_profile()).sustained_ratios(128) == (1.0, 1.0)


def _with_square_causal(profile, cudnn_tflops: float):
    from hwprofiles.schema import AttentionPoint

    squares = [AttentionPoint(backend=backend, head_dim=128, q_heads=32, kv_heads=8, q_len=c, k_len=c, causal=True,
                              flops_per_s=rate * 1e12)
               for c in (1024, 4096, 16384) for backend, rate in (("cudnn", cudnn_tflops), ("flash", 250.0))]
    return profile.model_copy(update={"attention_table": list(profile.attention_table) + squares})


def test_layer_chunk_backend_is_the_faster_square_causal_kernel_of_the_profile():
    """The plan's chunk part kernel (Plan.chunk_backend): cuDNN where its square causal points beat flash's at
    (H_q, c), flash where they do not, and None (the executor's own rule) without cuDNN causal points; the
    layer's chunk part is priced at the chosen kernel's rate."""
    from planner.attention_time import layer_chunk_backend, layer_chunk_seconds

    base = table_profile()
    assert layer_chunk_backend(M, RateLookup(base), 4096) is None
    fast, slow = RateLookup(_with_square_causal(base, 450.0)), RateLookup(_with_square_causal(base, 150.0))
    assert layer_chunk_backend(M, fast, 4096) == "cudnn" and layer_chunk_backend(M, slow, 4096) == "flash"
    chunk = np.array([4096.0])
    on_cudnn = layer_chunk_seconds(M, fast, chunk, "cudnn")[0]
    on_flash = layer_chunk_seconds(M, fast, chunk, "flash")[0]
    assert on_flash / on_cudnn == pytest.approx(450.0 / 250.0)


def test_plan_carries_the_chunk_part_kernel():
    from planner.solver import make_plan

    profile = _with_square_causal(table_profile(), 450.0)
    plan = make_plan(M, profile, context_tokens=131072, decode_tokens=4, gpu_mem_bytes=24 * GB,
                     attention_backend="cudnn-split")
    assert plan.attention_backend == "cudnn-split" and plan.chunk_backend == "cudnn"
    flash = make_plan(M, profile, context_tokens=131072, decode_tokens=4, gpu_mem_bytes=24 * GB,
                      attention_backend="flash")
    assert flash.chunk_backend is None


def test_elementwise_term_uses_the_measured_rate_of_the_layer_ops():
    """With elementwise_bytes_per_s in the profile the chunk's elementwise term is bytes / that rate (not HBM):
    half the rate, twice the term."""
    from hwprofiles import load_profile
    from planner.candidates import rate_lookup
    from planner.builtin_models import BUILTIN_MODELS
    from planner.time_model import Workload, predict_prefill

    base = load_profile("h100-sxm-measured")
    model = BUILTIN_MODELS["llama-3-8b"]
    work = Workload(context_tokens=32768, decode_tokens=1, chunk_size=8192, heads_per_group=8,
                    resident_kv_heads=256, elem_bytes=2, backend="flash")
    terms = {}
    for rate in (2e12, 1e12):
        profile = base.model_copy(update={"elementwise_bytes_per_s": rate})
        terms[rate] = float(predict_prefill(model, rate_lookup(profile), work)[1]["elementwise"].sum())
    assert terms[1e12] == pytest.approx(2 * terms[2e12])


def test_chunk_part_per_layer_priced_once_per_layer_at_all_query_heads():
    """cudnn-split with the chunk part per layer (the executor's default): a head set's call prices its past parts
    and merge only, and each full-attention layer adds 4 H_q d c (c + 1) / 2 at the square causal rate of all H_q
    heads; a single chunk (no past) is that part alone."""
    from planner.attention_time import attention_seconds, layer_chunk_seconds

    profile = load_profile("h200-sxm-measured")
    lookup = RateLookup(profile)
    chunk, first = np.array([4096.0, 4096.0]), np.array([0.0, 4096.0])
    past_only = attention_seconds(M, lookup, kv_heads=2, chunk=chunk, past=first, backend="cudnn-split",
                                  chunk_part="layer")
    assert past_only[0] == 0.0 and past_only[1] > 0.0
    per_set = attention_seconds(M, lookup, kv_heads=2, chunk=chunk, past=first, backend="cudnn-split",
                                chunk_part="group", past_cut="whole")
    assert per_set[0] > 0.0                                   # the per-set arrangement attends the chunk itself
    layer = layer_chunk_seconds(M, lookup, chunk)
    rate = lookup.attention_flops_per_s(backend="flash", q_heads=32, q_len=4096, k_len=chunk, head_dim=128,
                                        causal=True, gqa_ratio=4)
    assert np.allclose(layer, 4 * 32 * 128 * 4096 * 4097 / 2 / rate)
    one_chunk = dict(context_tokens=4096, chunk_size=4096, backend="cudnn-split", resident_kv_heads=256)
    by_layer = predict_time(M, profile, lookup, _work(**one_chunk, chunk_part="layer"))
    ceiling = lookup.sustained_attention_flops_per_s(M.head_dim)    # the power limit's rate over a prefill
    part_flops = 4 * 32 * 128 * 4096 * 4097 / 2
    assert np.isclose(by_layer.terms["prefill_attention_s"], M.num_hidden_layers * max(layer[0], part_flops / ceiling))


def _graph_point(model, token_s=1e-3, layer_s=(50e-6,), contexts=(1024,), vocab_size=None):
    from hwprofiles.schema import GraphDecodePoint

    return GraphDecodePoint(hidden_size=model.hidden_size, intermediate_size=model.intermediate_size,
                            num_attention_heads=model.num_attention_heads,
                            num_key_value_heads=model.num_key_value_heads, head_dim=model.head_dim,
                            vocab_size=vocab_size or model.vocab_size, token_s=token_s,
                            context_tokens=list(contexts), layer_s=list(layer_s))


def test_graph_decode_priced_from_the_measured_step_of_the_layer_shape():
    """A replayed decode token of a model whose layer shape the profile measured (graph_decode_table) costs
    token_s + L (layer_s + the attention beyond the measured context); at the measured context exactly
    token_s + L layer_s; another layer shape keeps the kernel tables' price."""
    from planner.graph_decode_time import graph_decode_gpu_seconds

    base = table_profile()
    work = _work(context_tokens=1024, decode_tokens=1, chunk_size=1024, resident_kv_heads=256, decode_graphs=True)
    table_only = predict_time(M, base, RateLookup(base), work).decode_s_per_token
    measured = base.model_copy(update={"graph_decode_table": [_graph_point(M, token_s=2e-3, layer_s=(100e-6,))]})
    lookup = RateLookup(measured)
    at_context = graph_decode_gpu_seconds(M, lookup, np.array([1023.0]), 2)[0]
    assert at_context == pytest.approx(2e-3 + 32 * 100e-6)
    longer = graph_decode_gpu_seconds(M, lookup, np.array([131072.0]), 2)[0]
    assert longer > at_context
    pred = predict_time(M, measured, lookup, work)
    assert pred.decode_s_per_token == pytest.approx(max(at_context, pred.terms["decode_host_s"]), rel=1e-4)
    assert pred.decode_s_per_token != pytest.approx(table_only)
    other = BUILTIN_MODELS["llama-3.2-1b"]
    assert graph_decode_gpu_seconds(other, lookup, np.array([1023.0]), 2) is None
    smaller_vocab = base.model_copy(update={"graph_decode_table": [_graph_point(M, vocab_size=M.vocab_size // 2)]})
    same_vocab = base.model_copy(update={"graph_decode_table": [_graph_point(M)]})
    delta = (graph_decode_gpu_seconds(M, RateLookup(smaller_vocab), np.array([1024.0]), 2)[0]
             - graph_decode_gpu_seconds(M, RateLookup(same_vocab), np.array([1024.0]), 2)[0])
    assert delta == pytest.approx((M.vocab_size - M.vocab_size // 2) * M.hidden_size * 2 / base.hbm_bytes_per_s)


def test_plan_notes_a_layer_shape_the_graph_decode_table_lacks():
    from planner.coverage import graph_decode_note

    profile = table_profile(graph_decode_table=[_graph_point(M)])
    assert graph_decode_note(M, profile) is None
    note = graph_decode_note(BUILTIN_MODELS["llama-3.2-1b"], profile)
    assert note.startswith("profile coverage:") and "headplan profile --model llama-3.2-1b" in note
    assert graph_decode_note(M, table_profile()) is None       # a profile that never measured the step: silent


def test_graph_decode_between_and_beyond_the_measured_contexts():
    """With several measured contexts a layer costs layer_s(s + 1), linear between them, clamped below the shortest;
    beyond the longest it is layer_s there plus the attention table's increment of one layer's decode attention
    (not the last segment's slope: the table sees HBM read faster at long contexts)."""
    from planner.attention_time import decode_attention_seconds
    from planner.graph_decode_time import graph_decode_gpu_seconds

    point = _graph_point(M, token_s=3e-4, contexts=(1024, 16384, 131072), layer_s=(200e-6, 230e-6, 330e-6))
    lookup = RateLookup(table_profile(graph_decode_table=[point]))
    price = lambda past, lk=lookup: graph_decode_gpu_seconds(M, lk, np.array([past]), 2)[0]  # noqa: E731
    assert price(16383.0) == pytest.approx(3e-4 + 32 * 230e-6)
    assert price(8703.0) == pytest.approx(3e-4 + 32 * 215e-6)             # halfway from 1K to 16K
    assert price(0.0) == pytest.approx(3e-4 + 32 * 200e-6)
    attn = lambda keys: decode_attention_seconds(  # noqa: E731 - one layer, all KV heads, keys = past + 1
        M, lookup, M.num_key_value_heads, np.array([keys - 1.0]), np.array([2.0 * M.head_dim * 2 * keys]))[0]
    beyond = 1 << 20
    increment = attn(beyond) - attn(131072)
    assert increment > 0
    assert price(beyond - 1.0) == pytest.approx(3e-4 + 32 * (330e-6 + increment))
    steeper = _graph_point(M, token_s=3e-4, contexts=(1024, 16384, 131072), layer_s=(200e-6, 100e-6, 330e-6))
    assert price(beyond - 1.0, RateLookup(table_profile(graph_decode_table=[steeper]))) == pytest.approx(
        price(beyond - 1.0))                                              # the segments' slopes play no part


def test_plan_notes_a_head_dim_the_sustained_table_lacks():
    from planner.coverage import sustained_note

    profile = _with_sustained(table_profile(), 0.87, 0.98, head_dim=128)
    assert sustained_note(M, profile) is None
    note = sustained_note(BUILTIN_MODELS["gemma-2-9b"], profile)
    assert note.startswith("profile coverage:") and "head dim 128's used" in note and "2.0x" in note
    assert sustained_note(BUILTIN_MODELS["gemma-2-9b"], table_profile()) is None
