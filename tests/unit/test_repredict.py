"""benchmarks/repredict.py --at-run-cpu-rate: a run's CPU share priced at the kernel rate that run measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hwprofiles import load_profile
from planner.builtin_models import BUILTIN_MODELS
from planner.share_rebalance import priced_job

ROOT = Path(__file__).resolve().parents[2]
H200 = load_profile("h200-sxm-measured")


def _repredict():
    spec = importlib.util.spec_from_file_location("repredict", ROOT / "benchmarks" / "repredict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(share: float, measured_rate):
    return {"dtype": "bfloat16", "new_tokens": 16,
            "settings": {"cpu_share": share, "resident_kv_heads": 85},
            "host_share": {"measured_cpu_bytes_per_s": measured_rate} if share else None}


def test_the_profile_is_scaled_to_the_run_kernel_rate():
    module, model = _repredict(), BUILTIN_MODELS["llama-3-8b"]
    job = priced_job(model, H200, dtype="bfloat16", context_tokens=131072, decode_tokens=16, cpu_share=0.3,
                     resident_kv_heads=85)
    _, at_plan = module.at_run_cpu_rate(H200, model, _report(0.3, job.job_bytes_per_s), 131072)
    assert at_plan == pytest.approx(1.0)                                  # jobs at the planned rate: no change
    half_kernel = job.bytes_per_job / (2 * job.bytes_per_job / job.kernel_bytes_per_s + job.call_s)
    scaled, factor = module.at_run_cpu_rate(H200, model, _report(0.3, half_kernel), 131072)
    assert factor == pytest.approx(0.5)
    for a, b in zip(H200.cpu_attention_table, scaled.cpu_attention_table):
        assert b.bytes_per_s == pytest.approx(0.5 * a.bytes_per_s)
    same, none = module.at_run_cpu_rate(H200, model, _report(0.0, None), 131072)
    assert same is H200 and none is None
