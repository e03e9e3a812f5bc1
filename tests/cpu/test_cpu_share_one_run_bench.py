"""benchmarks/cpu_share_one_run.py --smoke: the share and F = 0 alternating over one prefilled document on a tiny CPU
model; every figure written, the share's answers reading host bytes and the F = 0 answers none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_alternates_the_share_over_one_prefill(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/cpu_share_one_run.py"), "--smoke", "--rounds", "2",
                           "--new-tokens", "4", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = json.loads((tmp_path / "cpu_share_one_run.json").read_text())["contexts"]
    assert record["share"] == 0.4 and len(record["answers"]) == 4
    assert [a["share"] for a in record["answers"]] == [0.4, 0.0, 0.4, 0.0]
    for answer in record["answers"]:
        assert answer["decode_steps"] == 4 and answer["decode_s_per_token"] > 0
        assert (answer["cpu_bytes_per_token"] > 0) == (answer["share"] > 0)
    assert record["speedup"] > 0 and len(record["pairwise_speedups"]) == 2
    assert record["predicted_zero_share_decode_s"] > 0
    assert "| 2K |" in (tmp_path / "cpu_share_one_run.md").read_text()
