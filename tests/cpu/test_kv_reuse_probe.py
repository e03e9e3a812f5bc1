"""Saved contexts of timing probes and of a document engine (executor/kv/context_save.py ProbeContextSaver,
context_load.py, generation/document.py load_document), on CPU: a probe's save holds the whole prompt's bytes with
its zero-filled past marked in the manifest, and no normal load accepts it; the scatter read fills the stores
exactly and refuses a truncated file; a document loaded into a DocumentEngine answers exactly as one prefilled,
and a failed load leaves no document to answer from."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.generation.document import DocumentEngine  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.kv.context_load import ContextLoader, ContextMismatchError, preadv_exact  # noqa: E402
from executor.kv.context_manifest import ContextFormatError, read_manifest, segment_name  # noqa: E402
from executor.kv.context_save import ContextSaver, ProbeContextSaver  # noqa: E402
from executor.kv.fingerprint import model_fingerprint  # noqa: E402
from executor.settings import RunOptions  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402
from executor.generation.tail import synthetic_pattern  # noqa: E402
from tests.cpu.test_kv_reuse import cpu_rows, loader_for, settings  # noqa: E402

N, PAST, SEGMENT = 40, 24, 8


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A probe's run: tokens [PAST, N) computed over a synthetic [0, PAST), saved as an N-token context."""
    model, ids = tiny_model(), prompt(N)
    path = tmp_path_factory.mktemp("probe") / "ctx"
    saver = ProbeContextSaver(path, model_fingerprint(model), tuple(ids[0].tolist()), PAST, segment_tokens=SEGMENT,
                              progress=False)
    execute(model, ids[:, PAST:], settings(chunk=8, group=1, resident=1), new_tokens=2, device="cpu",
            options=RunOptions(synthetic_past_tokens=PAST, kv_saver=saver))
    return model, ids, path


def test_a_probe_context_is_marked_and_refused_by_a_normal_load(probe):
    model, ids, path = probe
    manifest = read_manifest(path)
    assert manifest.token_count == N and manifest.synthetic_past_tokens == PAST
    with pytest.raises(ContextMismatchError, match="synthetic KV"):
        loader_for(model, path)
    with pytest.raises(ContextMismatchError, match="synthetic KV"):      # nor through a run
        execute(model, ids, settings(chunk=8, group=1, resident=0), new_tokens=2, device="cpu",
                options=RunOptions(past_loader=loader_for(model, path)))


def test_a_probe_context_loads_its_bytes_when_asked(probe):
    model, ids, path = probe
    loader = loader_for(model, path, allow_synthetic=True)
    assert loader.saved_ids.tolist() == ids[0].tolist() and loader.synthetic_past_tokens == PAST
    target = cpu_rows(model, (1, 0))
    assert loader.load(target, N).nbytes == N * 2 * 2 * 2 * 16 * 4
    pattern = synthetic_pattern(16, torch.float32)                   # tiny_model: head dim 16
    for layer in range(2):
        for head in range(2):
            for which, row in enumerate(target.rows(layer, head)):
                assert torch.equal(row[:PAST], pattern[which][:PAST])  # the synthetic rows (K, V), as saved
                assert torch.count_nonzero(row[PAST:N]) > 0          # the computed tail


def test_a_tampered_synthetic_count_is_refused(probe, tmp_path):
    _, _, path = probe
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in path.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = json.loads((bad / "manifest.json").read_text())
    data["synthetic_past_tokens"] = N
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ContextFormatError, match="synthetic_past_tokens"):
        read_manifest(bad)


def test_the_probe_saver_refuses_ids_that_are_not_the_prompts_tail(tmp_path):
    model = tiny_model()
    saver = ProbeContextSaver(tmp_path / "c", model_fingerprint(model), tuple(range(10)), 4, progress=False)
    with pytest.raises(ValueError, match="not the prompt's tokens"):
        saver(cpu_rows(model, (0, 0)), [5, 6, 7])
    assert not (tmp_path / "c").exists()


def test_preadv_exact_scatters_in_order_and_refuses_a_short_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)
    (tmp_path / "f").write_bytes(data.tobytes())
    views = [np.empty(n, np.uint8) for n in (1, 999, 0, 2000)]
    assert preadv_exact(tmp_path / "f", views) == 3000
    assert np.array_equal(np.concatenate(views), data)
    with pytest.raises(ContextFormatError, match="truncated"):
        preadv_exact(tmp_path / "f", [np.empty(3001, np.uint8)])


def _document_context(model, doc, path):
    saver = ContextSaver(path, model_fingerprint(model), segment_tokens=SEGMENT, progress=False)
    execute(model, doc, settings(chunk=16, group=1, resident=1), new_tokens=2, device="cpu",
            options=RunOptions(kv_saver=saver))


@pytest.mark.parametrize("saved_tokens", [N, 29], ids=["whole-document", "prefix-then-prefill"])
def test_a_loaded_document_answers_as_a_prefilled_one(tmp_path, saved_tokens):
    model, doc = tiny_model(), prompt(N)
    _document_context(model, doc[:, :saved_tokens], tmp_path / "ctx")
    questions = [prompt(5, seed=s) for s in (3, 4)]
    knobs = settings(chunk=7, group=2, resident=0, capacity=N + 16)
    with DocumentEngine(model, knobs, device="cpu") as engine:
        engine.prefill_document(doc)
        expected = [engine.answer(q, new_tokens=4).token_ids for q in questions]
    with DocumentEngine(model, settings(chunk=5, group=1, resident=3, capacity=N + 16), device="cpu") as engine:
        engine.load_document(doc, loader_for(model, tmp_path / "ctx"))
        assert engine.document_loaded_tokens == saved_tokens and engine.document_tokens == N
        assert [engine.answer(q, new_tokens=4).token_ids for q in questions] == expected


def test_a_failed_document_load_leaves_no_document(tmp_path):
    model, doc = tiny_model(), prompt(N)
    _document_context(model, doc, tmp_path / "ctx")
    loader = loader_for(model, tmp_path / "ctx")
    segment = tmp_path / "ctx" / segment_name(3)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0x01
    segment.write_bytes(bytes(data))
    with DocumentEngine(model, settings(chunk=8, group=1, resident=1, capacity=N + 16), device="cpu") as engine:
        engine.prefill_document(doc)
        with pytest.raises(ContextFormatError, match="checksum mismatch"):
            engine.load_document(doc, loader)
        with pytest.raises(ValueError, match="no document"):
            engine.answer(prompt(5, seed=3), new_tokens=2)
