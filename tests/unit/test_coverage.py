"""planner/coverage.py: plan notes for shapes outside the profile's tables and for contexts past the trained length;
the profiler presets cover every built-in model's shapes; the lookup picks the measured GQA ratio."""

from __future__ import annotations

import pytest

from hwprofiles import load_profile
from hwprofiles.schema import AttentionPoint
from planner.coverage import coverage_notes, trained_length_note, trained_length_tokens
from planner.hw_lookup import RateLookup
from planner.builtin_models import BUILTIN_MODELS
from planner.model_spec import model_spec_from_config
from planner.solver import make_plan

H200_QUICK = load_profile("h200-sxm-quick")


def _plan(model, hw, context, **kw):
    return make_plan(BUILTIN_MODELS[model], hw, context_tokens=context, decode_tokens=4, gpu_mem_bytes=24 * 10**9,
                     **kw)


def test_head_dim_64_from_a_head_dim_128_profile_says_so_with_the_size():
    """The H200 case of 2026-12-01: a 1B plan at 1M on flash from a quick profile whose step points were head dim
    128 only."""
    notes = _plan("llama-3.2-1b", H200_QUICK, 1 << 20, attention_backend="flash").notes
    head = [n for n in notes if n.startswith("profile coverage: head dim 64")]
    assert head and "2.0x" in head[0] and "128" in head[0]
    keys = [n for n in notes if "key length" in n]
    assert keys and "1M" in keys[0] and "8.0x" in keys[0]


def _point(backend, dim, ratio, kv, q_len, k_len, rate):
    return AttentionPoint(backend=backend, head_dim=dim, q_heads=ratio * kv, kv_heads=kv, q_len=q_len, k_len=k_len,
                          causal=True, flops_per_s=rate)


def _covering_profile():
    """A profile whose flash step table holds every built-in shape at chunks 4K-16K and keys up to 1M."""
    points = [_point("flash-step", dim, ratio, kv, q, k, 3e14)
              for dim, ratio in {(m.head_dim, m.query_heads_per_kv_head) for m in BUILTIN_MODELS.values()}
              for kv in (1, 8) for q in (4096, 16384) for k in (q, 1 << 20)]
    points += [_point("flash", dim, 4, 1, 1, 1 << 20, 1e13) for dim in {m.head_dim for m in BUILTIN_MODELS.values()}]
    base = load_profile("h100-sxm-measured")
    return base.model_copy(update={"attention_table": points, "name": "covering"})


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_no_coverage_note_inside_the_tables(name):
    notes = coverage_notes(BUILTIN_MODELS[name], _covering_profile(), backend="flash", chunk_tokens=8192,
                           context_tokens=131072)
    assert notes == []


