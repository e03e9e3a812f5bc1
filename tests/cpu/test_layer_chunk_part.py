"""cudnn-split's chunk part once per layer (SplitOptions.chunk_part "layer", the default): the chunk against itself
for all query heads in one call, each head set's past attended alone and merged with its rows of it.

On CPU the same arrangement runs on the math kernels (attention/kernels.py split_chunk_part, attend_past), so the
engine's cudnn-split runs here take exactly the path they take on a GPU but for the kernels: against a float64
reference at the split level, and against transformers end to end (float32: identical greedy tokens, logits within
1e-4; bfloat16: within the bf16 forward's own error) for many chunk, group, resident and block settings.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import executor.engine.offload as offload  # noqa: E402
from executor.attention.split import attend_past_split, chunk_part  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions, SplitOptions  # noqa: E402
from tests.cpu.test_attention_split import make_inputs, reference, tolerance  # noqa: E402
from tests.cpu.test_exactness import NEW_TOKENS, prompt, tiny_model  # noqa: E402
from tests.references import half_precision_errors  # noqa: E402


@pytest.mark.parametrize("past,chunk,block", [(3, 8, 4), (16, 8, 4), (19, 8, 4), (37, 5, 4), (60, 4, 4),
                                              (64, 16, 16), (1, 1, 4)])
@pytest.mark.parametrize("cut", ["binary", "whole"])
@pytest.mark.parametrize("kv_heads,ratio", [(1, 4), (2, 4), (2, 7)])
def test_past_merged_with_the_layer_chunk_part_matches_float64(past, chunk, block, cut, kv_heads, ratio):
    """The layer's chunk part over all its heads, then each head of the layer as its own set: the set's past
    parts merged with its rows of the chunk part equal one lower-right causal attention over [past, chunk]."""
    q, k, v = make_inputs(kv_heads * ratio, kv_heads, past, chunk, capacity_extra=5)
    scale = 1 / math.sqrt(q.shape[-1])
    ref = reference(q, k, v, scale)
    chunk_out, chunk_lse = chunk_part(q, k[:, :, past:], v[:, :, past:], scale=scale, backend="math")
    out = torch.empty_like(q)
    for head in range(kv_heads):
        rows = slice(head * ratio, (head + 1) * ratio)
        attend_past_split(q[:, rows], k[:, head:head + 1, :past], v[:, head:head + 1, :past], chunk_out[:, rows],
                          chunk_lse[:, rows], scale=scale, out=out[:, rows], past_block_tokens=block,
                          past_backend="math", past_cut=cut)
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v, scale, ref)


def test_attend_past_split_refuses_an_empty_past():
    q, k, v = make_inputs(4, 1, 0, 8)
    chunk_out, chunk_lse = chunk_part(q, k, v, scale=0.25, backend="math")
    with pytest.raises(ValueError, match="past"):
        attend_past_split(q, k[:, :, :0], v[:, :, :0], chunk_out, chunk_lse, scale=0.25, out=torch.empty_like(q),
                          past_backend="math")


def _count_calls(monkeypatch) -> dict:
    """Count the engine's chunk-part and past calls (the functions still run)."""
    counts = {"chunk": 0, "past": 0}
    chunk_fn, past_fn = offload.split_chunk_part, offload.attend_past

    def chunk_counted(*args, **kwargs):
        counts["chunk"] += 1
        return chunk_fn(*args, **kwargs)

    def past_counted(*args, **kwargs):
        counts["past"] += 1
        return past_fn(*args, **kwargs)

    monkeypatch.setattr(offload, "split_chunk_part", chunk_counted)
    monkeypatch.setattr(offload, "attend_past", past_counted)
    return counts


def _settings(ids, chunk, group, resident, block, cut="binary", part="layer") -> ExecutionSettings:
    return ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="cudnn-split",
                             split=SplitOptions(past_block_tokens=block, past_cut=cut, chunk_part=part))


