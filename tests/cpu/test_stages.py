"""Several pipeline stages on CPU: the staged engine is exact, the device map covers the model, random weights
do not depend on placement, the per-stage report is filled, and the NUMA helpers read sysfs correctly.

On CPU every stage runs on the same device, so this checks the routing, the per-stage layouts and stores, the
prefetch chains that stop at each stage's last layer, and the per-stage measurement; the GPU tests
(tests/gpu/test_multi_gpu.py) check the same on two real devices.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.runtime.numa import node_of_pci, numa_node_count, pci_address, prefer_node  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.parallel.stages import DeviceStage, check_stages, device_map_for, untie_lm_head  # noqa: E402

from test_exactness import NEW_TOKENS, prompt, tiny_model  # noqa: E402

CPU = torch.device("cpu")


def cpu_stages(split: list[int], residents: list[int]) -> list[DeviceStage]:
    stages, first = [], 0
    for index, (count, resident) in enumerate(zip(split, residents)):
        stages.append(DeviceStage(index, first, count, CPU, resident))
        first += count
    return stages


def run_staged(model, ids, stages, *, chunk: int, group: int):
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group,
                                 resident_kv_heads=sum(s.resident_kv_heads for s in stages),
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math")
    return execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu", stages=stages,
                   options=RunOptions(keep_logits=True))


@pytest.mark.parametrize("split,residents,chunk,group", [
    ([2, 2], [0, 0], 5, 1),        # nothing resident, two even stages
    ([3, 1], [2, 4], 4, 2),        # uneven stages; the second all resident
    ([1, 2, 1], [1, 0, 3], 6, 3),  # three stages, resident counts that do not divide the stage's slots
    ([2, 2], [8, 0], 13, 4),       # first stage all resident, one chunk
])
def test_staged_run_matches_standard_forward(split, residents, chunk, group):
    model = tiny_model(query_heads=8, kv_heads=4, layers=4)
    ids = prompt(13)
    stages = cpu_stages(split, residents)
    measurement = run_staged(model, ids, stages, chunk=chunk, group=group)
    reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()
    assert (measurement.step_logits - reference).abs().max().item() < 1e-4
    assert [s.first_layer for s in measurement.stages] == [s.first_layer for s in stages]
    for stage, measured in zip(stages, measurement.stages):
        offloaded = stage.num_layers * 4 - stage.resident_kv_heads
        assert measured.host_store_bytes == 2 * offloaded * (13 + NEW_TOKENS) * 16 * 4
        assert (measured.counters["prefill"].d2h_bytes > 0) == (offloaded > 0)
        assert measured.prefill_busy_s is not None and measured.prefill_busy_s > 0
        assert measured.decode_busy_s_per_token is not None
    assert measurement.host_store_bytes == sum(m.host_store_bytes for m in measurement.stages)
    assert measurement.counters["prefill"].d2h_bytes == sum(m.counters["prefill"].d2h_bytes
                                                            for m in measurement.stages)


def test_staged_equals_single_stage_bitwise():
    """Same weights, same settings per layer: two stages give exactly the single stage's logits."""
    model = tiny_model(query_heads=8, kv_heads=4, layers=4)
    ids = prompt(13)
    split = run_staged(model, ids, cpu_stages([2, 2], [2, 2]), chunk=5, group=2)
    whole = run_staged(model, ids, cpu_stages([4], [4]), chunk=5, group=2)
    assert split.generated_token_ids == whole.generated_token_ids
    assert torch.equal(split.step_logits, whole.step_logits)


def test_check_stages_refuses_gaps_and_short_cover():
    with pytest.raises(ValueError, match="contiguously"):
        check_stages(cpu_stages([2, 2], [0, 0])[:1] + [DeviceStage(1, 3, 1, CPU, 0)], 4)
    with pytest.raises(ValueError, match="cover 3 layers"):
        check_stages(cpu_stages([2, 1], [0, 0]), 4)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_device_map_covers_every_parameter_and_buffer(model_type):
    model = tiny_model(model_type, layers=3)
    stages = [DeviceStage(0, 0, 2, torch.device("cuda", 0), 0), DeviceStage(1, 2, 1, torch.device("cuda", 1), 0)]
    device_map = device_map_for(model, stages)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    for name in names:
        owner = next((m for m in device_map if name == m or name.startswith(m + ".")), None)
        assert owner is not None, f"{name} has no device"
    assert device_map["model.layers.1"] == "cuda:0" and device_map["model.layers.2"] == "cuda:1"
    assert device_map["lm_head"] == "cuda:1" and device_map["model.embed_tokens"] == "cuda:0"


