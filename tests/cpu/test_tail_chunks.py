"""The --tail-chunks timing probe on CPU: execute over a zero-filled synthetic past (chunks, cache length, tokens),
its outputs equal the standard forward over a cache whose first N rows are zeros (resident and streamed heads
alike), a capacity too small is refused; run_plan restricts the prediction to the same chunks and refuses --verify;
the CLI writes the tail block and refuses bad values with exit 2."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor import runner  # noqa: E402
from executor.kv_store import ExecutionSettings  # noqa: E402
from executor.offload_cache import OffloadCache  # noqa: E402
from executor.runner import execute  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402

PROMPT, CHUNK, PAST, NEW = 26, 4, 16, 3     # the full prompt's chunks start at 0, 4, ..., 24: the tail is 3 of 7
ALL_RESIDENT = dict(resident=4, group=1)     # tiny_model: 2 layers x 2 KV heads
STREAMED = dict(resident=1, group=1)


def tail_settings(*, resident: int, group: int, capacity: int = PROMPT + NEW) -> ExecutionSettings:
    return ExecutionSettings(chunk_size=CHUNK, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=capacity, attention_backend="math")


def run_tail(model, ids, *, past: int = PAST, **knobs):
    return execute(model, ids[:, past:], tail_settings(**knobs), new_tokens=NEW, device="cpu", keep_logits=True,
                   synthetic_past_tokens=past)


def zero_past_reference(model, tail_ids: torch.Tensor, past: int, generated: list[int]) -> torch.Tensor:
    """The standard forward (the model's own attention) over a DynamicCache holding ``past`` zero K, V rows per
    layer, fed the same generated tokens: [len(generated), vocab] float32 logits of each step's last position."""
    from transformers import DynamicCache

    config = model.config
    cache = DynamicCache(config=config)
    with torch.inference_mode():
        for layer in range(config.num_hidden_layers):
            zeros = torch.zeros(1, config.num_key_value_heads, past, config.head_dim)
            cache.update(zeros, zeros.clone(), layer)
        steps = [model(tail_ids, past_key_values=cache, use_cache=True).logits[0, -1]]
        for token in generated[:-1]:
            steps.append(model(torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1])
    return torch.stack(steps).float()


@pytest.mark.parametrize("knobs", [ALL_RESIDENT, STREAMED], ids=["all-resident", "streamed"])
def test_synthetic_past_runs_the_tail_chunks(monkeypatch, knobs):
    caches = []
    monkeypatch.setattr(runner, "OffloadCache", lambda *a, **k: caches.append(OffloadCache(*a, **k)) or caches[-1])
    measurement = run_tail(tiny_model(), prompt(PROMPT), **knobs)
    assert len(measurement.chunk_s) == 3 and measurement.chunk_tokens == [4, 4, 2]
    assert measurement.synthetic_past_tokens == PAST and measurement.prompt_tokens == PROMPT - PAST
    assert len(measurement.generated_token_ids) == NEW
    assert caches[0].get_seq_length() == PAST + (PROMPT - PAST) + NEW - 1
    if knobs is STREAMED:  # the streamed heads' pasts, zero rows included, came from the host store
        assert measurement.counters["prefill"].h2d_bytes > 0


@pytest.mark.parametrize("knobs", [ALL_RESIDENT, STREAMED], ids=["all-resident", "streamed"])
def test_synthetic_past_equals_a_cache_of_zero_rows(knobs):
    """The tail run's logits are the standard forward's over a past of zero K, V rows (float32, 1e-5)."""
    model, ids = tiny_model(), prompt(PROMPT)
    measurement = run_tail(model, ids, **knobs)
    reference = zero_past_reference(model, ids[:, PAST:], PAST, measurement.generated_token_ids)
    assert (measurement.step_logits - reference).abs().max().item() < 1e-5
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()


def test_store_placement_does_not_change_a_tail_run():
    """Resident and streamed heads read the zero rows from different stores (GPU resident, host): same logits;
    the same run twice is identical; the tail ids as a fresh prompt (positions from 0, no past) differ."""
    model, ids = tiny_model(), prompt(PROMPT)
    resident, streamed = run_tail(model, ids, **ALL_RESIDENT), run_tail(model, ids, **STREAMED)
    assert (resident.step_logits - streamed.step_logits).abs().max().item() < 1e-5
    assert torch.equal(run_tail(model, ids, **STREAMED).step_logits, streamed.step_logits)
    fresh = execute(model, ids[:, PAST:], tail_settings(**STREAMED), new_tokens=NEW, device="cpu", keep_logits=True)
    assert (fresh.step_logits[0] - streamed.step_logits[0]).abs().max().item() > 1e-3


def test_capacity_must_hold_the_synthetic_past():
    model, ids = tiny_model(), prompt(PROMPT)
    with pytest.raises(ValueError, match="synthetic past 16"):
        execute(model, ids[:, PAST:], tail_settings(**STREAMED, capacity=PROMPT + NEW - 2), new_tokens=NEW,
                device="cpu", synthetic_past_tokens=PAST)
    with pytest.raises(ValueError, match=">= 0"):
        execute(model, ids, tail_settings(**STREAMED), new_tokens=NEW, device="cpu", synthetic_past_tokens=-1)
