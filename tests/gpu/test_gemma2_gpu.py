"""Soft-capped and windowed attention on CUDA (attention/flex.py, compiled FlexAttention) in bf16 against a float64
reference, within twice the error of the bf16 math path plus one bf16 rounding step; and a tiny random Gemma-2
run through the engine on the GPU against transformers' eager forward (greedy tokens agree)."""

from __future__ import annotations

import pytest
import torch

from executor.attention.flex import attend_flex
from executor.attention.kernels import attend_chunk
from tests.references import attention_reference

pytestmark = pytest.mark.gpu

BF16_STEP = 2.0 ** -8


@pytest.mark.parametrize("chunk,keys,window", [(256, 256, None), (256, 3000, None), (1, 3000, None),
                                               (256, 600, 300), (1, 300, 300), (512, 4607, 4096)])
def test_flex_matches_reference_bf16(chunk, keys, window):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 16, chunk, 256, device="cuda", generator=g).bfloat16()
    k = torch.randn(1, 8, keys, 256, device="cuda", generator=g).bfloat16()
    v = torch.randn(1, 8, keys, 256, device="cuda", generator=g).bfloat16()
    exact = attention_reference(q, k, v, scale=256 ** -0.5, softcap=50.0, window=window)
    ours = attend_flex(q, k, v, scale=256 ** -0.5, softcap=50.0, window=window).double()
    math16 = attend_chunk(q, k, v, scale=256 ** -0.5, backend="math", softcap=50.0, window=window).double()
    bound = 2 * (math16 - exact).abs().max().item() + BF16_STEP * exact.abs().max().item()
    assert (ours - exact).abs().max().item() <= bound


def _tiny_gemma2(dtype: torch.dtype, prompt_tokens: int, **config):
    """A random Gemma-2 of ``config`` (vocabulary 1000) on the GPU in ``dtype``, eager attention, and a prompt."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma2", vocab_size=1000, **config), dtype=dtype,
                                             attn_implementation="eager").cuda().eval()
    return model, torch.randint(0, 1000, (1, prompt_tokens), generator=torch.Generator().manual_seed(1))


def test_tiny_gemma2_engine_on_gpu_matches_eager():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from executor.generation.runner import execute
    from executor.report.verify import standard_step_logits
    from executor.settings import ExecutionSettings, RunOptions

    model, ids = _tiny_gemma2(torch.float32, 200, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=48,
                              query_pre_attn_scalar=64, attn_logit_softcapping=2.0)
    # float32 on CUDA: the engine's soft-capped calls go to FlexAttention (no flash kernel takes a soft-cap)
    settings = ExecutionSettings(chunk_size=64, heads_per_group=1, resident_kv_heads=1, capacity_tokens=208,
                                 attention_backend="flex")
    measurement = execute(model, ids, settings, new_tokens=8, device="cuda", options=RunOptions(keep_logits=True))
    reference_logits = standard_step_logits(model, ids, measurement.generated_token_ids, "cuda")
    assert measurement.generated_token_ids == reference_logits.argmax(-1).tolist()
    assert (measurement.step_logits - reference_logits).abs().max().item() < 1e-3


def test_flex_stays_fused_over_the_engines_pattern():
    """Growing past lengths, decode steps and windows, as a run makes them: every call is served by a compiled
    entry (none warns of the eager flex_attention) and no call holds its scores: a call's extra memory stays far
    below the float32 scores of 2 query heads x 1024 queries x 64K keys (512 MiB), which the eager fallback
    allocated on the H200 (2026-12-01)."""
    import warnings

    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    keys_max = 65536
    k = torch.randn(1, 1, keys_max + 1024, 256, device="cuda").bfloat16()
    v = torch.randn_like(k)
    q = torch.randn(1, 2, 1024, 256, device="cuda").bfloat16()
    scores_bytes = 2 * 1024 * keys_max * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for keys in range(8192, keys_max + 1, 8192):               # prefill chunks over a growing past
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            attend_flex(q, k[:, :, :keys], v[:, :, :keys], scale=0.0625, softcap=50.0, window=None)
            attend_flex(q, k[:, :, :keys], v[:, :, :keys], scale=0.0625, softcap=50.0, window=4096)
            torch.cuda.synchronize()
            assert torch.cuda.max_memory_allocated() - base < scores_bytes / 8
        for keys in range(keys_max, keys_max + 12):                # decode steps
            attend_flex(q[:, :, :1], k[:, :, :keys], v[:, :, :keys], scale=0.0625, softcap=50.0, window=None)
    eager = [w for w in caught if "flex_attention called without torch.compile" in str(w.message)
             or "materializ" in str(w.message)]
    assert not eager, eager[0].message


def test_warm_up_stack_is_released_before_the_timed_run():
    """The warm-up's 32-token chunks run FlexAttention's short-query kernel at head dim 256, which grows the CUDA
    per-thread stack (8032 bytes on the H200: 1.9 GB outside the allocator); the run lowers it again before timing
    (runtime/gpu_memory.py release_grown_stack), and the report's phases say so."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from executor.generation.runner import execute
    from executor.settings import ExecutionSettings, RunOptions

    model, ids = _tiny_gemma2(torch.bfloat16, 256, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=256, sliding_window=64,
                              query_pre_attn_scalar=256, attn_logit_softcapping=50.0)
    settings = ExecutionSettings(chunk_size=128, heads_per_group=1, resident_kv_heads=1, capacity_tokens=260,
                                 attention_backend="flex")
    measurement = execute(model, ids, settings, new_tokens=2, device="cuda", options=RunOptions(warmup=True))
    phases = measurement.gpu_outside_allocator_by_phase
    assert set(phases) == {"start", "warmed-up", "prefilled", "decoded"}
    start = phases["start"]["stack_limit_bytes"]
    assert start is not None
    assert phases["warmed-up"]["stack_limit_bytes"] == start
