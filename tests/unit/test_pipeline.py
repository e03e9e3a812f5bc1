"""planner/pipeline.py: the layers split over N GPUs. One GPU is exactly the single-GPU plan; the split is even
and contiguous; every stage fits its per-GPU budget and the stages' host stores add up; time is the stages in
series; `headplan plan --gpus` and `headplan run --gpus` handle good and bad values."""

import json

import pytest

from hwprofiles import load_profile
from headplan.cli import main
from planner.errors import PlanError
from planner.builtin_models import BUILTIN_MODELS
from planner.pipeline import make_pipeline_plan, split_layers
from planner.plan import read_plan, write_plan
from planner.solver import make_plan
from planner.units import GB, GIB

M8 = BUILTIN_MODELS["llama-3-8b"]
M70 = BUILTIN_MODELS["llama-3-70b"]
H100 = load_profile("h100-sxm-measured")
RTX = load_profile("rtx-4090")


def _pipe(gpus, model=M8, hw=H100, context=131072, gpu=24 * GB, **kw):
    return make_pipeline_plan(model, hw, gpus=gpus, context_tokens=context, decode_tokens=kw.pop("decode_tokens", 8),
                              gpu_mem_bytes=gpu, **kw)


def test_one_gpu_is_the_single_gpu_plan():
    for kw in (dict(), dict(chunk_size=8192, heads_per_group=2, resident_kv_heads=40)):
        single = make_plan(M8, H100, context_tokens=131072, decode_tokens=8, gpu_mem_bytes=24 * GB, **kw)
        piped = _pipe(1, **kw)
        assert piped == single and piped.gpus == 1 and piped.stages == []


@pytest.mark.parametrize("layers", [16, 32, 80, 81])
def test_split_is_even_and_contiguous(layers):
    for gpus in range(1, layers + 1):
        split = split_layers(layers, gpus)
        counts = [count for _, count in split]
        assert len(split) == gpus and sum(counts) == layers and max(counts) - min(counts) <= 1
        assert [first for first, _ in split] == [sum(counts[:i]) for i in range(gpus)]
    for bad in (0, -1, layers + 1):
        with pytest.raises(PlanError):
            split_layers(layers, bad)


@pytest.mark.parametrize("gpus, gpu, context", [(2, 12 * GB, 131072), (4, 8 * GB, 262144), (3, 24 * GB, 65536)])
def test_every_stage_under_budget_and_host_adds_up(gpus, gpu, context):
    plan = _pipe(gpus, gpu=gpu, context=context, host_mem_bytes=400 * GIB)
    assert plan.gpus == gpus and len(plan.stages) == gpus
    assert sum(s.num_layers for s in plan.stages) == M8.num_hidden_layers
    for stage in plan.stages:
        bd = stage.gpu_breakdown
        assert stage.gpu_peak_bytes == bd.weights + bd.kv + bd.activations + bd.overhead <= gpu
        assert 0.0 <= stage.idle_fraction < 1.0
    assert plan.memory.gpu_peak_bytes == max(s.gpu_peak_bytes for s in plan.stages)
    assert plan.memory.host_kv_bytes == sum(s.host_kv_bytes for s in plan.stages) <= plan.memory.host_budget_bytes
    assert plan.resident_kv_heads == sum(s.resident_kv_heads for s in plan.stages)
    weights = sum(s.gpu_breakdown.weights for s in plan.stages)
    vocab_matrix_bytes = M8.vocab_size * M8.hidden_size * 2
    assert weights == M8.param_count * 2 + (vocab_matrix_bytes if M8.tie_word_embeddings else 0)
    pred = plan.predicted
    assert pred.prefill_s == pytest.approx(sum(pred.chunk_s))
    handoffs = pred.terms["prefill_handoff_s"]
    assert pred.prefill_s == pytest.approx(sum(s.prefill_s for s in plan.stages) + handoffs)
    assert pred.decode_s_per_token == pytest.approx(sum(s.decode_s_per_token for s in plan.stages)
                                                    + pred.terms["decode_handoff_s"])


def test_fixed_knobs_spread_over_stages():
    plan = _pipe(2, gpu=20 * GB, chunk_size=8192, heads_per_group=2, resident_kv_heads=40)
    assert (plan.chunk_size, plan.heads_per_group, plan.resident_kv_heads) == (8192, 2, 40)
    assert [s.resident_kv_heads for s in plan.stages] == [24, 16]     # 40 over 32 layers: layers 0-7 hold 2
    with pytest.raises(PlanError, match="over 2 GPUs"):
        _pipe(2, gpu=12 * GB, resident_kv_heads=255)