@pytest.mark.parametrize("cut", ["binary", "whole"])
@pytest.mark.parametrize("chunk,group,resident,block", [(8, 1, 0, 4), (8, 2, 1, 8), (5, 1, 2, 4), (16, 2, 3, 4),
                                                        (6, 3, 0, 4), (13, 4, 8, 4), (4, 2, 5, 2)])
def test_engine_exact_with_the_layer_chunk_part(monkeypatch, cut, chunk, group, resident, block):
    counts = _count_calls(monkeypatch)
    model = tiny_model(query_heads=8, kv_heads=4, layers=2)
    ids = prompt(37)
    measurement = execute(model, ids, _settings(ids, chunk, group, resident, block, cut), new_tokens=NEW_TOKENS,
                          device="cpu", options=RunOptions(keep_logits=True))
    reference_logits = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference_logits.argmax(-1).tolist()
    assert (measurement.step_logits - reference_logits).abs().max().item() < 1e-4
    lengths = [min(chunk, ids.shape[1] - start) for start in range(0, ids.shape[1], chunk)]
    assert counts["chunk"] == 2 * sum(n > 1 for n in lengths)  # one per layer per chunk (a 1-token chunk: none)
    assert counts["past"] > 0


def test_group_arrangement_keeps_the_chunk_in_every_call(monkeypatch):
    counts = _count_calls(monkeypatch)
    model = tiny_model(query_heads=8, kv_heads=4, layers=2)
    ids = prompt(21)
    measurement = execute(model, ids, _settings(ids, 8, 2, 1, 4, part="group"), new_tokens=NEW_TOKENS,
                          device="cpu", options=RunOptions(keep_logits=True))
    reference_logits = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference_logits.argmax(-1).tolist()
    assert counts == {"chunk": 0, "past": 0}
    with pytest.raises(ValueError, match="chunk_part"):
        SplitOptions(chunk_part="head")


@pytest.mark.parametrize("chunk,group,resident", [(5, 1, 0), (13, 4, 0), (4, 2, 3)])
def test_bfloat16_layer_chunk_part_within_reference_error(chunk, group, resident):
    model16 = tiny_model(query_heads=8, kv_heads=4, dtype=torch.bfloat16)
    ids = prompt(13)
    ours = execute(model16, ids, _settings(ids, chunk, group, resident, 4), new_tokens=NEW_TOKENS, device="cpu",
                   options=RunOptions(keep_logits=True))
    our_error, standard_error = half_precision_errors(ours, model16, ids)
    assert our_error <= 2.0 * standard_error + 1e-3, (our_error, standard_error)


def test_plan_chunk_backend_reaches_the_executor_and_stays_exact():
    """Plan.chunk_backend (the planner's faster square causal kernel) becomes SplitOptions.chunk_backend; on the
    CPU the chunk part runs on the math kernel whichever is named, so the run stays equal to transformers'."""
    from executor.api import settings_from_plan
    from hwprofiles import load_profile
    from planner.builtin_models import BUILTIN_MODELS
    from planner.solver import make_plan
    from planner.units import GB

    plan = make_plan(BUILTIN_MODELS["llama-3-8b"], load_profile("h200-sxm-measured"), context_tokens=131072,
                     decode_tokens=4, gpu_mem_bytes=24 * GB, attention_backend="cudnn-split")
    for backend in ("cudnn", "flash", None):
        settings = settings_from_plan(plan.model_copy(update={"chunk_backend": backend}), new_tokens=4)
        assert settings.split.chunk_backend == backend
    model = tiny_model(query_heads=8, kv_heads=4, layers=2)
    ids = prompt(37)
    settings = ExecutionSettings(chunk_size=8, heads_per_group=2, resident_kv_heads=1,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="cudnn-split",
                                 split=SplitOptions(past_block_tokens=4, chunk_backend="cudnn"))
    measurement = execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu",
                          options=RunOptions(keep_logits=True))
    reference_logits = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference_logits.argmax(-1).tolist()
    assert (measurement.step_logits - reference_logits).abs().max().item() < 1e-4
