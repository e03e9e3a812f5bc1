"""The executor on CUDA: bf16 exactness with the streams, pinned store and events really exercised; the flash
kernel's GQA and lower-right alignment; no host synchronisation or pinned allocation inside the loop; a smoke
run of ``headplan run --device cuda``. Run on the GPU machine: python -m pytest tests/gpu -m gpu -q"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.attention.kernels import attend_chunk  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from tests.references import half_precision_errors  # noqa: E402

pytestmark = pytest.mark.gpu
NEW_TOKENS = 6


def model_on(device, dtype, *, query_heads=16, kv_heads=4, layers=3, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=64 * query_heads // 4, intermediate_size=512,
                                  num_hidden_layers=layers, num_attention_heads=query_heads,
                                  num_key_value_heads=kv_heads, head_dim=64, vocab_size=1000,
                                  max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def tiny_config(tmp_path):
    """A 2-layer Llama config.json for the CLI runs (written into ``tmp_path``); returns its path."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
                                  "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
                                  "head_dim": 32, "vocab_size": 1000}))
    return config


def run_cli_on_cuda(tmp_path, *extra):
    """headplan run in this process on tiny_config: 1K tokens in 256-token chunks, 1 head per group, 1 resident,
    4 new tokens, plus ``extra`` flags. Returns (exit code, report folder)."""
    from headplan.cli import main as cli_main

    out = tmp_path / "out"
    code = cli_main(["run", "--device", "cuda", "--model", str(tiny_config(tmp_path)), "--context", "1K",
                     "--chunk-size", "256", "--heads-per-group", "1", "--resident-heads", "1", "--new-tokens", "4",
                     "--out", str(out), "--no-progress", *extra])
    return code, out


def ids_of(length):
    return torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("query_heads,kv_heads", [(4, 4), (8, 4), (16, 4), (14, 2)])
@pytest.mark.parametrize("chunk,past", [(64, 0), (64, 300), (1, 300), (37, 91)])
def test_flash_gqa_lower_right(query_heads, kv_heads, chunk, past):
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape_q, shape_k = (1, query_heads, chunk, 64), (1, kv_heads, past + chunk, 64)
    q = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16, generator=generator)
    k = torch.randn(shape_k, device="cuda", dtype=torch.bfloat16, generator=generator)
    v = torch.randn(shape_k, device="cuda", dtype=torch.bfloat16, generator=generator)
    flash = attend_chunk(q, k, v, scale=0.125, backend="flash").float()
    exact = attend_chunk(q.double(), k.double(), v.double(), scale=0.125, backend="math").float()
    assert (flash - exact).abs().max().item() < 2e-2


@pytest.mark.parametrize("chunk,group,resident", [(64, 1, 0), (100, 2, 0), (64, 4, 0), (77, 1, 5), (64, 3, 7),
                                                 (64, 2, 12)])   # 12 of 12: the CUDA-graph decode
def test_bfloat16_exact_on_cuda(chunk, group, resident):
    ids = ids_of(300)
    model16 = model_on("cuda", torch.bfloat16)
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=300 + NEW_TOKENS, attention_backend="flash")
    ours = execute(model16, ids, settings, new_tokens=NEW_TOKENS, device="cuda", options=RunOptions(keep_logits=True))
    if resident < 12:
        assert ours.counters["prefill"].h2d_bytes > 0
    else:
        assert ours.decode_step == "graph"
    our_error, standard_error = half_precision_errors(ours, model16, ids, "cuda", exact_dtype=torch.float32)
    assert our_error <= 2.0 * standard_error + 2e-2, (our_error, standard_error)


def test_no_sync_and_no_pinned_allocation_in_loop():
    model = model_on("cuda", torch.bfloat16)
    settings = ExecutionSettings(chunk_size=64, heads_per_group=2, resident_kv_heads=3, capacity_tokens=300,
                                 attention_backend="flash")
    stats = getattr(torch.cuda, "host_memory_stats", None)
    before = stats()["num_host_alloc"] if stats else None
    execute(model, ids_of(290), settings, new_tokens=8, device="cuda", options=RunOptions(sync_debug=True))
    if stats:
        assert stats()["num_host_alloc"] == before


def test_graph_decode_matches_eager_decode_without_syncs():
    """Every KV head resident: each decode token replays one CUDA graph (captured once, no host sync in the loop)
    and decodes what the eager loop decodes; the host issues a token in well under the eager loop's time."""
    import statistics

    model, ids = model_on("cuda", torch.bfloat16), ids_of(290)

    def run(graphs: bool):
        settings = ExecutionSettings(chunk_size=64, heads_per_group=2, resident_kv_heads=12, capacity_tokens=310,
                                     attention_backend="flash", decode_graphs=graphs)
        return execute(model, ids, settings, new_tokens=16, device="cuda",
                       options=RunOptions(keep_logits=True, sync_debug=True))

    graph, eager = run(True), run(False)
    assert (graph.decode_step, eager.decode_step) == ("graph", "eager")
    assert graph.decode_graph_setup_s > 0 and graph.decode_graph_fallback is None
    assert graph.generated_token_ids == eager.generated_token_ids
    assert (graph.step_logits - eager.step_logits).abs().max().item() < 1e-2
    assert graph.counters["decode"].attention_flops == eager.counters["decode"].attention_flops
    assert graph.decode_tokens_timed == eager.decode_tokens_timed == 15
    assert statistics.median(graph.decode_host_s) < statistics.median(eager.decode_host_s)


