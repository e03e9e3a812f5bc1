"""planner/kv_reuse.py (no torch): the prefill a loaded prefix replaces, the load time from the disk figure, and
the verdict when loading is slower than recomputing; the manifest's own size checks (executor/kv/context_manifest.py,
no torch either)."""

from __future__ import annotations

import pytest

from executor.kv.context_manifest import ContextManifest, KVFileLayout, ModelFingerprint, SegmentEntry
from planner.kv_reuse import predict_context_load, predict_context_save, replaced_prefill_s


def test_replaced_prefill_counts_the_share_of_each_chunk_below_n():
    chunk_s = [1.0, 2.0, 4.0]                      # chunks [0, 10), [10, 20), [20, 25)
    assert replaced_prefill_s(chunk_s, 10, 25, 0) == 0.0
    assert replaced_prefill_s(chunk_s, 10, 25, 15) == pytest.approx(1.0 + 1.0)
    assert replaced_prefill_s(chunk_s, 10, 25, 24) == pytest.approx(1.0 + 2.0 + 4.0 * 4 / 5)


def test_prediction_against_the_prefill():
    fast = predict_context_load(reused_tokens=20, load_bytes=8 * 10**9, disk_read_bytes_per_s=8e9,
                                chunk_s=[10.0, 20.0], chunk_size=10, context_tokens=20, prefill_s=30.0)
    assert fast.load_s == pytest.approx(1.0) and fast.saved_s == pytest.approx(29.0)
    assert fast.speedup == pytest.approx(30.0) and fast.remaining_prefill_s == pytest.approx(0.0)
    slow = predict_context_load(reused_tokens=20, load_bytes=8 * 10**9, disk_read_bytes_per_s=1e8,
                                chunk_s=[10.0, 20.0], chunk_size=10, context_tokens=20, prefill_s=30.0)
    assert slow.saved_s < 0 and "do not load" in slow.note
    unknown = predict_context_load(reused_tokens=20, load_bytes=1, disk_read_bytes_per_s=None, chunk_s=[1.0],
                                   chunk_size=10, context_tokens=10, prefill_s=1.0)
    assert unknown.load_s is None and "headplan profile --disk" in unknown.note
    none = predict_context_load(reused_tokens=0, load_bytes=0, disk_read_bytes_per_s=8e9, chunk_s=[1.0],
                                chunk_size=10, context_tokens=10, prefill_s=1.0)
    assert none.load_s == 0.0 and "nothing loads" in none.note
    assert predict_context_save(6 * 10**9, 6e9) == pytest.approx(1.0) and predict_context_save(1, None) is None


def _manifest(**changes) -> ContextManifest:
    layout = KVFileLayout(num_layers=2, kv_heads=2, head_dim=4)       # 2 * 2 * 2 * 4 * 2 B = 64 B per token
    segments = [SegmentEntry(index=0, first_token=0, tokens=8, file="seg-00000.kv", nbytes=512, piece_crc32=[1]),
                SegmentEntry(index=1, first_token=8, tokens=2, file="seg-00001.kv", nbytes=128, piece_crc32=[2])]
    fields = dict(created="2026-12-01", dtype="bfloat16", layout=layout, token_count=10, segment_tokens=8,
                  checksum_piece_bytes=1024, tokens_nbytes=40, tokens_crc32=0, kv_bytes=640, segments=segments,
                  model=ModelFingerprint(architecture="llama:", config_sha256="a", weights_sha256="b"))
    fields.update(changes)
    return ContextManifest(**fields)


def test_manifest_sizes_are_recomputed_not_trusted():
    good = _manifest()
    assert good.sizes_problem() is None
    assert good.bytes_for(3) == 512 and good.bytes_for(9) == 640
    assert "kv_bytes" in _manifest(kv_bytes=641).sizes_problem()
    assert "segments listed" in _manifest(token_count=17, kv_bytes=17 * 64, tokens_nbytes=68).sizes_problem()
    assert "tokens file" in _manifest(tokens_nbytes=44).sizes_problem()
    assert "unknown dtype" in _manifest(dtype="int8").sizes_problem()
