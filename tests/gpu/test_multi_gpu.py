"""Several GPUs: the layers split over cuda:0 and cuda:1 through accelerate's device map, each stage
with its own stores and streams. bf16 runs agree with the standard forward on the same dispatched model and with
the same weights on one GPU; no host synchronisation inside the loop; each stage's store and peak is on its own
GPU; the CLI runs --gpus 2 end to end. Skipped without two GPUs.
Run on the GPU machine: python -m pytest tests/gpu -m gpu -q"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.inputs.model_loader import build_random  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.parallel.stages import DeviceStage  # noqa: E402
from tests.gpu.two_gpus import NEW_TOKENS, SPEC, TWO_GPUS, ids_of  # noqa: E402

pytestmark = TWO_GPUS


def two_stages(resident=(1, 3)):
    return [DeviceStage(0, 0, 2, torch.device("cuda", 0), resident[0]),
            DeviceStage(1, 2, 2, torch.device("cuda", 1), resident[1])]


def settings(chunk, group, resident, capacity, backend="flash"):
    return ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=capacity, attention_backend=backend)


@pytest.mark.parametrize("chunk,group,resident,backend", [(64, 1, (0, 0), "flash"), (100, 2, (1, 3), "flash"),
                                                          (64, 4, (0, 8), "cudnn-split")])
def test_two_gpus_agree_with_standard_forward_and_with_one_gpu(chunk, group, resident, backend):
    ids = ids_of(300)
    stages = two_stages(resident)
    split = build_random(SPEC, dtype=torch.bfloat16, device="cuda:0", seed=5, stages=stages).model
    assert {str(p.device) for p in split.model.layers[0].parameters()} == {"cuda:0"}
    assert {str(p.device) for p in split.model.layers[3].parameters()} == {"cuda:1"}
    ours = execute(split, ids, settings(chunk, group, sum(resident), 300 + NEW_TOKENS, backend),
                   new_tokens=NEW_TOKENS, device="cuda:0", stages=stages, options=RunOptions(keep_logits=True))
    for stage in ours.stages:
        offloaded = 2 * 4 - stage.resident_kv_heads
        assert (stage.counters["prefill"].h2d_bytes > 0) == (offloaded > 0)
        assert stage.gpu_peak_allocated_bytes > 0 and stage.prefill_busy_s > 0
    standard = standard_step_logits(split, ids, ours.generated_token_ids, "cuda:0")
    assert ours.generated_token_ids == standard.argmax(-1).tolist()
    del split
    whole = build_random(SPEC, dtype=torch.bfloat16, device="cuda:0", seed=5).model
    single = execute(whole, ids, settings(chunk, group, sum(resident), 300 + NEW_TOKENS, backend),
                     new_tokens=NEW_TOKENS, device="cuda:0",
                     stages=[DeviceStage(0, 0, 4, torch.device("cuda", 0), sum(resident))],
                     options=RunOptions(keep_logits=True))
    reference = standard_step_logits(whole, ids, single.generated_token_ids, "cuda:0")
    scale = reference.abs().max().item()
    assert (ours.step_logits - single.step_logits).abs().max().item() <= 2e-2 * scale
    assert (standard - reference).abs().max().item() <= 2e-2 * scale


def test_no_sync_in_loop_over_two_gpus():
    stages = two_stages((1, 2))
    model = build_random(SPEC, dtype=torch.bfloat16, device="cuda:0", seed=1, stages=stages).model
    execute(model, ids_of(290), settings(64, 2, 3, 300), new_tokens=8, device="cuda:0",
            stages=stages, options=RunOptions(sync_debug=True))


def test_cli_run_two_gpus(tmp_path):
    from headplan.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(SPEC.to_hf_config_dict()))
    out = tmp_path / "out"
    code = main(["run", "--gpus", "2", "--device", "cuda", "--model", str(config), "--context", "2000",
                 "--chunk-size", "512", "--heads-per-group", "2", "--resident-heads", "4", "--new-tokens", "4",
                 "--gpu-mem", "8GB", "--out", str(out), "--verify", "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [g["device"] for g in report["gpus"]] == ["cuda:0", "cuda:1"]
    assert report["verify"]["greedy_tokens_agree"] is True
    assert all(g["measured_gpu_peak_bytes"] > 0 for g in report["gpus"])
