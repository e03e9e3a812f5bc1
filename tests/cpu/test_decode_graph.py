"""The static decode step (executor/generation/decode_graph.py) on CPU: the fixed-shape step a GPU captures as a CUDA graph
must decode exactly what the eager loop decodes; its rule matches the planner's; its pieces do what they say."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.report.verify import standard_step_logits  # noqa: E402
from executor.attention.decode import DevicePosition, attend_decode, write_token  # noqa: E402
from executor.attention.kernels import attend_chunk  # noqa: E402
from executor.generation.decode_graph import static_decode_applies  # noqa: E402
from executor.kv.layout import KVLayout  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.engine.cache import OffloadCache  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402


def _run(model, ids, *, graphs: bool, resident: int, new_tokens: int = 6, chunk: int = 5):
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=2, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + new_tokens, attention_backend="math",
                                 decode_graphs=graphs)
    return execute(model, ids, settings, new_tokens=new_tokens, device="cpu", options=RunOptions(keep_logits=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk,prompt_tokens", [(5, 13), (13, 13), (4, 1)])
def test_static_step_decodes_exactly_what_the_eager_loop_decodes(dtype, chunk, prompt_tokens):
    model, ids = tiny_model(query_heads=8, kv_heads=4, dtype=dtype), prompt(prompt_tokens)
    static = _run(model, ids, graphs=True, resident=8, chunk=chunk)
    eager = _run(model, ids, graphs=False, resident=8, chunk=chunk)
    assert (static.decode_step, eager.decode_step) == ("static", "eager")
    assert static.generated_token_ids == eager.generated_token_ids
    assert torch.equal(static.step_logits, eager.step_logits)                 # bit for bit
    assert static.counters["decode"].attention_flops == eager.counters["decode"].attention_flops
    assert static.decode_tokens_timed == eager.decode_tokens_timed == 5
    assert len(static.decode_host_s) == 5


def test_static_step_matches_the_standard_forward():
    model, ids = tiny_model(query_heads=8, kv_heads=4), prompt(13)
    ours = _run(model, ids, graphs=True, resident=8, new_tokens=8)
    reference = standard_step_logits(model, ids, ours.generated_token_ids, "cpu")
    assert ours.decode_step == "static"
    assert ours.generated_token_ids == reference.argmax(-1).tolist()
    assert (ours.step_logits - reference).abs().max().item() < 1e-4


def test_streamed_heads_keep_the_eager_decode():
    model, ids = tiny_model(query_heads=8, kv_heads=4), prompt(13)
    assert _run(model, ids, graphs=True, resident=7).decode_step == "eager"


def test_one_new_token_has_no_decode_step():
    model, ids = tiny_model(query_heads=8, kv_heads=4), prompt(9)
    measurement = _run(model, ids, graphs=True, resident=8, new_tokens=1)
    assert measurement.decode_step == "eager" and measurement.decode_tokens_timed == 0


def _layout(resident: int, layers: int = 2) -> KVLayout:
    settings = ExecutionSettings(chunk_size=4, heads_per_group=2, resident_kv_heads=resident, capacity_tokens=32)
    return KVLayout.build(num_layers=layers, kv_heads=4, query_heads=8, head_dim=16, settings=settings)


def test_rule_follows_the_planner():
    on, off = ExecutionSettings(1, 1, 8, 8), ExecutionSettings(1, 1, 8, 8, decode_graphs=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert static_decode_applies([_layout(8)], on, torch.bfloat16, cuda)
    assert static_decode_applies([_layout(8)], on, torch.float16, cuda)
    assert not static_decode_applies([_layout(8)], on, torch.float32, cuda)       # no flash kernel for fp32
    assert static_decode_applies([_layout(8)], on, torch.float32, cpu)            # the CPU step has no such limit
    assert not static_decode_applies([_layout(7)], on, torch.bfloat16, cuda)      # a streamed head
    assert not static_decode_applies([_layout(8)], off, torch.bfloat16, cuda)     # turned off
    assert not static_decode_applies([_layout(4, 1), _layout(4, 1)], on, torch.bfloat16, cuda)   # two stages


def test_device_position_write_and_attend():
    position = DevicePosition.create(5, 12, torch.device("cpu"))
    assert position.position_ids.tolist() == [[5]] and position.key_tokens.tolist() == [6]
    assert position.cu_query.tolist() == [0, 1] and position.cu_keys.tolist() == [0, 12]
    generator = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, 12, 16, generator=generator), torch.randn(2, 12, 16, generator=generator)
    k_new, v_new = torch.randn(2, 1, 16, generator=generator), torch.randn(2, 1, 16, generator=generator)
    write_token(keys, values, k_new, v_new, position)
    assert torch.equal(keys[:, 5:6], k_new) and torch.equal(values[:, 5:6], v_new)
    q, out = torch.randn(1, 6, 1, 16, generator=generator), torch.empty(1, 6, 1, 16)
    attend_decode(q, keys, values, position, scale=0.25, backend="math", out=out)
    expected = attend_chunk(q, keys[None, :, :6], values[None, :, :6], scale=0.25, backend="math")
    assert torch.equal(out, expected)
    position.advance()
    assert position.position_ids.tolist() == [[6]] and position.key_tokens.tolist() == [7]
    position.set(2)
    assert position.position_ids.tolist() == [[2]] and position.key_tokens.tolist() == [3]
    with pytest.raises(ValueError, match="outside"):
        DevicePosition.create(12, 12, torch.device("cpu"))
    with pytest.raises(ValueError, match="one query token"):
        attend_decode(torch.randn(1, 6, 2, 16), keys, values, position, scale=0.25, backend="math", out=out)


def test_cache_advance_counts_and_refuses_overflow():
    cache = OffloadCache(num_layers=2, capacity_tokens=10)
    cache.advance(7)
    assert cache.get_seq_length() == 7 and cache.past_tokens(1) == 6
    saved = cache.token_counts()
    cache.advance(1)
    cache.restore_counts(saved)
    assert cache.get_seq_length() == 7
    with pytest.raises(ValueError, match="capacity"):
        cache.advance(4)
