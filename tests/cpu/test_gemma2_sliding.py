"""Exactness of sliding-window layers and soft-capped attention (Gemma-2, Mistral v0.1) against transformers' own
eager forward on tiny random models: float32 greedy tokens identical and logits within 1e-4; bfloat16 within
the bf16 reference's own error against float64. Windows of 5 tokens over prompts of 19, so chunks run both
smaller and larger than the window."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.attention.kernels import attend_chunk  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from tests.references import attention_reference, half_precision_errors  # noqa: E402

NEW_TOKENS = 4
PROMPT = 19
WINDOW = 5


def tiny(model_type: str, *, query_heads: int = 4, kv_heads: int = 2, layers: int = 4, dtype=torch.float32,
         seed: int = 0, window: int = WINDOW):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {}
    if model_type == "gemma2":  # soft-caps small enough that tanh bends the random scores
        extra = dict(query_pre_attn_scalar=24, attn_logit_softcapping=0.5, final_logit_softcapping=3.0)
    config = AutoConfig.for_model(model_type, hidden_size=16 * query_heads, intermediate_size=96,
                                  num_hidden_layers=layers, num_attention_heads=query_heads,
                                  num_key_value_heads=kv_heads, head_dim=16, vocab_size=97,
                                  max_position_embeddings=256, sliding_window=window, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager").eval()
    with torch.no_grad():  # larger q/k so that scores reach the soft-cap and the window changes the answer
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    return model


def prompt(length: int = PROMPT, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(seed))


def run(model, ids, *, chunk: int, group: int, resident: int):
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math")
    return execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu", options=RunOptions(keep_logits=True))


def assert_exact(model, ids, **knobs):
    measurement = run(model, ids, **knobs)
    reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()
    assert (measurement.step_logits - reference).abs().max().item() < 1e-4
    return measurement


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 7, 19, 25])  # below, at and above the window of 5
def test_gemma2_chunk_sizes(chunk):
    measurement = assert_exact(tiny("gemma2"), prompt(), chunk=chunk, group=1, resident=1)
    assert measurement.counters["prefill"].d2h_bytes > 0  # the full-attention layers really offloaded


@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_gemma2_every_group_size(group):
    assert_exact(tiny("gemma2", query_heads=8, kv_heads=4), prompt(), chunk=6, group=group, resident=0)


@pytest.mark.parametrize("resident", [0, 1, 3, 5, 8])  # 2 full-attention layers x 4 KV heads = 8 slots
def test_gemma2_resident_heads(resident):
    assert_exact(tiny("gemma2", query_heads=8, kv_heads=4), prompt(), chunk=4, group=2, resident=resident)


@pytest.mark.parametrize("chunk", [1, 3, 5, 8, 19])
def test_mistral_sliding_window(chunk):
    model = tiny("mistral", query_heads=8, kv_heads=4, layers=2)
    measurement = assert_exact(model, prompt(), chunk=chunk, group=2, resident=0)
    assert measurement.host_store_bytes == 0  # every layer slides: nothing lives in host memory


def test_sliding_layers_hold_no_host_rows():
    model = tiny("gemma2", query_heads=8, kv_heads=4)
    measurement = run(model, prompt(), chunk=4, group=2, resident=0)
    full_layers, kv_heads, head_dim = 2, 4, 16
    assert measurement.host_store_bytes == 2 * full_layers * kv_heads * (PROMPT + NEW_TOKENS) * head_dim * 4


@pytest.mark.parametrize("model_type,chunk,group,resident", [("gemma2", 4, 1, 0), ("gemma2", 7, 4, 3),
                                                             ("mistral", 3, 2, 0)])
def test_bfloat16_within_reference_error(model_type, chunk, group, resident):
    layers = 4 if model_type == "gemma2" else 2
    model16 = tiny(model_type, query_heads=8, kv_heads=4, layers=layers, dtype=torch.bfloat16)
    ids = prompt()
    ours = run(model16, ids, chunk=chunk, group=group, resident=resident)
    our_error, standard_error = half_precision_errors(ours, model16, ids)
    assert our_error <= 2.0 * standard_error + 1e-3, (our_error, standard_error)


@pytest.mark.parametrize("softcap,window", [(None, None), (2.0, None), (None, 4), (2.0, 4)])
def test_math_backend_softcap_and_window(softcap, window):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 5, 16, generator=g) * 3, torch.randn(1, 2, 12, 16, generator=g) * 3,
               torch.randn(1, 2, 12, 16, generator=g))
    ours = attend_chunk(q, k, v, scale=0.25, backend="math", softcap=softcap, window=window)
    assert (ours - attention_reference(q, k, v, scale=0.25, softcap=softcap, window=window)).abs().max() < 1e-5


@pytest.mark.parametrize("chunk,keys,softcap,window", [(5, 12, 2.0, None), (5, 5, 2.0, None), (1, 9, 2.0, None),
                                                       (5, 12, 2.0, 4), (3, 7, None, 4)])
def test_flex_backend_arithmetic(chunk, keys, softcap, window):
    """attention/flex.py (the GPU kernel for soft-caps and windows) in eager mode on CPU: its past / chunk split,
    masks and log-sum-exp merge give the reference attention."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from executor.attention.flex import attend_flex

    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, chunk, 16, generator=g) * 3
    k, v = torch.randn(1, 2, keys, 16, generator=g) * 3, torch.randn(1, 2, keys, 16, generator=g)
    ours = attend_flex(q, k, v, scale=0.25, softcap=softcap, window=window)
    assert (ours - attention_reference(q, k, v, scale=0.25, softcap=softcap, window=window)).abs().max() < 1e-4


