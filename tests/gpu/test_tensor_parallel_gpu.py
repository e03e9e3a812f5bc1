"""Several GPUs by heads on real devices: 2 NCCL ranks (cuda:0, cuda:1), each holding half of every layer's heads
and streaming its own offloaded KV heads. bf16 runs agree with the unsharded standard forward on one GPU within
the bf16 reference's own error, each rank's host store is its local heads' size and pinned (then released), and
the CLI runs --parallel heads end to end. Skipped without two GPUs.
Run on the GPU machine: python -m pytest tests/gpu/test_tensor_parallel_gpu.py -m gpu -q"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.launch import RandomModel, TensorJob, launch_tensor_parallel  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings  # noqa: E402
from tests.gpu.two_gpus import NEW_TOKENS, SPEC, TWO_GPUS, ids_of  # noqa: E402

pytestmark = TWO_GPUS


@pytest.mark.parametrize("residents", [(0, 0), (5, 1)])
def test_two_ranks_bf16_within_reference_error(residents):
    ids = ids_of(300)
    settings = ExecutionSettings(chunk_size=128, heads_per_group=1, resident_kv_heads=0,
                                 capacity_tokens=300 + NEW_TOKENS, attention_backend="flash")
    result = launch_tensor_parallel(TensorJob(ranks=2, device_type="cuda", plan=settings,
                                              model=RandomModel(SPEC, "bfloat16", seed=0), input_ids=ids,
                                              new_tokens=NEW_TOKENS, keep_logits=True, resident_per_rank=residents))
    tokens = result.generated_ids
    exact = standard_step_logits(RandomModel(SPEC, "float32", seed=0)(torch.device("cuda", 0)), ids, tokens,
                                 "cuda").float().cpu()
    standard16 = standard_step_logits(RandomModel(SPEC, "bfloat16", seed=0)(torch.device("cuda", 0)), ids, tokens,
                                      "cuda").float().cpu()
    ours = result.measurement.step_logits.float().cpu()
    assert (ours - exact).abs().max().item() <= 2.0 * (standard16 - exact).abs().max().item() + 1e-2
    for rank, stage in enumerate(result.measurement.stages):
        assert stage.device == f"cuda:{rank}"
        offloaded = SPEC.num_hidden_layers * SPEC.num_key_value_heads // 2 - residents[rank]
        assert stage.host_store_bytes == 2 * offloaded * (300 + NEW_TOKENS) * SPEC.head_dim * 2
        assert stage.gpu_peak_reserved_bytes is not None


def test_cli_by_heads_on_two_gpus(tmp_path):
    from headplan.cli import main as cli_main

    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cuda", "--gpus", "2", "--parallel", "heads", "--model", "llama-3.2-1b",
                     "--context", "16K", "--gpu-mem", "24GB", "--new-tokens", "4", "--out", str(out),
                     "--no-progress", "--hw", "h200-sxm-quick"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [g["device"] for g in report["gpus"]] == ["cuda:0", "cuda:1"]
    assert report["measured"]["prefill_s"] > 0 and report["measured"]["decode_s_per_token"] > 0
