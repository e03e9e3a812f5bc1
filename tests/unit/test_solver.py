"""planner/solver.py guarantees: never over budget, fixed knobs honoured, more GPU memory never slower, ties
to the coarser grouping, one-line PlanErrors, max_context consistent with make_plan."""

import pytest

from hwprofiles import load_profile
from planner.candidates import Candidate, make_setup
from planner.errors import PlanError
from planner.builtin_models import BUILTIN_MODELS
from planner.plan import STRATEGIES
from planner.solver import _best, evaluate, make_plan, max_context
from planner.units import GB, GIB

M = BUILTIN_MODELS["llama-3-8b"]
H100 = load_profile("h100-sxm-measured")
RTX = load_profile("rtx-4090")


def _plan(hw=H100, context=131072, gpu=24 * GB, **kw):
    return make_plan(M, hw, context_tokens=context, decode_tokens=kw.pop("decode_tokens", 8), gpu_mem_bytes=gpu, **kw)


@pytest.mark.parametrize("hw", [H100, RTX])
@pytest.mark.parametrize("context, gpu", [(32768, 20 * GB), (131072, 24 * GB), (262144, 40 * GB),
                                          (131072, None)])
def test_never_over_budget(hw, context, gpu):
    plan = _plan(hw, context, gpu, host_mem_bytes=400 * GIB)
    assert plan.memory.gpu_peak_bytes <= plan.memory.gpu_budget_bytes
    assert plan.memory.host_kv_bytes <= plan.memory.host_budget_bytes
    assert plan.memory.gpu_budget_bytes == (gpu or hw.gpu_mem_bytes)
    assert len(plan.predicted.chunk_s) == -(-context // plan.chunk_size)
    assert plan.predicted.total_s == pytest.approx(plan.predicted.pin_s + plan.predicted.prefill_s
                                                   + plan.decode_tokens * plan.predicted.decode_s_per_token)
    assert {a.strategy for a in plan.alternatives} | {plan.strategy} == set(STRATEGIES)
    for alt in plan.alternatives:
        assert alt.reason.startswith("slower" if alt.fits else "does not fit")


def test_fixed_knobs_honoured():
    plan = _plan(chunk_size=8192, heads_per_group=2, resident_kv_heads=40)
    assert (plan.chunk_size, plan.heads_per_group, plan.resident_kv_heads) == (8192, 2, 40)
    assert plan.strategy == "head-offload"
    assert _plan(gpu=None, chunk_size=1 << 30).chunk_size == 131072          # capped at the context
    assert _plan(heads_per_group=4).heads_per_group == 4
    forced = _plan(strategy="layer-offload")
    assert (forced.strategy, forced.resident_kv_heads, forced.heads_per_group) == ("layer-offload", 0, 8)
    assert _plan(gpu=None, strategy="standard").chunk_size == 131072
    with pytest.raises(PlanError, match="divide"):
        _plan(heads_per_group=3)
    with pytest.raises(PlanError, match="between 0 and 256"):
        _plan(resident_kv_heads=300)
    with pytest.raises(PlanError, match="GPU budget"):
        _plan(resident_kv_heads=255)                                # all that KV cannot fit 24 GB


def test_more_gpu_memory_never_slower():
    for hw in (H100, RTX):
        previous = float("inf")
        for gib in range(18, 80, 3):
            plan = _plan(hw, 131072, gib * GIB, host_mem_bytes=400 * GIB)
            assert plan.predicted.total_s <= previous * (1 + 1e-9)
            previous = plan.predicted.total_s


def test_ties_go_to_coarser_grouping():
    setup = make_setup(M, H100, context_tokens=65536, decode_tokens=1, gpu_mem_bytes=None, host_mem_bytes=None,
                       dtype="bfloat16")
    cands = []
    for group in (1, 2, 8, 4):
        cand = Candidate.build(setup, "head-offload", 8192, group, 100)
        cand.total_s = 5.0
        cands.append(cand)
    assert _best(cands).heads_per_group == 8
    cands[0].total_s = 4.9
    assert _best(cands).heads_per_group == 1


def test_plan_errors_are_one_line():
    with pytest.raises(PlanError, match=r"below the model weights .*minimum") as exc:
        _plan(gpu=10 * GB)
    assert "\n" not in str(exc.value)
    with pytest.raises(PlanError, match=r"host RAM.*longest context that fits is") as exc:
        _plan(context=4 * 1024**2, gpu=None)
    assert "\n" not in str(exc.value)
    with pytest.raises(PlanError):
        _plan(context=0)
    with pytest.raises(PlanError):
        _plan(decode_tokens=-1)


def test_max_context_consistent_with_make_plan():
    result = max_context(M, H100, gpu_mem_bytes=24 * GB, decode_tokens=8)
    assert set(result) == set(STRATEGIES)
    assert result["standard"] < result["chunked"] < result["layer-offload"] <= result["head-offload"]
    longest = result["head-offload"]
    assert _plan(context=longest, strategy="head-offload").memory.host_kv_bytes <= H100.host_mem_bytes
    with pytest.raises(PlanError):
        _plan(context=longest + 1024, strategy="head-offload")
    chunked = result["chunked"]
    assert _plan(context=chunked, strategy="chunked").strategy == "chunked"
    with pytest.raises(PlanError):
        _plan(context=chunked + 64, strategy="chunked")


def test_evaluate_fixed_configuration():
    fits, mem, pred, reason = evaluate(M, H100, context_tokens=131072, decode_tokens=4, gpu_mem_bytes=24 * GB,
                                       host_mem_bytes=None, dtype="bfloat16", chunk_size=8192, heads_per_group=2,
                                       resident_kv_heads=40)
    assert fits and reason == "fits" and len(pred.chunk_s) == 16
    fits, mem, pred, reason = evaluate(M, H100, context_tokens=131072, decode_tokens=4, gpu_mem_bytes=24 * GB,
                                       host_mem_bytes=None, dtype="bfloat16", chunk_size=8192, heads_per_group=8,
                                       resident_kv_heads=256, attention_backend="flash")
    assert not fits and "over the" in reason and pred.prefill_s > 0


def test_measured_profile_prefers_cudnn_and_datasheet_flash():
    assert _plan().attention_backend == "cudnn-split"
    assert _plan(RTX, gpu=None, context=32768).attention_backend == "flash"


def test_plan_notes_when_its_shapes_lie_outside_the_profile():
    """A chunk longer than any the profile measured gets a note; a plan inside the measured range gets none."""
    from planner.builtin_models import BUILTIN_MODELS

    outside = make_plan(BUILTIN_MODELS["llama-3.2-1b"], H100, context_tokens=131072, decode_tokens=16,
                        gpu_mem_bytes=24 * 10**9, chunk_size=131072)
    assert any("extrapolated" in note for note in outside.notes)
    inside = make_plan(BUILTIN_MODELS["llama-3-8b"], H100, context_tokens=131072, decode_tokens=16,
                       gpu_mem_bytes=24 * 10**9, chunk_size=8192)
    assert not any("extrapolated" in note for note in inside.notes)
