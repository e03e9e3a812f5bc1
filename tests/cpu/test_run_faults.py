"""Fault paths of a run and the end-to-end CLI on CPU: host RAM refused before allocating, GPU OOM and Ctrl-C
give a partial report with the stores released, a plan for other hardware warns (refused with --strict),
a save_pretrained checkpoint loads through --model-path, and report.json carries the required fields."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.kv import host_store as kv_store  # noqa: E402
from executor.faults import RunInterrupted, RunOutOfMemory, hardware_mismatch  # noqa: E402
from executor.kv.host_store import HostMemoryError  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from headplan.cli import main as cli_main  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402

TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97}


def settings(chunk=4, group=1, resident=0, capacity=20):
    return ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=capacity, attention_backend="math")


def test_host_ram_too_small_refused_before_allocating(monkeypatch):
    model, ids = tiny_model(), prompt(8)
    allocated = []
    real_empty = torch.empty
    monkeypatch.setattr(kv_store.torch, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    with pytest.raises(HostMemoryError, match="GiB"):
        execute(model, ids, settings(), new_tokens=2, device="cpu", options=RunOptions(host_available_bytes=1000))
    assert allocated == []


class _Raise:
    def __init__(self, exc_type, layer):
        self.exc_type, self.layer = exc_type, layer

    def __call__(self, module, args, kwargs=None):
        raise self.exc_type("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("exc_type,fault", [(torch.OutOfMemoryError, RunOutOfMemory),
                                            (KeyboardInterrupt, RunInterrupted)])
def test_fault_gives_partial_report_and_releases_store(monkeypatch, exc_type, fault):
    model = tiny_model()
    closed = []
    real_close = kv_store.HostKVStore.close
    monkeypatch.setattr(kv_store.HostKVStore, "close", lambda self: closed.append(1) or real_close(self))
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] == 2:  # second chunk, in layer 1
            raise (exc_type("CUDA out of memory") if exc_type is not KeyboardInterrupt else KeyboardInterrupt())

    handle = model.model.layers[1].mlp.register_forward_pre_hook(hook)
    try:
        with pytest.raises(fault) as info:
            execute(model, prompt(12), settings(), new_tokens=2, device="cpu")
    finally:
        handle.remove()
    assert closed, "host store not released"
    assert "chunk 1" in str(info.value) and "layer 1" in str(info.value)
    assert info.value.partial is not None and len(info.value.partial.chunk_s) == 1
    assert model.config._attn_implementation != "headplan_offload"


def test_hardware_mismatch_text():
    assert hardware_mismatch("NVIDIA H100 80GB HBM3", 80 * 1024**3, "NVIDIA H100 80GB HBM3", 80 * 1024**3) is None
    assert "RTX 4090" in hardware_mismatch("RTX 4090", 24 * 1024**3, "NVIDIA H100 80GB HBM3", 80 * 1024**3)


def test_cli_run_writes_report(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cpu", "--model", str(config), "--context", "11", "--chunk-size", "4",
                     "--heads-per-group", "1", "--resident-heads", "1", "--new-tokens", "3", "--dtype", "float32",
                     "--out", str(out), "--verify", "--trace", "--no-progress"] + _plan_flags())
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for block in ("predicted", "measured"):
        for key in ("prefill_s", "decode_s_per_token", "gpu_peak_bytes", "chunk_s"):
            assert key in report[block]
    assert set(report["error"]) >= {"prefill_s", "decode_s_per_token", "gpu_peak_bytes", "chunk_s"}
    assert len(report["generated_token_ids"]) == 3
    assert len(report["measured"]["chunk_s"]) == 3
    assert report["verify"]["greedy_tokens_agree"] is True
    assert report["host"]["measured_decode_host_s_per_token"] > 0    # 2 decode tokens issued, timed on the host
    assert report["host"]["predicted_decode_host_s_per_token"] is not None
    assert (out / "report.md").exists() and (out / "trace.json").exists()
    assert cli_main(["report", str(out)]) == 0


def test_cli_run_over_two_stages_reports_each(tmp_path):
    """--gpus 2 on the CPU runs the staged path (two stages, one device) and reports per GPU."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(TINY_CONFIG, num_hidden_layers=3)))
    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cpu", "--gpus", "2", "--parallel", "layers", "--model", str(config),
                     "--context", "11",
                     "--chunk-size", "4", "--heads-per-group", "1", "--resident-heads", "2", "--new-tokens", "3",
                     "--dtype", "float32", "--out", str(out), "--verify", "--no-progress"] + _plan_flags())
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["greedy_tokens_agree"] is True
    assert [g["first_layer"] for g in report["gpus"]] == [0, 2]
    assert [g["num_layers"] for g in report["gpus"]] == [2, 1]
    assert sum(g["resident_kv_heads"] for g in report["gpus"]) == 2
    for gpu in report["gpus"]:
        assert gpu["predicted_prefill_busy_s"] > 0 and gpu["measured_prefill_busy_s"] > 0
        assert set(gpu["error"]) == {"gpu_peak_bytes", "prefill_busy_s", "decode_busy_s_per_token"}
    assert "Per GPU" in (out / "report.md").read_text()


def _plan_flags() -> list[str]:
    """Extra flags the shared plan options need on CPU (a hardware profile, a memory budget), if any."""
    from headplan import cmd_plan

    if not hasattr(cmd_plan, "plan_from_args"):
        return []
    return ["--gpu-mem", "24GB"]


def test_checkpoint_from_save_pretrained(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "ckpt")
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(prompt(9)[0].tolist()))
    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cpu", "--model-path", str(tmp_path / "ckpt"), "--context", "9",
                     "--chunk-size", "4", "--heads-per-group", "1", "--resident-heads", "0", "--new-tokens", "2",
                     "--dtype", "float32", "--prompt-ids", str(ids_file), "--out", str(out), "--verify",
                     "--no-progress"] + _plan_flags())
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["max_abs_logit_diff"] < 1e-4


def test_qwen2_sliding_window_refused():
    from transformers import AutoConfig

    from executor.inputs.model_loader import ModelLoadError, check_supported

    config = AutoConfig.for_model("qwen2", sliding_window=4096, use_sliding_window=True)
    with pytest.raises(ModelLoadError, match="sliding"):
        check_supported(config)


def test_cli_run_refuses_gpus_that_disagree_with_the_plan(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    plan = tmp_path / "plan.json"
    assert cli_main(["plan", "--model", str(config), "--context", "11", "--chunk-size", "4", "--dtype", "float32",
                     "--out", str(plan)] + _plan_flags()) == 0
    capsys.readouterr()
    code = cli_main(["run", "--plan", str(plan), "--gpus", "2", "--device", "cpu", "--out", str(tmp_path / "o"),
                     "--no-progress"])
    assert code == 2 and "planned for 1 GPU" in capsys.readouterr().err
