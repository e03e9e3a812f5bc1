"""benchmarks/kv_reuse_long.py --smoke: the 32 GiB benchmark's whole path (disk probes of two folders, a timing
probe's save, the page-cache drop, a DocumentEngine load of the marked context, questions) on a tiny CPU model,
its JSON and Markdown written and the context deleted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_every_figure_and_leaves_no_context(tmp_path):
    contexts = tmp_path / "contexts"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/kv_reuse_long.py"), "--smoke", "--no-progress",
                           "--out", str(tmp_path / "out"), "--disk", str(contexts), "--tmp-disk",
                           str(tmp_path / "tmpdisk")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out/kv_reuse_long.json").read_text())
    assert set(results["disk"]) == {"contexts", "tmp"} and "Type" in results["disk"]["tmp"]["df_T"]
    (cell,) = results["cells"]
    assert cell["tail"]["skipped_tokens"] > 0                      # the KV came from a timing probe
    assert cell["saved_bytes"] == cell["loaded_bytes"] == 3 * 1024 * 2 * 2 * 2 * 16 * 4
    assert cell["loaded_tokens"] == 3 * 1024 and len(cell["questions"]) == 2
    assert cell["questions_per_hour"]["without_reuse_prefill_from"] == "predicted (plan)"
    assert cell["reference"]["measured_full_prefill_s"] is None and "no measured full prefill" in \
        cell["reference"]["note"]
    assert "Questions per hour" in (tmp_path / "out/kv_reuse_long.md").read_text()
    assert not contexts.exists() and not (tmp_path / "tmpdisk").exists()
