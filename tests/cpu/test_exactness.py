"""Exactness of the head-offloaded loop against the standard transformers forward on tiny random models.

float32: greedy tokens identical, logits within 1e-4. bfloat16: the offloaded error against a float64 reference
stays within a small factor of the standard bf16 forward's own error.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.report.verify import standard_step_logits  # noqa: E402
from executor.attention.kernels import attend_chunk  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from tests.references import half_precision_errors  # noqa: E402

NEW_TOKENS = 4


def tiny_model(model_type: str = "llama", *, query_heads: int = 4, kv_heads: int = 2, layers: int = 2,
               dtype=torch.float32, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=16 * query_heads, intermediate_size=96,
                                  num_hidden_layers=layers, num_attention_heads=query_heads,
                                  num_key_value_heads=kv_heads, head_dim=16, vocab_size=97,
                                  max_position_embeddings=256, sliding_window=None, use_sliding_window=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    if model_type == "qwen2":  # make the q/k/v biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
    return model


def prompt(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(seed))


def run_offloaded(model, ids, *, chunk: int, group: int, resident: int, backend: str = "math"):
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend=backend)
    return execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu", options=RunOptions(keep_logits=True))


def assert_exact_float32(model, ids, **knobs):
    measurement = run_offloaded(model, ids, **knobs)
    total_slots = model.config.num_hidden_layers * model.config.num_key_value_heads
    if knobs["resident"] < total_slots:  # the offloaded path really ran
        assert measurement.counters["prefill"].d2h_bytes > 0
    reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()
    assert (measurement.step_logits - reference).abs().max().item() < 1e-4


PROMPT = 13


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 20])  # 4, 5 do not divide 13; 20 is longer than the prompt
def test_chunk_sizes(chunk):
    model = tiny_model()
    assert_exact_float32(model, prompt(PROMPT), chunk=chunk, group=1, resident=1)


@pytest.mark.parametrize("kv_heads,group", [(4, 1), (4, 2), (4, 3), (4, 4)])
def test_every_group_size(kv_heads, group):
    model = tiny_model(query_heads=8, kv_heads=kv_heads)
    assert_exact_float32(model, prompt(PROMPT), chunk=5, group=group, resident=0)


@pytest.mark.parametrize("resident", [0, 1, 3, 5, 8])  # 3 and 5: uneven spread over 2 layers; 8: all resident
def test_resident_heads(resident):
    model = tiny_model(query_heads=8, kv_heads=4)
    assert_exact_float32(model, prompt(PROMPT), chunk=6, group=2, resident=resident)


@pytest.mark.parametrize("query_heads,kv_heads", [(4, 4), (4, 2), (8, 2), (7, 1), (14, 2)])  # GQA 1, 2, 4, 7, 7
def test_gqa_ratios(query_heads, kv_heads):
    model = tiny_model(query_heads=query_heads, kv_heads=kv_heads)
    assert_exact_float32(model, prompt(PROMPT), chunk=4, group=1, resident=1)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_model_families(model_type):
    model = tiny_model(model_type, query_heads=8, kv_heads=4)
    assert_exact_float32(model, prompt(PROMPT), chunk=5, group=2, resident=3)


@pytest.mark.parametrize("chunk,group,resident", [(5, 1, 0), (13, 4, 0), (4, 2, 3)])
def test_bfloat16_within_reference_error(chunk, group, resident):
    """Offloaded bf16 vs a float64 reference: within 2x (+ slack) of the standard bf16 forward's own error."""
    model16 = tiny_model(query_heads=8, kv_heads=4, dtype=torch.bfloat16)
    ids = prompt(PROMPT)
    ours = run_offloaded(model16, ids, chunk=chunk, group=group, resident=resident)
    our_error, standard_error = half_precision_errors(ours, model16, ids)
    assert our_error <= 2.0 * standard_error + 1e-3, (our_error, standard_error)


def test_attend_chunk_math_matches_sdpa_lower_right():
    from torch.nn.attention.bias import causal_lower_right

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 5, 16, generator=generator)
    k = torch.randn(1, 2, 12, 16, generator=generator)
    v = torch.randn(1, 2, 12, 16, generator=generator)
    ours = attend_chunk(q, k, v, scale=0.25, backend="math")
    k_rep, v_rep = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=causal_lower_right(5, 12),
                                                                 scale=0.25)
    assert (ours - reference).abs().max().item() < 1e-5


def test_model_unmodified_after_run():
    model = tiny_model()
    before = model.config._attn_implementation
    run_offloaded(model, prompt(7), chunk=3, group=1, resident=0)
    assert model.config._attn_implementation == before


def test_warm_up_pass_then_exact_run():
    """The warm-up pass (default on CUDA) runs the same engine on a tiny prompt first; the timed run after it is
    still exact and reports the warm-up time apart from prefill."""
    from executor.settings import ExecutionSettings
    from executor.generation.runner import execute

    model, ids = tiny_model(kv_heads=2), prompt(13)
    settings = ExecutionSettings(chunk_size=5, heads_per_group=1, resident_kv_heads=1, capacity_tokens=16,
                                 attention_backend="math")
    warm = execute(model, ids, settings, new_tokens=3, device="cpu", options=RunOptions(warmup=True))
    cold = execute(model, ids, settings, new_tokens=3, device="cpu", options=RunOptions(warmup=False))
    assert warm.warmup_s is not None and warm.warmup_s > 0 and cold.warmup_s is None
    assert warm.generated_token_ids == cold.generated_token_ids


def test_verify_in_bf16_reports_the_float32_reference_and_leaves_the_model_as_it_was():
    """--verify in bf16 (report/verify.py): the float32 forward of the same weights gives ours' error and the
    standard bf16 forward's own; the model's tensors are bit-identical and in their own dtypes afterwards (the
    rotary frequencies stay float32)."""
    from executor.report.verify import verify_against_standard

    model16 = tiny_model(query_heads=8, kv_heads=4, dtype=torch.bfloat16)
    before = {name: t.clone() for name, t in (*model16.named_parameters(), *model16.named_buffers())}
    ids = prompt(PROMPT)
    ours = run_offloaded(model16, ids, chunk=5, group=2, resident=1)
    block = verify_against_standard(model16, ids, ours, "cpu")
    reference = block["float32_reference"]
    assert reference["within_standard_error"] is True
    assert 0 < reference["ours_error"] <= 2.0 * reference["standard_error"] + 1e-3
    after = dict((*model16.named_parameters(), *model16.named_buffers()))
    assert any(t.dtype == torch.float32 for t in before.values())  # a float32 buffer exists to be kept
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    model32 = tiny_model(query_heads=8, kv_heads=4, dtype=torch.float32)
    assert "float32_reference" not in verify_against_standard(model32, ids, run_offloaded(model32, ids, chunk=5,
                                                                                          group=2, resident=1), "cpu")
