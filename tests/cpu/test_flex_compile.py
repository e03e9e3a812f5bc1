"""The compiled FlexAttention entries (attention/flex.py) under the engine's real call pattern: a tiny Gemma-2
(windows, soft-cap) run through the head-offloaded executor with the flex path on CPU, its entries compiled with
Dynamo's "eager" backend (the same tracing and guards as on CUDA, no code generation). Every kind of call must stay
within its recompile budget: past it, Dynamo would fall back to the eager flex_attention, which materialises the
c x S scores (on an H200 that cost a Gemma-2-9B run 1 GiB per call at 128K keys and a 4x slower decode). The
outputs equal the math backend's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import executor.attention.flex as flex  # noqa: E402
import executor.attention.kernels as kernels  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from test_gemma2_sliding import prompt, tiny  # noqa: E402

DEFAULT_DYNAMO_LIMIT = 8
"""torch's own recompile_limit: each kind must fit in it with room to spare"""


GRAPH_INPUTS: list = []


def _recording_backend(graph_module, example_inputs):
    """Dynamo's "eager" backend that keeps each graph's example inputs."""
    GRAPH_INPUTS.append(list(example_inputs))
    return graph_module.forward


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """Route soft-capped and windowed calls through attend_flex with Dynamo-compiled entries (backend "eager")."""
    torch._dynamo.reset()
    flex.compiled_call.cache_clear()
    monkeypatch.setattr(flex, "_entry", lambda kind, device: flex.compiled_call(kind, _recording_backend))
    math = kernels._attend_math

    def route(q, k, v, *, scale, softcap=None, window=None):
        if softcap is None and window is None:
            return math(q, k, v, scale=scale)
        return flex.attend_flex(q, k, v, scale=scale, softcap=softcap, window=window)

    monkeypatch.setattr(kernels, "_attend_math", route)
    yield math
    flex.compiled_call.cache_clear()
    torch._dynamo.reset()


def _variants(kind: str) -> int:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(flex._ENTRIES[kind].__code__))


def test_engine_pattern_stays_compiled(flex_on_cpu):
    model = tiny("gemma2", layers=4, kv_heads=2)
    ids = prompt(60)
    reference = None
    for chunk, group, resident in [(8, 1, 0), (8, 1, 2), (16, 2, 4), (7, 2, 1)]:
        torch._dynamo.reset()  # each run's own variants, as in a headplan process
        settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                     capacity_tokens=60 + 10, attention_backend="math")
        tokens = execute(model, ids, settings, new_tokens=10, device="cpu", options=RunOptions()).generated_token_ids
        reference = reference or tokens
        assert tokens == reference
        counts = {kind: _variants(kind) for kind in flex.CALL_KINDS}
        assert all(count >= 1 for count in counts.values()), counts  # every kind was used
        assert max(counts.values()) <= DEFAULT_DYNAMO_LIMIT, (chunk, group, resident, counts)
    # no Python float (the soft-cap) became a graph input: on CUDA a float64 CPU scalar fails the kernel's lowering
    scalars = [x for inputs in GRAPH_INPUTS for x in inputs
               if isinstance(x, torch.Tensor) and x.dim() == 0 and x.dtype == torch.float64]
    assert GRAPH_INPUTS and not scalars


def test_flex_compiled_matches_math(flex_on_cpu, monkeypatch):
    from test_gemma2_sliding import run

    model = tiny("gemma2", layers=2, kv_heads=2)
    ids = prompt(30)
    flexed = run(model, ids, chunk=8, group=1, resident=1)
    monkeypatch.setattr(kernels, "_attend_math", flex_on_cpu)
    plain = run(model, ids, chunk=8, group=1, resident=1)
    assert flexed.generated_token_ids == plain.generated_token_ids
    assert (flexed.step_logits - plain.step_logits).abs().max().item() < 1e-4


def test_softcap_mod_is_one_function_per_cap():
    assert flex._softcap_mod(50.0) is flex._softcap_mod(50.0)
    assert flex._softcap_mod(None) is None
