"""The prefill-speed knobs on CPU: the "whole" past cut of cudnn-split (one cuDNN call over the past's full blocks)
and compile_layers (torch.compile'd norms and MLPs), each against transformers on tiny random Llama models
(float32: identical greedy tokens, logits within 1e-4), and the planner's count of the split's calls against the
executor's own cut.

The engine's cudnn-split calls run on the math kernels here (CPU has no cuDNN): the engine's attend_chunk is
replaced by the split with math partials, so the cut, the parts and the merge are the run's own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.attention.split import attend_chunk_split, split_parts  # noqa: E402
from executor.generation.compiled_layers import compilable_modules, compiled_layers, prefill_lengths  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions, SplitOptions  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from tests.cpu.test_attention_split import make_inputs, reference, tolerance  # noqa: E402
from tests.cpu.test_exactness import NEW_TOKENS, prompt, tiny_model  # noqa: E402


@pytest.mark.parametrize("past,chunk,block", [(0, 8, 4), (3, 8, 4), (16, 8, 4), (19, 8, 4), (37, 5, 4),
                                              (60, 4, 4), (64, 16, 16)])
@pytest.mark.parametrize("kv_heads,ratio", [(1, 4), (2, 4), (2, 7)])
def test_whole_past_cut_matches_float64_reference(past, chunk, block, kv_heads, ratio):
    q, k, v = make_inputs(kv_heads * ratio, kv_heads, past, chunk, capacity_extra=5)
    scale = 1 / math.sqrt(q.shape[-1])
    ref = reference(q, k, v, scale)
    out = attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block, past_backend="math",
                             chunk_backend="math", past_cut="whole")
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v, scale, ref)


def test_whole_cut_parts_cover_the_keys_once():
    for past, chunk, block in ((0, 8, 4), (3, 8, 4), (37, 5, 4), (2048 * 13, 8192, 2048)):
        for chunk_backend in ("flash", "cudnn"):
            parts = split_parts(past, chunk, block_tokens=block, past_backend="cudnn", chunk_backend=chunk_backend,
                                past_cut="whole")
            covered = [i for part in parts for i in range(part.key_start, part.key_end)]
            assert covered == list(range(past + chunk))
            assert sum(part.backend == "cudnn" and not part.causal for part in parts) == (1 if past >= block else 0)


def _split_on_math(monkeypatch):
    """The engine's attention calls through attend_chunk_split on math partials, with the run's SplitOptions."""
    import executor.engine.offload as offload
    from executor.attention.kernels import attend_chunk

    calls = []

    def attend(q, k, v, *, scale, backend, out=None, split=SplitOptions(), softcap=None, window=None):
        if backend != "cudnn-split" or q.shape[2] == 1:
            return attend_chunk(q, k, v, scale=scale, backend="math", out=out, split=split)
        calls.append(split.past_cut)
        return attend_chunk_split(q, k, v, scale=scale, past_block_tokens=split.past_block_tokens,
                                  past_backend="math", chunk_backend="math", out=out, past_cut=split.past_cut)

    monkeypatch.setattr(offload, "attend_chunk", attend)
    return calls


def _assert_exact(model, ids, settings, options=RunOptions(keep_logits=True)):
    measurement = execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu", options=options)
    reference_logits = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference_logits.argmax(-1).tolist()
    assert (measurement.step_logits - reference_logits).abs().max().item() < 1e-4
    return measurement


@pytest.mark.parametrize("cut", ["binary", "whole"])
@pytest.mark.parametrize("chunk,group,resident,block", [(8, 1, 0, 4), (8, 2, 1, 8), (5, 1, 2, 4), (16, 2, 3, 4)])
def test_engine_exact_with_each_past_cut(monkeypatch, cut, chunk, group, resident, block):
    calls = _split_on_math(monkeypatch)
    model = tiny_model(layers=2)
    ids = prompt(37)
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="cudnn-split",
                                 split=SplitOptions(past_block_tokens=block, past_cut=cut, chunk_part="group"))
    _assert_exact(model, ids, settings)
    assert calls and set(calls) == {cut}


def test_planner_counts_the_cudnn_calls_the_executor_makes():
    """planner/host_time.py past_part_counts x calls per layer = the executor's cuDNN past parts over a prefill:
    Llama-3-8B shape, 128K in 8K chunks, G 2, R 64 (2 resident heads + 3 groups per layer): 6,144 cuDNN calls
    with the binary cut (the 6,147 of the H200 kernel profile, 2026-12-01, less the warm-up's 3), 3,968 whole."""
    from planner.host_time import PAST_BLOCK_TOKENS, past_part_counts, summarize_layers
    from planner.model_spec import load_model_spec

    model = load_model_spec("llama-3-8b")
    layer_types = summarize_layers(model, 64, 2)
    calls_per_chunk = sum(lt.count * (len(lt.group_sizes) + (1 if lt.resident else 0)) for lt in layer_types)
    context, chunk = 131072, 8192
    pasts = np.arange(0, context, chunk)
    for cut, expected in (("binary", 6144), ("whole", 3968)):
        executor_calls = 0
        for past in pasts:
            parts = split_parts(int(past), chunk, block_tokens=PAST_BLOCK_TOKENS, past_backend="cudnn",
                                chunk_backend=SplitOptions().chunk_backend_for(chunk), past_cut=cut)
            executor_calls += calls_per_chunk * sum(part.backend == "cudnn" for part in parts)
        planned = calls_per_chunk * int(np.sum(past_part_counts(pasts, PAST_BLOCK_TOKENS, cut) + 1))
        assert planned == executor_calls == expected, cut


def test_compile_layers_plumbed_and_restored():
    model = tiny_model(layers=2)
    modules = compilable_modules(model)
    assert len(modules) == 2 * 3 + 1   # per layer two RMSNorms and the MLP; the final norm
    with compiled_layers(model, True) as compiled:
        assert compiled == modules and all(m._compiled_call_impl is not None for m in modules)
        with compiled_layers(model, True) as inner:   # nested (the warm-up's tiny run): left to the outer
            assert inner == []
        assert all(m._compiled_call_impl is not None for m in modules)
    assert all(m._compiled_call_impl is None for m in modules)
    assert prefill_lengths(37, 8) == [5, 8] and prefill_lengths(32, 8) == [8] and prefill_lengths(5, 8) == [5]
    with pytest.raises(ValueError):
        SplitOptions(past_cut="halves")


def _inductor_works() -> bool:
    try:
        fn = torch.compile(lambda x: torch.nn.functional.silu(x) * 2)
        return bool(torch.allclose(fn(torch.ones(4)), torch.nn.functional.silu(torch.ones(4)) * 2))
    except Exception:  # noqa: BLE001 - no C++ compiler or no inductor here
        return False


def test_compiled_layers_exact_vs_transformers():
    """float32, inductor on CPU (skipped where it cannot compile): greedy tokens identical, logits within 1e-4;
    the warm-up path compiles at the run's chunk lengths first."""
    if not _inductor_works():
        pytest.skip("torch.compile (inductor) does not work here")
    model = tiny_model(layers=2)
    ids = prompt(21)
    settings = ExecutionSettings(chunk_size=8, heads_per_group=1, resident_kv_heads=1,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math",
                                 compile_layers=True)
    measurement = _assert_exact(model, ids, settings, RunOptions(keep_logits=True, warmup=True))
    assert measurement.warmup_s > 0
    assert all(m._compiled_call_impl is None for m in compilable_modules(model))
