"""planner/tensor_parallel.py: several GPUs by heads. The split is refused with the divisors where N does not
divide the heads; a rank is the model with 1/N of every layer's heads and MLP and the embeddings whole; each
rank's memory and time come from the single-GPU model on that share plus two all-reduces per layer (measured in
the profile where it has them, else an assumed figure said in a note); `auto` keeps the faster split and says
why; the CLI plans and refuses as it should."""

import json

import pytest

from hwprofiles import load_profile
from hwprofiles.schema import AllReducePoint, profile_hash, with_hash
from headplan.cli import main
from planner.errors import PlanError
from planner.builtin_models import BUILTIN_MODELS
from planner.pipeline import make_pipeline_plan
from planner.render import render_plan
from planner.solver import make_plan
from planner.tensor_parallel import (ASSUMED_BUS_BYTES_PER_S, allreduce_s, check_head_split, choose_parallel,
                                     head_split_divisors, local_spec, make_tensor_plan)
from planner.units import GB

M8 = BUILTIN_MODELS["llama-3-8b"]
H100 = load_profile("h100-sxm-measured")
WORK = dict(context_tokens=262144, decode_tokens=16, gpu_mem_bytes=24 * GB)


def test_divisors_and_refusal():
    assert head_split_divisors(32, 8) == [2, 4, 8]
    check_head_split(32, 8, 4)
    with pytest.raises(PlanError, match="GPU counts that do: 2, 4, 8"):
        check_head_split(32, 8, 3)
    with pytest.raises(PlanError, match="none above 1"):
        check_head_split(7, 1, 2)


def test_local_spec_holds_a_share_of_the_layers_and_whole_embeddings():
    for ranks in (2, 4, 8):
        local = local_spec(M8, ranks)
        assert local.num_key_value_heads * ranks == M8.num_key_value_heads
        layers = M8.num_hidden_layers * (M8.layer_param_count - 2 * M8.hidden_size)  # norms are replicated
        local_layers = local.num_hidden_layers * (local.layer_param_count - 2 * local.hidden_size)
        assert local_layers * ranks == layers
        assert local.embedding_param_count == M8.embedding_param_count
        assert local.kv_bytes_per_token() * ranks == M8.kv_bytes_per_token()


def test_plan_by_heads_per_gpu_memory_and_time():
    one = make_plan(M8, H100, **WORK)
    heads = make_tensor_plan(M8, H100, gpus=2, **WORK)
    assert heads.parallel == "heads" and heads.gpus == 2 and heads.stages == [] and not heads.decode_graphs
    assert heads.model == M8
    local = local_spec(M8, 2)
    assert heads.resident_kv_heads <= local.kv_head_slots and heads.heads_per_group <= local.num_key_value_heads
    assert heads.memory.gpu_breakdown.weights < one.memory.gpu_breakdown.weights
    assert heads.memory.gpu_peak_bytes <= heads.memory.gpu_budget_bytes
    reduce_s = heads.predicted.terms["prefill_allreduce_s"]
    assert reduce_s > 0 and heads.predicted.terms["decode_allreduce_s_per_token"] > 0
    assert abs(sum(heads.predicted.chunk_s) - heads.predicted.prefill_s) < 1e-6 * heads.predicted.prefill_s
    assert heads.predicted.prefill_s < one.predicted.prefill_s
    assert heads.predicted.decode_s_per_token < one.predicted.decode_s_per_token
    assert any("assumed" in n and f"{ASSUMED_BUS_BYTES_PER_S / 1e9:.0f} GB/s" in n for n in heads.notes)
    assert "heads split 2 ways" in render_plan(heads)


def test_measured_allreduce_table_replaces_the_assumption():
    table = [AllReducePoint(gpus=2, size_bytes=s, seconds=t, bus_bytes_per_s=s / t)
             for s, t in ((8192, 1e-5), (1 << 20, 4e-5), (64 << 20, 1e-3))]
    measured = with_hash(H100.model_copy(update={"allreduce_table": table}))
    assert allreduce_s(measured, 2, 8192) == (1e-5, True)
    middle, _ = allreduce_s(measured, 2, 8 << 20)
    assert 4e-5 < middle < 1e-3
    assert allreduce_s(measured, 2, 128 << 20)[0] == pytest.approx(2e-3)
    assert allreduce_s(H100, 2, 8192)[1] is False
    plan = make_tensor_plan(M8, measured, gpus=2, **WORK)
    assert not any("assumed" in n for n in plan.notes)
    assert profile_hash(H100) == H100.content_hash  # the new optional table leaves old profiles' hashes alone


def test_auto_keeps_the_faster_and_says_why():
    layers = make_pipeline_plan(M8, H100, gpus=2, **WORK)
    heads = make_tensor_plan(M8, H100, gpus=2, **WORK)
    chosen = choose_parallel(layers, heads, None, None)
    faster = min((layers, heads), key=lambda p: p.predicted.total_s)
    assert chosen.parallel == faster.parallel
    assert "parallel auto" in chosen.notes[-1] and "slower" in chosen.notes[-1]
    only = choose_parallel(layers, None, None, "3 does not divide")
    assert only.parallel == "layers" and "3 does not divide" in only.notes[-1]
    with pytest.raises(PlanError, match="neither"):
        choose_parallel(None, None, "a", "b")


def test_cli_plan_by_heads(capsys):
    assert main(["plan", "--model", "llama-3-8b", "--context", "256K", "--gpu-mem", "24GB", "--gpus", "2",
                 "--parallel", "heads", "--hw", "h100-sxm-measured", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parallel"] == "heads" and data["gpus"] == 2
    assert main(["plan", "--model", "llama-3-8b", "--context", "256K", "--gpu-mem", "24GB", "--gpus", "3",
                 "--parallel", "heads", "--hw", "h100-sxm-measured"]) == 2
    err = capsys.readouterr().err
    assert "GPU counts that do: 2, 4, 8" in err and len(err.strip().splitlines()) == 1
    assert main(["plan", "--model", "llama-3-8b", "--context", "256K", "--gpu-mem", "24GB", "--gpus", "3",
                 "--hw", "h100-sxm-measured", "--json"]) == 0  # auto: by layers, with why not by heads
    data = json.loads(capsys.readouterr().out)
    assert data["parallel"] == "layers" and "does not plan" in data["notes"][-1]
