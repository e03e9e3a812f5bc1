"""Gemma-2 and sliding-window models in the planner: published parameter counts, config.json reading, the window
counted on the GPU and never on the host, the full-attention layers alone offloaded, and what is refused."""

import json

import numpy as np
import pytest

from planner import memory_model as mm
from planner.candidates import make_setup
from planner.errors import PlanError
from planner.host_time import summarize_layers
from planner.builtin_models import BUILTIN_MODELS
from planner.model_spec import ModelSpecError, gemma2_layer_types, load_model_spec, model_spec_from_config
from planner.solver import MAX_CONTEXT_SEARCH_TOKENS, make_plan, max_context
from planner.time_model import Workload, predict_prefill
from planner.units import GIB
from tests.unit.planner_test_profiles import scalar_profile


@pytest.mark.parametrize("name, published_billions", [("gemma-2-2b", 2.61), ("gemma-2-9b", 9.24),
                                                      ("gemma-2-27b", 27.2), ("mistral-7b-v0.1", 7.24)])
def test_param_count_matches_published(name, published_billions):
    count = BUILTIN_MODELS[name].param_count
    assert abs(count / 1e9 - published_billions) / published_billions < 0.005


def test_gemma2_layer_terms_by_hand():
    spec = BUILTIN_MODELS["gemma-2-9b"]
    attention = 2 * 3584 * 16 * 256 + 2 * 3584 * 8 * 256
    assert spec.layer_param_count == attention + 3 * 3584 * 14336 + 4 * 3584  # four RMSNorms per layer
    assert spec.embedding_param_count == 256000 * 3584  # tied lm_head
    assert spec.attention_scale == 256 ** -0.5
    assert BUILTIN_MODELS["gemma-2-27b"].attention_scale == 144 ** -0.5  # query_pre_attn_scalar, not head dim


def test_windows_alternate_and_only_full_layers_hold_context_kv():
    spec = BUILTIN_MODELS["gemma-2-9b"]
    assert spec.layer_windows[:4] == (4096, None, 4096, None)
    assert (spec.full_attention_layers, spec.sliding_layers) == (21, 21)
    assert spec.kv_head_slots == 21 * 8
    assert spec.kv_bytes_per_token(2) == 2 * 21 * 8 * 256 * 2
    assert spec.window_kv_bytes(2) == 21 * 2 * 8 * 4095 * 256 * 2
    mistral = BUILTIN_MODELS["mistral-7b-v0.1"]
    assert mistral.sliding_layers == 32 and mistral.kv_head_slots == 0
    assert BUILTIN_MODELS["mistral-7b"].sliding_layers == 0  # v0.2 and later: full attention


def test_gemma2_config_json(tmp_path):
    config = {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
              "sliding_window": 4096, "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
              "final_logit_softcapping": 30.0, "layer_types": list(gemma2_layer_types(26))}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = load_model_spec(str(tmp_path))
    builtin = BUILTIN_MODELS["gemma-2-2b"]
    assert spec.param_count == builtin.param_count
    assert spec.layer_windows == builtin.layer_windows and spec.attn_logit_softcapping == 50.0
    del config["layer_types"]  # older config files: the default alternation
    assert model_spec_from_config(config).layer_windows == builtin.layer_windows
    round_trip = model_spec_from_config(builtin.to_hf_config_dict())
    assert round_trip.layer_windows == builtin.layer_windows and round_trip.param_count == builtin.param_count


def test_refused_with_one_line():
    with pytest.raises(ModelSpecError, match="Qwen2 with use_sliding_window"):
        model_spec_from_config({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 97,
                                "sliding_window": 32, "use_sliding_window": True})
    with pytest.raises(ModelSpecError, match="layer_types"):
        model_spec_from_config({"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 96,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 97,
                                "sliding_window": 32, "layer_types": ["chunked_attention", "full_attention"]})
    with pytest.raises(PlanError, match="flex"):
        make_setup(BUILTIN_MODELS["gemma-2-9b"], scalar_profile(), context_tokens=1024, decode_tokens=0,
                   gpu_mem_bytes=None, host_mem_bytes=None, dtype="bfloat16", attention_backend="cudnn-split")


def test_memory_counts_the_window_on_the_gpu_not_the_host():
    spec = BUILTIN_MODELS["gemma-2-9b"]
    kv = mm.kv_terms(spec, chunk_tokens=4096, heads_per_group=2, resident_kv_heads=0, capacity_tokens=1 << 20,
                     elem_bytes=2)
    assert kv["window"] == spec.window_kv_bytes(2) + 2 * 8 * (4095 + 4096) * 256 * 2
    host = mm.host_kv_bytes(spec, 0, 1 << 20, 2)
    assert host == 21 * 8 * 2 * 256 * (1 << 20) * 2  # 21 full-attention layers only: 168 GiB at 1M
    assert host == 168 * GIB