def test_same_offloaded_kv_links_in_series_prefill_compute_unchanged():
    """At the same total offloaded KV each link moves 1/N of it, but in a single-sequence pipeline the links
    work one after another: decode per token stays (it does not aggregate), and prefill FLOPs are the same."""
    fixed = dict(context=262144, gpu=80 * GB, host_mem_bytes=400 * GIB, chunk_size=8192, heads_per_group=2,
                 resident_kv_heads=0, strategy="head-offload", attention_backend="flash")
    plans = {n: _pipe(n, **fixed) for n in (1, 2, 4)}
    host = plans[1].memory.host_kv_bytes
    for n, plan in plans.items():
        assert plan.memory.host_kv_bytes == host
        if n > 1:
            assert all(s.host_kv_bytes == host // n for s in plan.stages)
        compute = plan.predicted.terms["prefill_linear_s"] + plan.predicted.terms["prefill_attention_s"]
        one = plans[1].predicted.terms["prefill_linear_s"] + plans[1].predicted.terms["prefill_attention_s"]
        assert compute == pytest.approx(one, rel=1e-6)
        assert plan.predicted.terms["decode_h2d_bytes"] == pytest.approx(plans[1].predicted.terms["decode_h2d_bytes"])
        assert plan.predicted.decode_s_per_token == pytest.approx(plans[1].predicted.decode_s_per_token, rel=0.05)
        assert plan.predicted.prefill_s >= plans[1].predicted.prefill_s * 0.99


def test_more_gpus_hold_more_resident_heads_and_decode_faster():
    """What N GPUs buy at a fixed per-GPU budget: 1/N of the weights each, so more resident heads, less
    offloaded KV, a faster decode."""
    previous = None
    for gpus in (1, 2, 4):
        plan = _pipe(gpus, context=524288, gpu=24 * GB, host_mem_bytes=400 * GIB)
        if previous is not None:
            assert plan.resident_kv_heads > previous.resident_kv_heads
            assert plan.memory.host_kv_bytes < previous.memory.host_kv_bytes
            assert plan.predicted.decode_s_per_token < previous.predicted.decode_s_per_token
            assert not plan.decode_graphs          # several stages decode eagerly
        previous = plan


def test_70b_at_1m_fits_8_rtx_4090s_not_one():
    plan = _pipe(8, model=M70, hw=RTX, context=1 << 20, host_mem_bytes=600 * GIB, decode_tokens=16)
    assert plan.strategy == "head-offload" and len(plan.stages) == 8
    assert all(s.num_layers == 10 and s.gpu_peak_bytes <= 24 * GB for s in plan.stages)
    assert plan.memory.host_kv_bytes <= 600 * GIB
    assert all(0.8 < s.idle_fraction < 0.95 for s in plan.stages)          # about (N - 1) / N
    assert all(s.compute_bound_chunk_tokens is not None for s in plan.stages)
    assert any("compute-bound" in note for note in plan.notes)
    with pytest.raises(PlanError, match="below the model weights"):
        _pipe(1, model=M70, hw=RTX, context=1 << 20, host_mem_bytes=600 * GIB)
    with pytest.raises(PlanError, match="host RAM"):
        _pipe(8, model=M70, hw=RTX, context=1 << 20, host_mem_bytes=100 * GIB)


def test_pipeline_plan_round_trip(tmp_path):
    plan = _pipe(2, gpu=12 * GB)
    write_plan(plan, tmp_path / "plan.json")
    assert read_plan(tmp_path / "plan.json") == plan
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["gpus"] == 2 and {"first_layer", "num_layers", "idle_fraction"} <= set(data["stages"][0])


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_gpus_8_prints_stage_table(capsys):
    code, out, err = _cli(capsys, "plan", "--model", "llama-3-70b", "--context", "1M", "--gpu-mem", "24GB",
                          "--gpus", "8", "--parallel", "layers", "--host-mem", "600GiB", "--hw", "rtx-4090")
    assert code == 0 and err == ""
    assert "stages (8 GPUs in series" in out and "compute-bound chunk" in out and "idle" in out
    assert "per GPU x 8 GPUs" in out
    code, out, _ = _cli(capsys, "plan", "--gpus", "1", "--json")
    assert code == 0 and json.loads(out) == json.loads(_cli(capsys, "plan", "--json")[1])


@pytest.mark.parametrize("argv, message", [
    (["--gpus", "0"], "at least 1"),
    (["--gpus=-2"], "at least 1"),
    (["--gpus", "two"], "whole number"),
    (["--gpus", "1.5"], "whole number"),
    (["--gpus", "33"], "more than the model's 32 layers"),
    (["--gpus", "2", "--max-context"], "single-GPU only"),
])
def test_cli_bad_gpus_exit_2_one_line(capsys, argv, message):
    code, out, err = _cli(capsys, "plan", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_run_several_gpus_needs_them(capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    code, out, err = _cli(capsys, "run", "--gpus", "2", "--device", "cuda", "--context", "4K")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "GPU" in err