def test_untie_lm_head_copies_the_embedding():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=50,
                                  tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert untie_lm_head(model, "cpu")
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert not untie_lm_head(model, "cpu")


def test_random_weights_keep_a_tied_lm_head_tied():
    """A tied config's random model holds V x D once (as its checkpoint and the planner's weights_bytes do); with
    several stages the last one gets lm_head as a copy of the embedding."""
    from executor.inputs.model_loader import build_random
    from planner.memory_model import weights_bytes
    from planner.model_spec import ModelSpec

    spec = ModelSpec(name="tied", model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=60,
                     max_position_embeddings=128, tie_word_embeddings=True)
    model = build_random(spec, dtype=torch.float32, device="cpu", seed=3).model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() * 4 for p in model.parameters()) == weights_bytes(spec, 4)
    staged = build_random(spec, dtype=torch.float32, device="cpu", seed=3, stages=cpu_stages([1, 1], [0, 0])).model
    assert torch.equal(staged.lm_head.weight, staged.model.embed_tokens.weight)


def test_random_weights_do_not_depend_on_placement():
    from executor.inputs.model_loader import build_random
    from planner.model_spec import ModelSpec

    spec = ModelSpec(name="tiny", model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=60,
                     max_position_embeddings=128)
    whole = build_random(spec, dtype=torch.float32, device="cpu", seed=3).model
    staged = build_random(spec, dtype=torch.float32, device="cpu", seed=3,
                          stages=cpu_stages([1, 1], [0, 0])).model
    other = build_random(spec, dtype=torch.float32, device="cpu", seed=4).model
    for (name, a), (_, b), (_, c) in zip(whole.named_parameters(), staged.named_parameters(),
                                         other.named_parameters()):
        assert torch.equal(a, b), name
        if a.dim() == 2:
            assert not torch.equal(a, c), name
    assert torch.isfinite(whole.model.rotary_emb.inv_freq).all()
    ids = torch.randint(0, 60, (1, 9), generator=torch.Generator().manual_seed(0))
    logits = whole(ids).logits
    assert torch.isfinite(logits).all()


def test_numa_helpers_read_sysfs(tmp_path):
    (tmp_path / "nodes" / "node0").mkdir(parents=True)
    (tmp_path / "nodes" / "node1").mkdir()
    (tmp_path / "nodes" / "possible").write_text("0-1")
    assert numa_node_count(tmp_path / "nodes") == 2
    assert numa_node_count(tmp_path / "missing") == 1
    address = pci_address(0, 0x1B, 0)
    assert address == "0000:1b:00.0"
    (tmp_path / "pci" / address).mkdir(parents=True)
    (tmp_path / "pci" / address / "numa_node").write_text("1\n")
    assert node_of_pci(address, tmp_path / "pci") == 1
    (tmp_path / "pci" / address / "numa_node").write_text("-1\n")
    assert node_of_pci(address, tmp_path / "pci") is None
    assert node_of_pci("0000:ff:00.0", tmp_path / "pci") is None


def test_prefer_node_is_harmless_wherever_it_runs():
    """mbind of node 0 on a fresh allocation: applied or refused (containers may forbid mbind), never raising, and
    the memory stays usable; less than one whole page is never bound; an impossible node is refused."""
    buffer = torch.empty(64 * 4096, dtype=torch.uint8)
    assert prefer_node(buffer, 0) in (True, False)
    buffer.fill_(7)
    assert int(buffer.sum()) == 7 * 64 * 4096
    assert not prefer_node(torch.empty(16, dtype=torch.uint8), 0)  # less than one whole page
    assert not prefer_node(torch.empty(64 * 4096, dtype=torch.uint8), 64)