def test_ratio_chunk_and_backend_outside_the_tables():
    hw = _covering_profile()
    hw = hw.model_copy(update={"attention_table": [p for p in hw.attention_table if p.q_heads // p.kv_heads == 4]})
    notes = coverage_notes(BUILTIN_MODELS["qwen2-7b"], hw, backend="flash", chunk_tokens=65536, context_tokens=1 << 21)
    text = " | ".join(notes)
    assert "GQA ratio 7" in text and "ratio 4 used, 1.8x away" in text
    assert "chunk 64K tokens is 4.0x the longest chunk measured (16K)" in text
    assert "key length 2M is 2.0x the longest measured (1M)" in text
    none = coverage_notes(BUILTIN_MODELS["llama-3-8b"], load_profile("rtx-4090"), backend="flash",
                          chunk_tokens=8192, context_tokens=32768)
    assert len(none) == 1 and "no measured attention points for backend flash" in none[0]


def test_cudnn_split_is_checked_against_the_cudnn_kernel_points():
    """cudnn-split's past parts are priced from the cuDNN kernel table (attention_time.attention_seconds, the chunk
    part once per layer): step points at head dim 64 do not cover a head dim 64 plan whose kernel points are 128."""
    hw = _covering_profile()
    steps = [p.model_copy(update={"backend": "cudnn-split-step"}) for p in hw.attention_table if p.q_len > 1]
    kernel = [_point("cudnn", 128, 4, kv, q, k, 6e14).model_copy(update={"causal": False})
              for kv in (1, 8) for q in (4096, 16384) for k in (4096, 1 << 20)]
    hw = hw.model_copy(update={"attention_table": hw.attention_table + steps + kernel})
    notes = coverage_notes(BUILTIN_MODELS["llama-3.2-1b"], hw, backend="cudnn-split", chunk_tokens=8192,
                           context_tokens=1 << 20)
    assert any("head dim 64 not measured (cudnn points have 128)" in n for n in notes)
    assert coverage_notes(BUILTIN_MODELS["llama-3-8b"], hw, backend="cudnn-split", chunk_tokens=8192,
                          context_tokens=1 << 20) == []
    assert coverage_notes(BUILTIN_MODELS["llama-3.2-1b"], hw, backend="flash", chunk_tokens=8192,
                          context_tokens=1 << 20) == []                     # flash: its step points cover it


def test_lookup_uses_the_measured_gqa_ratio():
    base = load_profile("h100-sxm-measured")
    table = [_point("flash", 128, 4, 2, 4096, k, 3e14) for k in (4096, 65536)]
    table += [_point("flash", 128, 8, 1, 4096, k, 1e14) for k in (4096, 65536)]
    lookup = RateLookup(base.model_copy(update={"attention_table": table}))
    rate = lambda ratio: float(lookup.attention_flops_per_s(backend="flash", q_heads=8, q_len=4096,  # noqa: E731
                                                             k_len=32768, head_dim=128, causal=True, gqa_ratio=ratio))
    assert rate(4) == pytest.approx(3e14) and rate(8) == pytest.approx(1e14) and rate(7) == pytest.approx(1e14)
    assert rate(None) == pytest.approx(3e14)


def test_trained_length_note_names_both_numbers():
    note = trained_length_note(BUILTIN_MODELS["llama-3-8b"], 131072)
    assert note.startswith("trained length:") and "131072" in note and "8192" in note
    assert trained_length_note(BUILTIN_MODELS["llama-3.1-8b"], 131072) is None      # llama3 rope: 128K trained
    assert "131072" in trained_length_note(BUILTIN_MODELS["llama-3.1-8b"], 262144)
    yarn = model_spec_from_config({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "vocab_size": 97, "max_position_embeddings": 32768,
                                   "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 32768}})
    assert trained_length_tokens(yarn)[0] == 131072
    assert trained_length_note(yarn, 131072) is None and "131072" in trained_length_note(yarn, 131073)
    plan = _plan("llama-3-8b", H200_QUICK, 131072)
    assert any(n.startswith("trained length:") for n in plan.notes)


def test_profiler_presets_cover_every_builtin_shape():
    pytest.importorskip("torch")
    from executor.profiler.attention_step import STEP_FULL, STEP_QUICK, step_shapes
    from executor.profiler.config import GPU_FULL, GPU_QUICK, with_model_shapes

    wanted = {(m.head_dim, m.query_heads_per_kv_head) for m in BUILTIN_MODELS.values()}

    class Ctx:
        def __init__(self, preset):
            self.preset = preset

    for preset, grid in ((GPU_QUICK, STEP_QUICK), (GPU_FULL, STEP_FULL)):
        assert {dim for (dim, _), _ in preset.attention_shapes()} >= {dim for dim, _ in wanted}   # kernel table
        assert {(s.head_dim, s.ratio) for s in step_shapes(Ctx(preset), grid)} >= wanted
    odd = model_spec_from_config({"model_type": "llama", "hidden_size": 96, "intermediate_size": 96,
                                  "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 1,
                                  "head_dim": 96, "vocab_size": 97})
    extended = with_model_shapes(GPU_QUICK, [odd])
    assert (96, 6) in {shape for shape, _ in extended.attention_shapes()}
    assert (96, 6) in {(s.head_dim, s.ratio) for s in step_shapes(Ctx(extended), STEP_QUICK)}