def test_sliding_layers_priced_over_their_window():
    spec = BUILTIN_MODELS["gemma-2-9b"]
    kinds = summarize_layers(spec, 0, 8)
    assert [(k.count, k.window, k.group_sizes) for k in kinds] == [(21, None, [8]), (21, 4096, [])]
    profile = scalar_profile(gpu_mem_bytes=80 * GIB, host_mem_bytes=1024 * GIB)
    from planner.candidates import rate_lookup

    lookup = rate_lookup(profile)

    def attention_s(model, context):
        work = Workload(context_tokens=context, decode_tokens=0, chunk_size=4096, heads_per_group=8,
                        resident_kv_heads=0, elem_bytes=2, backend="flex")
        return float(np.sum(predict_prefill(model, lookup, work)[1]["attention"]))

    full = spec.model_copy(update={"sliding_window": None, "layer_types": None})
    # at 64K the sliding layers attend 4K keys per query instead of up to 64K: about half the attention time
    ratio = attention_s(spec, 65536) / attention_s(full, 65536)
    assert 0.5 < ratio < 0.6


def test_max_context_of_windowed_models():
    profile = scalar_profile(gpu_mem_bytes=24 * GIB, host_mem_bytes=1024 * GIB)
    gemma = max_context(BUILTIN_MODELS["gemma-2-9b"], profile, gpu_mem_bytes=24 * 10 ** 9,
                        host_mem_bytes=1 << 40)
    # host RAM over the full-attention layers' 168 KiB per token bounds head offload: at most 1 TiB / 168 KiB
    assert 1_300_000 < gemma["head-offload"] <= (1 << 40) // (21 * 8 * 2 * 256 * 2)
    mistral = max_context(BUILTIN_MODELS["mistral-7b-v0.1"], profile, gpu_mem_bytes=24 * 10 ** 9,
                          host_mem_bytes=1 << 40)
    assert mistral["chunked"] > MAX_CONTEXT_SEARCH_TOKENS  # its KV is the window: memory sets no limit
    assert mistral["head-offload"] == 0


def test_gemma2_plan_chooses_flex_and_no_decode_graph():
    profile = scalar_profile(gpu_mem_bytes=80 * GIB, host_mem_bytes=1024 * GIB)
    plan = make_plan(BUILTIN_MODELS["gemma-2-2b"], profile, context_tokens=32768, decode_tokens=4,
                     gpu_mem_bytes=None, host_mem_bytes=None)
    assert plan.attention_backend == "flex"
    assert not plan.decode_graphs or plan.strategy == "head-offload"
    with pytest.raises(PlanError, match="one GPU"):
        from planner.pipeline import stage_shapes

        stage_shapes(BUILTIN_MODELS["gemma-2-9b"], 2)


def test_flex_runtime_memory_joins_the_overhead_only_for_flex():
    """The compiled flex kernels' GPU memory outside the allocator (profile flex_runtime_overhead_bytes) is part
    of a flex plan's overhead; a profile without the figure says so in a note; other backends never pay it."""
    extra = 1 << 30
    measured = scalar_profile(gpu_mem_bytes=80 * GIB, host_mem_bytes=1024 * GIB, flex_runtime_overhead_bytes=extra)
    unmeasured = scalar_profile(gpu_mem_bytes=80 * GIB, host_mem_bytes=1024 * GIB)
    kwargs = dict(context_tokens=32768, decode_tokens=4, gpu_mem_bytes=None, host_mem_bytes=None, dtype="bfloat16")
    gemma = BUILTIN_MODELS["gemma-2-9b"]
    with_figure, without = make_setup(gemma, measured, **kwargs), make_setup(gemma, unmeasured, **kwargs)
    assert with_figure.overhead_bytes - without.overhead_bytes == extra
    assert any("outside the allocator" in note for note in without.notes)
    assert not any("outside the allocator" in note for note in with_figure.notes)
    llama = BUILTIN_MODELS["llama-3-8b"]
    assert make_setup(llama, measured, **kwargs).overhead_bytes == make_setup(llama, unmeasured, **kwargs).overhead_bytes
    plan_measured = make_plan(gemma, measured, context_tokens=32768, decode_tokens=4, gpu_mem_bytes=24 * 10 ** 9,
                              host_mem_bytes=None)
    plan_unmeasured = make_plan(gemma, unmeasured, context_tokens=32768, decode_tokens=4,
                                gpu_mem_bytes=24 * 10 ** 9, host_mem_bytes=None)
    assert (plan_measured.memory.gpu_breakdown.overhead - plan_unmeasured.memory.gpu_breakdown.overhead) == extra
