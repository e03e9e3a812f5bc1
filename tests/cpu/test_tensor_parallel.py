"""Several ranks by heads on the CPU (gloo): the sharded head-offloaded run is exact against transformers'
unsharded forward, each rank sizes its stores from its local heads (resident counts may differ per rank), a rank
count that does not divide the KV heads is refused before anything starts, and a fault on one rank ends every
rank with a partial report.

Each test spawns real processes (torch.multiprocessing, gloo), so the model is tiny: 2 layers, D 64, H_q 8,
H_kv 4, d 16, float32.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.faults import RunInterrupted, RunOutOfMemory  # noqa: E402
from executor.launch import RandomModel, TensorJob, launch_tensor_parallel  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings  # noqa: E402
from planner.model_spec import ModelSpec  # noqa: E402

NEW_TOKENS = 3
PROMPT = 12
TINY = ModelSpec(name="tiny-tp", model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=16, vocab_size=97)


def prompt(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(seed))


def job(ranks: int, ids, *, chunk: int, group: int, resident: int = 0, **extra) -> TensorJob:
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math")
    return TensorJob(ranks=ranks, device_type="cpu", plan=settings, model=RandomModel(TINY, "float32", seed=3),
                     input_ids=ids, new_tokens=NEW_TOKENS, keep_logits=True, **extra)


def reference(ids, tokens):
    model = RandomModel(TINY, "float32", seed=3)(torch.device("cpu"))
    return standard_step_logits(model, ids, tokens, "cpu")


@pytest.mark.parametrize("ranks,chunk,group,residents", [
    (2, 4, 1, None),          # 2 ranks, 2 local KV heads each, nothing resident, 3 chunks
    (2, 4, 2, (3, 0)),        # uneven: rank 0 keeps 3 of its 4 slots resident, rank 1 none
    (4, 6, 1, (0, 2, 1, 0)),  # 4 ranks, 1 local KV head each
])
def test_by_heads_matches_unsharded_forward(ranks, chunk, group, residents):
    ids = prompt(PROMPT)  # chunks that divide it: each new input shape costs DTensor a slow first dispatch
    result = launch_tensor_parallel(job(ranks, ids, chunk=chunk, group=group, resident_per_rank=residents))
    expected = reference(ids, result.generated_ids)
    assert result.generated_ids == expected.argmax(-1).tolist()
    assert all(tokens == result.generated_ids for tokens in result.rank_generated_ids)
    assert (result.measurement.step_logits - expected).abs().max().item() < 1e-4
    local_kv = TINY.num_key_value_heads // ranks
    capacity = PROMPT + NEW_TOKENS
    for rank, stage in enumerate(result.measurement.stages):
        resident = residents[rank] if residents else 0
        offloaded = TINY.num_hidden_layers * local_kv - resident
        assert stage.index == rank and stage.resident_kv_heads == resident
        assert stage.host_store_bytes == 2 * offloaded * capacity * TINY.head_dim * 4
    assert len(result.report.gpus) == ranks
    assert result.report.measured.host_kv_bytes == sum(s.host_store_bytes for s in result.measurement.stages)


def test_rank_count_not_dividing_kv_heads_refused_up_front():
    ids = prompt(8)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"divide .* 8 query heads and 4 KV heads; GPU counts that do: 2, 4"):
        launch_tensor_parallel(job(3, ids, chunk=4, group=1))
    assert time.perf_counter() - start < 1 and multiprocessing.active_children() == []  # refused before spawning
    with pytest.raises(ValueError, match="GPU counts that do: 2, 4"):
        from executor.launch import check_job

        check_job(job(3, ids, chunk=4, group=1), RandomModel(TINY, "float32")(torch.device("cpu")).config)


def test_fault_on_one_rank_ends_all_with_partial_report():
    ids = prompt(PROMPT)
    start = time.perf_counter()
    with pytest.raises(RunOutOfMemory, match="rank 1") as info:
        launch_tensor_parallel(job(2, ids, chunk=4, group=1, fault_at=(1, 1)))
    assert time.perf_counter() - start < 60
    report = info.value.report
    assert report is not None and report.status == "gpu_out_of_memory" and report.parallel == "heads"
    assert "injected" in report.fault
    assert len(info.value.partial.chunk_s) >= 1  # the chunks before the fault were measured
    assert multiprocessing.active_children() == []  # every rank ended (and with it its stores)


def test_shard_first_random_weights_equal_the_whole_model_sharded():
    """RandomModel.sharded (meta, shard, materialise, each matrix drawn whole and its block kept) gives every rank
    exactly the block that sharding the whole model gives it, on 2 gloo ranks."""
    import torch.multiprocessing as mp

    mp.start_processes(_compare_shards, args=(2, _port()), nprocs=2, start_method="fork")


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _compare_shards(rank: int, ranks: int, port: int) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from executor.parallel.tensor import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    mesh = init_device_mesh("cpu", (ranks,))
    factory = RandomModel(TINY, "float32", seed=5)
    lean = dict(factory.sharded(torch.device("cpu"), mesh).named_parameters())
    whole = dict(shard_model(factory(torch.device("cpu")), mesh).named_parameters())
    assert lean.keys() == whole.keys()
    for name, param in whole.items():
        local = param.to_local() if hasattr(param, "to_local") else param
        other = lean[name].to_local() if hasattr(lean[name], "to_local") else lean[name]
        assert torch.equal(local, other), name
    dist.destroy_process_group()


def test_interrupt_on_one_rank_ends_all_with_partial_report():
    """Ctrl-C reaching one rank only (a terminal's reaches all; headplan/run_heads.py and the launcher were also
    checked by hand with SIGINT to the process group and to the launcher alone: exit 130, partial report)."""
    with pytest.raises(RunInterrupted, match="rank 0") as info:
        launch_tensor_parallel(job(2, prompt(PROMPT), chunk=4, group=1, fault_at=(0, 0, "interrupt")))
    assert info.value.report.status == "interrupted" and info.value.exit_code == 130
    assert multiprocessing.active_children() == []


def test_cli_run_by_heads_on_cpu_reports_each_rank(tmp_path):
    """headplan run --device cpu --gpus 2 --parallel heads: two gloo ranks; rank 0's report has both ranks and the
    tokens of the unsharded model."""
    import json

    from headplan.cli import main as cli_main

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
                                  "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
                                  "head_dim": 16, "vocab_size": 97}))
    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cpu", "--gpus", "2", "--parallel", "heads", "--model", str(config),
                     "--context", "12", "--chunk-size", "4", "--heads-per-group", "1", "--resident-heads", "1",
                     "--new-tokens", "3", "--dtype", "float32", "--out", str(out), "--no-progress",
                     "--hw", "h200", "--gpu-mem", "80GB", "--host-mem", "1GB", "--seed", "3"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [g["index"] for g in report["gpus"]] == [0, 1] and report["parallel"] == "heads"
    assert "by heads" in (out / "report.md").read_text()
    assert all(g["first_layer"] == 0 and g["num_layers"] == 2 and g["resident_kv_heads"] == 1 for g in report["gpus"])
    assert report["predicted"]["prefill_s"] > 0 and report["gpus"][0]["predicted_gpu_peak_bytes"] > 0
    from executor.inputs.prompt import random_prompt_ids
    from planner.model_spec import load_model_spec

    ids = random_prompt_ids(12, 97, 3)
    model = RandomModel(load_model_spec(str(config)), "float32", seed=3)(torch.device("cpu"))
    expected = standard_step_logits(model, ids, report["generated_token_ids"], "cpu")
    assert report["generated_token_ids"] == expected.argmax(-1).tolist()


def test_cli_refuses_heads_not_dividing_kv_heads(tmp_path, capsys):
    import json

    from headplan.cli import main as cli_main

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
                                  "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 4,
                                  "head_dim": 16, "vocab_size": 97}))
    code = cli_main(["run", "--device", "cpu", "--gpus", "3", "--parallel", "heads", "--model", str(config),
                     "--context", "12", "--dtype", "float32", "--out", str(tmp_path / "o"), "--no-progress",
                     "--hw", "h200", "--gpu-mem", "80GB", "--host-mem", "1GB"])
    err = capsys.readouterr().err
    assert code == 2 and "GPU counts that do: 2, 4" in err and len(err.strip().splitlines()) == 1