TINY_GEMMA2_CONFIG = {"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97,
                      "sliding_window": 5, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 1.0,
                      "final_logit_softcapping": 30.0}


def test_cli_run_of_a_gemma2_config_verifies(tmp_path):
    """headplan run on a Gemma-2 config.json (random weights built by the loader: the scaled embedding's buffer
    refilled) matches the standard forward, and the host store holds the two full-attention layers alone."""
    import json

    from headplan.cli import main as cli_main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_GEMMA2_CONFIG))
    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cpu", "--model", str(config), "--context", "13", "--chunk-size", "4",
                     "--heads-per-group", "1", "--resident-heads", "1", "--new-tokens", "3", "--dtype", "float32",
                     "--out", str(out), "--verify", "--no-progress", "--gpu-mem", "24GB"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["max_abs_logit_diff"] < 1e-4
    assert report["verify"]["greedy_tokens_agree"]
    offloaded_rows = 2 * 2 - 1  # 2 full-attention layers x 2 KV heads, one slot resident; sliding layers: none
    capacity = 13 + 3  # the context and --new-tokens (the plan is made for them)
    assert report["memory"]["host_store_bytes"] == 2 * offloaded_rows * capacity * 16 * 4


def test_profiler_flex_points_at_gemma2_shapes():
    """The flex section (executor/profiler/attention_flex.py) on CPU at a small preset: points of backend
    "flex" at head dim 256, two query heads per KV head, that the planner's lookup then uses for "flex"."""
    import dataclasses
    import io

    from executor.profiler.attention_flex import measure_flex_section
    from executor.profiler.config import TINY
    from executor.profiler.context import ProfileContext
    from planner.hw_lookup import RateLookup
    from tests.unit.planner_test_profiles import scalar_profile

    preset = dataclasses.replace(TINY, q_lens=(1, 1024), k_lens=(1024,), kv_heads_per_call=(1,),
                                 attention_max_flop_per_call=1e10, attention_budget_s=300.0)
    ctx = ProfileContext(device=torch.device("cpu"), preset=preset, stream=io.StringIO(), quiet=True)
    section = measure_flex_section(ctx)
    assert section["flex_runtime_overhead_bytes"] is None  # GPU memory outside the allocator: no GPU here
    points = section["points"]
    assert [(p.q_heads, p.kv_heads, p.q_len, p.k_len, p.head_dim) for p in points] == [
        (2, 1, 1024, 1024, 256), (2, 1, 1024, 2048, 256), (2, 1, 1, 1024, 256)]  # the last: the decode call
    assert all(p.backend == "flex" and p.causal and p.flops_per_s > 0 for p in points)
    lookup = RateLookup(scalar_profile(attention_table=points))
    assert lookup.has_backend("flex")
    assert lookup.has_decode_points("flex", 256)


@pytest.mark.parametrize("chunk,group,resident", [(4, 1, 0), (7, 4, 3)])
def test_bfloat16_through_flexattention_within_reference_error(monkeypatch, chunk, group, resident):
    """The GPU's soft-capped path, FlexAttention (attention/flex.py attend_flex: past part, masked chunk part,
    log-sum-exp merge, the decode call), run on the CPU in the engine's place of the math path: a tiny Gemma-2 in
    bf16 within twice the standard bf16 forward's own error against float64."""
    import executor.attention.kernels as kernels
    from executor.attention.flex import attend_flex

    monkeypatch.setattr(kernels, "_attend_math", lambda q, k, v, *, scale, softcap=None, window=None: attend_flex(
        q, k, v, scale=scale, softcap=softcap, window=window))
    model16 = tiny("gemma2", query_heads=8, kv_heads=4, dtype=torch.bfloat16)
    ids = prompt()
    ours = run(model16, ids, chunk=chunk, group=group, resident=resident)
    our_error, standard_error = half_precision_errors(ours, model16, ids)
    assert our_error <= 2.0 * standard_error + 1e-3, (our_error, standard_error)
