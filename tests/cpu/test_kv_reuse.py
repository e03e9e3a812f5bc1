"""Saved contexts on CPU (executor/kv/context_*.py): a save/load round trip is bit-identical across store layouts;
after a load the greedy tokens equal the one-shot greedy tokens for a common prefix shorter than, equal to and
longer than the saved prompt, and none, with knobs other than the saving run's; only the segments of the prefix
are read; every refusal (other weights, config, RoPE, dtype, corrupt, truncated, tampered, interrupted save) fires
before the prefill; the fingerprint sees one changed element."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.faults import RunInterrupted  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.kv import context_save  # noqa: E402
from executor.kv.context_load import ContextLoader, ContextMismatchError, common_prefix  # noqa: E402
from executor.kv.context_manifest import ContextFormatError, read_manifest, segment_name  # noqa: E402
from executor.kv.context_save import ContextSaver, DiskSpaceError, check_free_disk, save_context  # noqa: E402
from executor.kv.fingerprint import model_fingerprint  # noqa: E402
from executor.kv.rows import KVRows, LayerRows  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402

SAVED, NEW, SEGMENT = 40, 4, 8
SAVE_KNOBS = dict(chunk=16, group=1, resident=1)


def settings(*, chunk: int, group: int, resident: int, capacity: int = 80) -> ExecutionSettings:
    return ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=capacity, attention_backend="math")


def loader_for(model, path, **kw) -> ContextLoader:
    c = model.config
    return ContextLoader(path, fingerprint=model_fingerprint(model), dtype=next(model.parameters()).dtype,
                         num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
                         progress=False, **kw)


def greedy_reference(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """The standard transformers forward, greedy, the whole sequence each step (tiny models: cheap)."""
    out = []
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = model(ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def save_run(model, ids, path, **knobs):
    saver = ContextSaver(path, model_fingerprint(model), segment_tokens=SEGMENT, progress=False)
    return execute(model, ids, settings(**(knobs or SAVE_KNOBS)), new_tokens=NEW, device="cpu",
                   options=RunOptions(kv_saver=saver))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, ids = tiny_model(), prompt(SAVED)
    path = tmp_path_factory.mktemp("ctx") / "saved"
    measurement = save_run(model, ids, path)
    return model, ids, path, measurement


def cpu_rows(model, resident: tuple[int, ...], capacity: int = 64) -> KVRows:
    c = model.config
    shape = lambda h: (h, capacity, c.head_dim)  # noqa: E731
    layers = tuple(LayerRows(torch.full(shape(r), float("nan")), torch.full(shape(r), float("nan")),
                             torch.full(shape(c.num_key_value_heads - r), float("nan")),
                             torch.full(shape(c.num_key_value_heads - r), float("nan"))) for r in resident)
    return KVRows(layers, c.num_key_value_heads, c.head_dim, capacity, torch.float32)


def test_round_trip_is_bit_identical_across_store_layouts(tmp_path):
    model = tiny_model()
    source = cpu_rows(model, (1, 0))
    for part in source.layers:
        for t in (part.resident_keys, part.resident_values, part.host_keys, part.host_values):
            t.normal_()
    ids = prompt(SAVED)[0].tolist()
    result = save_context(source, ids, tmp_path / "c", model_fingerprint(model), segment_tokens=SEGMENT,
                          progress=False)
    assert result.nbytes == SAVED * 2 * 2 * 2 * 16 * 4 and read_manifest(tmp_path / "c").token_count == SAVED
    target = cpu_rows(model, (2, 2))                   # every head resident: another layout
    loader = loader_for(model, tmp_path / "c")
    assert loader.saved_ids.tolist() == ids
    loaded = loader.load(target, SAVED)
    assert loaded.nbytes == result.nbytes
    for layer in range(2):
        for head in range(2):
            for a, b in zip(source.rows(layer, head), target.rows(layer, head)):
                assert torch.equal(a[:SAVED], b[:SAVED])
                assert torch.isnan(b[SAVED:]).all()    # nothing written past the prefix


def test_partial_load_reads_only_the_prefix_segments(saved, tmp_path):
    model, _, path, _ = saved
    target = cpu_rows(model, (0, 1))
    result = loader_for(model, path).load(target, 11)   # segments [0, 8) and [8, 16)
    assert result.nbytes == 16 * 2 * 2 * 2 * 16 * 4
    assert torch.isnan(target.rows(0, 0)[0][11:]).all() and not torch.isnan(target.rows(0, 0)[0][:11]).any()


@pytest.mark.parametrize("case", ["shorter", "equal", "longer", "none"])
@pytest.mark.parametrize("knobs", [dict(chunk=5, group=1, resident=0), dict(chunk=64, group=2, resident=4),
                                   dict(chunk=7, group=1, resident=3)], ids=["all-host", "all-resident", "mixed"])
def test_greedy_tokens_after_load_equal_one_shot(saved, case, knobs):
    model, ids, path, _ = saved
    tail = prompt(12, seed=7)
    new_prompt = {"shorter": torch.cat([ids[:, :25], tail], 1), "equal": ids, "longer": torch.cat([ids, tail], 1),
                  "none": torch.cat([(ids[:, :1] + 1) % 97, ids[:, 1:]], 1)}[case]
    expected_reuse = {"shorter": 25, "equal": SAVED - 1, "longer": SAVED, "none": 0}[case]
    loader = loader_for(model, path)
    assert loader.reusable_tokens(new_prompt[0].tolist()) == expected_reuse
    m = execute(model, new_prompt, settings(**knobs), new_tokens=NEW, device="cpu",
                options=RunOptions(past_loader=loader))
    assert m.loaded_past_tokens == expected_reuse and m.prompt_tokens == new_prompt.shape[1] - expected_reuse
    assert m.generated_token_ids == greedy_reference(model, new_prompt, NEW)
    assert (m.kv_reuse["loaded_bytes"] > 0) == (expected_reuse > 0)


def test_the_saving_run_is_itself_exact(saved):
    model, ids, path, measurement = saved
    assert measurement.generated_token_ids == greedy_reference(model, ids, NEW)
    assert measurement.kv_reuse["saved_bytes"] == read_manifest(path).kv_bytes


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([5], [1]) == 0


# --- refusals ------------------------------------------------------------------------------------------------


def test_other_weights_config_rope_and_dtype_are_refused(saved):
    model, _, path, _ = saved
    with pytest.raises(ContextMismatchError, match="other weights"):
        loader_for(tiny_model(seed=1), path)
    with pytest.raises(ContextMismatchError, match="another model configuration"):
        loader_for(_with_rope(tiny_model(), 500000.0), path)   # same weights, other RoPE base
    with pytest.raises(ContextMismatchError, match="saved in float32"):
        loader_for(tiny_model(dtype=torch.bfloat16), path)


def _with_rope(model, theta: float):
    config = model.config
    if getattr(config, "rope_parameters", None):
        config.rope_parameters = {**config.rope_parameters, "rope_theta": theta}
    else:
        config.rope_theta = theta
    return model


def _copy_context(path, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_corrupt_segment_is_refused_before_the_prefill(saved, tmp_path):
    model, ids, path, _ = saved
    bad = _copy_context(path, tmp_path)
    segment = bad / segment_name(2)
    data = bytearray(segment.read_bytes())
    data[100] ^= 0x01
    segment.write_bytes(bytes(data))
    chunks = []
    with pytest.raises(ContextFormatError, match="checksum mismatch"):
        execute(model, ids, settings(chunk=8, group=1, resident=1), new_tokens=NEW, device="cpu",
                options=RunOptions(past_loader=loader_for(model, bad), on_chunk=chunks.append))
    assert chunks == []                                   # no prefill chunk ran
    target = cpu_rows(model, (0, 0))
    loader_for(model, bad).load(target, 16)                # a prefix before the bad segment still loads


def test_truncated_or_tampered_files_are_refused(saved, tmp_path):
    _, _, path, _ = saved
    bad = _copy_context(path, tmp_path)
    segment = bad / segment_name(1)
    segment.write_bytes(segment.read_bytes()[:-4])
    with pytest.raises(ContextFormatError, match="truncated"):
        read_manifest(bad)
    tampered = _copy_context(path, tmp_path / "t")
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["segments"][0]["nbytes"] *= 2
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ContextFormatError, match="segment 0"):
        read_manifest(tampered)
    manifest["format_version"] = 99
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ContextFormatError, match="format_version 99"):
        read_manifest(tampered)
    (tampered / "manifest.json").write_bytes(b"\x80\x04not json")   # a pickle-looking file is just bad JSON
    with pytest.raises(ContextFormatError, match="not valid JSON"):
        read_manifest(tampered)


def test_corrupt_token_ids_are_refused(saved, tmp_path):
    model, _, path, _ = saved
    bad = _copy_context(path, tmp_path)
    data = bytearray((bad / "tokens.bin").read_bytes())
    data[0] ^= 0x10
    (bad / "tokens.bin").write_bytes(bytes(data))
    with pytest.raises(ContextFormatError, match="tokens.bin: checksum mismatch"):
        loader_for(model, bad)


def test_interrupted_save_leaves_nothing_that_loads(tmp_path, monkeypatch):
    model, ids = tiny_model(), prompt(SAVED)
    real, calls = context_save._write_file, []

    def interrupted(path, blocks):
        calls.append(path.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, blocks)

    monkeypatch.setattr(context_save, "_write_file", interrupted)
    with pytest.raises(RunInterrupted, match="phase save-kv"):  # Ctrl-C: the CLI's exit 130, a partial report
        save_run(model, ids, tmp_path / "c")
    assert not (tmp_path / "c" / "manifest.json").exists() and list((tmp_path / "c").iterdir()) == []
    with pytest.raises(ContextFormatError, match="no manifest.json"):
        loader_for(model, tmp_path / "c")
    monkeypatch.setattr(context_save, "_write_file", real)
    save_run(model, ids, tmp_path / "c")                  # the folder of an interrupted save can be saved into
    assert read_manifest(tmp_path / "c").token_count == SAVED


def test_a_saved_context_is_never_overwritten(saved):
    model, ids, path, _ = saved
    before = (path / "manifest.json").read_bytes()
    with pytest.raises(ContextFormatError, match="already holds a saved context"):
        save_run(model, ids, path)
    assert (path / "manifest.json").read_bytes() == before


def test_free_disk_and_host_ram_checks(saved, tmp_path):
    model, _, path, _ = saved
    with pytest.raises(DiskSpaceError, match=r"needs 0.00 GiB \(1000 B\) but .* has 0.00 GiB free"):
        check_free_disk(tmp_path / "new" / "deeper", 1000, free_bytes=999)
    check_free_disk(tmp_path / "new", 1000, free_bytes=1000)
    loader = loader_for(model, path)
    with pytest.raises(ContextMismatchError, match="host RAM"):
        loader.check_host_ram(store_bytes=10_000, available_bytes=10_000)
    loader.check_host_ram(store_bytes=10_000, available_bytes=10_000 + loader.staging_bytes)


def test_fingerprint_sees_one_element_and_is_stable():
    a, b = model_fingerprint(tiny_model()), model_fingerprint(tiny_model())
    assert a == b
    from executor.kv.fingerprint import SAMPLE_ELEMENTS as k

    model = tiny_model()
    weight = model.model.layers[1].mlp.down_proj.weight
    n = weight.numel()
    sampled = {i * (n - 1) // (k - 1) for i in range(k)}
    element = next(i for i in range(n) if i not in sampled)   # one element the strided sample does not see
    with torch.no_grad():
        weight.view(-1)[element] += 1e-3
    changed = model_fingerprint(model)
    assert changed.weights_sha256 != a.weights_sha256 and changed.config_sha256 == a.config_sha256


def test_a_context_saved_by_two_stages_loads_into_one_and_back(tmp_path):
    """The format is per (layer, KV head): a save over two pipeline stages (CPU stand-ins for two GPUs) loads into
    a single-stage run with other knobs, and a single-stage save into two stages."""
    from executor.parallel.stages import DeviceStage

    def cpu_stages(split, residents):
        firsts = [sum(split[:i]) for i in range(len(split))]
        return [DeviceStage(i, f, n, torch.device("cpu"), r)
                for i, (f, n, r) in enumerate(zip(firsts, split, residents))]

    model = tiny_model(layers=4)
    ids, longer = prompt(SAVED), torch.cat([prompt(SAVED), prompt(6, seed=9)], 1)
    two = cpu_stages([2, 2], [1, 2])
    saver = ContextSaver(tmp_path / "staged", model_fingerprint(model), segment_tokens=SEGMENT, progress=False)
    execute(model, ids, settings(chunk=16, group=1, resident=3), new_tokens=NEW, device="cpu", stages=two,
            options=RunOptions(kv_saver=saver))
    one = execute(model, longer, settings(chunk=9, group=2, resident=0), new_tokens=NEW, device="cpu",
                  options=RunOptions(past_loader=loader_for(model, tmp_path / "staged")))
    assert one.loaded_past_tokens == SAVED and one.generated_token_ids == greedy_reference(model, longer, NEW)
    save_run(model, ids, tmp_path / "single")
    back = execute(model, longer, settings(chunk=5, group=1, resident=3), new_tokens=NEW, device="cpu",
                   stages=cpu_stages([3, 1], [2, 1]),
                   options=RunOptions(past_loader=loader_for(model, tmp_path / "single")))
    assert back.generated_token_ids == one.generated_token_ids
