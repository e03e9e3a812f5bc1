"""Plan JSON round trip and the field names scripts rely on."""

import json

import pytest

from hwprofiles import load_profile
from planner.builtin_models import BUILTIN_MODELS
from planner.plan import PlanFileError, read_plan, write_plan
from planner.solver import make_plan
from planner.units import GB


def test_round_trip_and_contract_fields(tmp_path):
    plan = make_plan(BUILTIN_MODELS["llama-3-8b"], load_profile("h100-sxm-measured"), context_tokens=131072,
                     decode_tokens=4, gpu_mem_bytes=24 * GB)
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    assert read_plan(path) == plan
    data = json.loads(path.read_text())
    for key in ("schema_version", "context_tokens", "strategy", "chunk_size", "heads_per_group", "resident_kv_heads",
                "attention_backend", "alternatives", "hardware_hash"):
        assert key in data
    assert set(data["memory"]["gpu_breakdown"]) == {"weights", "kv", "activations", "overhead"}
    assert {"gpu_peak_bytes", "host_kv_bytes"} <= set(data["memory"])
    assert {"prefill_s", "decode_s_per_token", "chunk_s"} <= set(data["predicted"])
    for alt in data["alternatives"]:
        assert {"strategy", "fits", "gpu_peak_bytes", "prefill_s", "decode_s_per_token", "reason"} <= set(alt)
    assert data["hardware_hash"] == data["hardware"]["content_hash"]


def test_bad_plan_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"schema_version": 1, "strategy": "x"}')
    with pytest.raises(PlanFileError):
        read_plan(path)