def test_cli_graph_decode_under_the_cli_allocator(tmp_path):
    """headplan run in a fresh process (its expandable-segments allocator setting applies): an all-resident plan
    decodes through the CUDA graph and agrees with the standard forward."""
    import os
    import subprocess
    import sys

    config = tiny_config(tmp_path)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    subprocess.run([sys.executable, "-m", "headplan.cli", "run", "--device", "cuda", "--model", str(config),
                    "--context", "1K", "--new-tokens", "8", "--out", str(out), "--verify", "--no-progress"],
                   check=True, env=env)
    report = json.loads((out / "report.json").read_text())
    assert report["host"]["planned_decode_graphs"] and report["host"]["decode_step"] == "graph"
    assert report["verify"]["greedy_tokens_agree"]


def test_host_store_pinned_exactly_and_released():
    from executor.kv.host_store import HostKVStore
    from executor.kv.layout import KVLayout

    settings = ExecutionSettings(chunk_size=64, heads_per_group=2, resident_kv_heads=1, capacity_tokens=1000)
    layout = KVLayout.build(num_layers=3, kv_heads=4, query_heads=16, head_dim=64, settings=settings)
    with HostKVStore(layout, torch.bfloat16, pin=True) as store:
        assert store.pinned and store.keys[0].is_pinned()
        assert store.nbytes == layout.host_bytes(2)
    assert not store.pinned


def test_cli_smoke_on_cuda(tmp_path):
    code, out = run_cli_on_cuda(tmp_path, "--verify", "--trace")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["measured"]["gpu_peak_bytes"] > 0 and report["verify"]["greedy_tokens_agree"]
    assert (out / "timeline.png").exists()


def test_gpu_budget_caps_the_allocator():
    """--gpu-mem on a bigger card: an allocation over budget - overhead fails, one under it succeeds."""
    from executor.runtime.gpu_memory import apply_gpu_budget

    budget, overhead = 4 * 1024**3, 512 * 1024**2
    fraction = apply_gpu_budget(budget, overhead, "cuda")  # a bare "cuda" must work (no device index)
    try:
        assert 0 < fraction < 1
        under = torch.empty(budget - overhead - 256 * 1024**2, dtype=torch.uint8, device="cuda")
        del under
        torch.cuda.empty_cache()
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(budget, dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
        torch.cuda.empty_cache()


@pytest.mark.parametrize("group,resident", [(2, 5), (2, 12)])   # 12 of 12: the CUDA-graph decode
def test_tail_run_over_a_synthetic_past_on_cuda(group, resident):
    """--tail-chunks' executor path on CUDA (flash, pinned host store, streams, no syncs in the loop): a prefill
    over a synthetic past of 192 tokens agrees with the standard forward over a cache of those 192 pattern rows."""
    from tests.cpu.test_tail_chunks import synthetic_past_reference

    ids, past = ids_of(300), 192
    model16 = model_on("cuda", torch.bfloat16)
    settings = ExecutionSettings(chunk_size=64, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=300 + NEW_TOKENS, attention_backend="flash")
    ours = execute(model16, ids[:, past:], settings, new_tokens=NEW_TOKENS, device="cuda",
                   options=RunOptions(keep_logits=True, sync_debug=True, synthetic_past_tokens=past))
    assert len(ours.chunk_s) == 2 and ours.synthetic_past_tokens == past
    if resident == 12:
        assert ours.decode_step == "graph"
    else:
        assert ours.counters["prefill"].h2d_bytes > 0
    our_error, standard_error = half_precision_errors(
        ours, model16, ids[:, past:], "cuda", exact_dtype=torch.float32,
        reference=lambda model, tail_ids, tokens, device: synthetic_past_reference(model, tail_ids, past, tokens,
                                                                                  device))
    assert our_error <= 2.0 * standard_error + 2e-2, (our_error, standard_error)


def test_cli_tail_chunks_on_cuda(tmp_path):
    code, out = run_cli_on_cuda(tmp_path, "--tail-chunks", "2")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tail"]["skipped_tokens"] == 256 and len(report["measured"]["chunk_s"]) == 2   # lead-in at 256
    assert report["measured"]["gpu_peak_bytes"] > 0 and report["measured"]["warmup_s"] > 0
