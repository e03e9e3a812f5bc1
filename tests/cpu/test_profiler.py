"""The profiler on CPU: the timing helper (fake clock, no wall-time assertions), a tiny-size profile that
validates and round-trips through the catalog reader, the name mapping and the `headplan profile` CLI."""

from __future__ import annotations

import io
import json

import pytest

torch = pytest.importorskip("torch")

from executor.profiler import ProfileOptions, run_profile  # noqa: E402
from executor.profiler.assemble import datasheet_name, default_profile_name  # noqa: E402
from executor.profiler.attention import attention_flops  # noqa: E402
from executor.profiler.config import CPU_QUICK, GPU_FULL, GPU_QUICK, TINY, choose_preset  # noqa: E402
from executor.runtime.timing import TimingError, measure, summarize  # noqa: E402
from headplan.cli import main as cli_main  # noqa: E402
from hwprofiles import HardwareProfile, load_profile, profile_hash, write_profile  # noqa: E402


class FakeClock:
    """Advances by the next step on every read: samples are the steps taken between paired reads."""

    def __init__(self, steps):
        self.now = 100.0
        self.steps = list(steps)
        self.reads = 0

    def __call__(self):
        self.reads += 1
        if self.reads % 2 == 0:  # end of a sample
            self.now += self.steps.pop(0)
        return self.now


# --- timing helper ---------------------------------------------------------------------------------------


def test_summarize_median_percentiles_spread():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats.median_s == 3.0
    assert stats.p10_s == pytest.approx(1.4)
    assert stats.p90_s == pytest.approx(4.6)
    assert stats.spread_rel == pytest.approx((4.6 - 1.4) / 3.0)
    assert stats.samples_s == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert stats.rejected_count == 0
    assert stats.rate(6.0) == 2.0


def test_summarize_drops_non_positive_samples():
    stats = summarize([0.0, 2.0, -1.0, 4.0])
    assert stats.rejected_count == 2
    assert stats.samples_s == (2.0, 4.0)
    assert stats.median_s == 3.0  # a zero averaged in would have pulled this down


def test_summarize_all_non_positive_raises():
    with pytest.raises(TimingError):
        summarize([0.0, 0.0, -2.0])


def test_measure_honours_warmup_and_repeats_with_fake_clock():
    calls = []
    clock = FakeClock([0.5, 0.1, 0.3, 0.2])
    stats = measure(lambda: calls.append(1), warmup=3, repeats=4, device="cpu", clock=clock)
    assert len(calls) == 3 + 4
    assert clock.reads == 2 * 4  # warm-up calls are not timed
    assert stats.samples_s == pytest.approx((0.1, 0.2, 0.3, 0.5))
    assert stats.median_s == pytest.approx(0.25)


def test_measure_zero_warmup_and_rejected_zero_sample():
    clock = FakeClock([0.0, 0.2, 0.4])
    stats = measure(lambda: None, warmup=0, repeats=3, device="cpu", clock=clock)
    assert stats.rejected_count == 1
    assert stats.median_s == pytest.approx(0.3)


def test_measure_rejects_bad_counts():
    with pytest.raises(ValueError):
        measure(lambda: None, repeats=0)
    with pytest.raises(ValueError):
        measure(lambda: None, warmup=-1)


# --- pure helpers ----------------------------------------------------------------------------------------


def test_attention_flops_counts_lower_right_pairs():
    # causal square: q_len (q_len + 1) / 2 pairs
    assert attention_flops(q_heads=1, head_dim=1, q_len=4, k_len=4, causal=True) == 4 * 10
    # chunk of 2 after a past of 6: 2 * 6 + 3 pairs
    assert attention_flops(q_heads=2, head_dim=8, q_len=2, k_len=8, causal=True) == 4 * 2 * 8 * 15
    assert attention_flops(q_heads=4, head_dim=128, q_len=10, k_len=100, causal=False) == 4 * 4 * 128 * 1000


@pytest.mark.parametrize(
    "gpu_name, expected",
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("NVIDIA RTX A6000", "a6000"),
        ("NVIDIA L40S", "l40s"),
        ("Tesla T4", None),
    ],
)
def test_datasheet_name_mapping(gpu_name, expected):
    assert datasheet_name(gpu_name) == expected


def test_default_profile_names():
    assert default_profile_name("NVIDIA H100 80GB HBM3", on_gpu=True) == "h100-sxm-measured"
    assert default_profile_name("NVIDIA H200", on_gpu=True) == "h200-sxm-measured"   # the catalog's H200 name
    assert default_profile_name("NVIDIA H200 NVL", on_gpu=True) == "nvidia-h200-nvl-measured"
    assert default_profile_name("Tesla T4", on_gpu=True) == "tesla-t4-measured"
    assert default_profile_name("CPU: whatever", on_gpu=False) == "cpu-measured"


def test_presets():
    assert choose_preset(quick=False, sizes="tiny", on_gpu=True) is TINY
    assert choose_preset(quick=True, sizes="default", on_gpu=True) is GPU_QUICK
    assert choose_preset(quick=False, sizes="default", on_gpu=True) is GPU_FULL
    assert choose_preset(quick=True, sizes="default", on_gpu=False) is CPU_QUICK
    with pytest.raises(ValueError):
        choose_preset(quick=False, sizes="huge", on_gpu=False)


def test_kernel_sweep_runs_q_len_by_q_len_over_every_shape():
    """A sweep stopped at its budget keeps every (head dim, G) at the first q_lens: the quick preset's decode and
    4K-chunk series for all of them come before any 16K series, and every G the planner prices the cudnn-split
    past parts from is in the grid at 4K queries for both head dims."""
    from executor.profiler.attention import grid

    class Ctx:
        preset = GPU_QUICK

    for backend in ("flash", "cudnn"):
        series = list(grid(Ctx(), backend))
        q_order = [q_len for _dim, _ratio, _kv, q_len, _k in series]
        assert q_order == sorted(q_order, key=GPU_QUICK.q_lens.index)
        at_4k = {(dim, kv) for dim, ratio, kv, q_len, _k in series if q_len == 4096 and ratio == 4}
        assert at_4k >= {(dim, kv) for dim in (128, 64) for kv in (1, 2, 4, 8)}
    assert GPU_QUICK.q_lens[:2] == (1, 4096)


# --- whole profile on CPU (tiny sizes) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run():
    progress = io.StringIO()
    run = run_profile(ProfileOptions(sizes="tiny", device="cpu"), stream=progress)
    return run, progress.getvalue()


def test_tiny_cpu_profile_is_valid_and_cpu_only(tiny_run):
    run, progress = tiny_run
    profile = run.profile
    assert profile.origin == "measured"
    assert profile.measurement.mode == "cpu-only"
    assert profile.name == "cpu-measured"
    assert "GPU sections" in profile.measurement.notes
    assert profile.matmul_table and profile.attention_table
    assert {p.backend for p in profile.attention_table} == {"cpu"}
    assert all(p.flops_per_s > 0 for p in profile.attention_table + profile.matmul_table)
    for field in ("matmul_flops_per_s", "attention_flops_per_s", "hbm_bytes_per_s", "pcie_h2d_bytes_per_s",
                  "pcie_d2h_bytes_per_s", "pcie_bidir_total_bytes_per_s", "pin_bytes_per_s", "host_mem_bytes",
                  "launch_overhead_s", "attention_call_overhead_s", "elementwise_bytes_per_s"):
        assert getattr(profile, field) > 0, field
    assert "elementwise" in progress and "layer ops" in progress
    assert "skipped" in progress and "matmul" in progress  # progress lines were written
    assert run.datasheet is None
    # GPU-only: the sustained prefill rates (the power limit's clock) are left out and said so
    assert profile.sustained_table == [] and "sustained prefill rates" in profile.measurement.notes
    assert profile.graph_decode_table == [] and "graph decode step" in profile.measurement.notes


def test_tiny_cpu_profile_measures_executor_host_times(tiny_run):
    run, progress = tiny_run
    profile = run.profile
    for field in ("executor_model_host_s", "executor_decode_layer_host_s", "executor_group_host_s",
                  "executor_prefill_layer_host_s"):
        assert getattr(profile, field) > 0, field
        assert f"executor   {field}" in progress
    assert profile.executor_split_part_host_s is None  # cuDNN split: GPU only
    assert "decode token, 4 layers, 4 groups of 1 head" in progress


def test_tiny_cpu_profile_measures_host_attention(tiny_run):
    run, progress = tiny_run
    profile = run.profile
    assert profile.host_read_bytes_per_s > 0 and profile.host_read_threads >= 1
    assert profile.host_share_handoff_s > 0
    table = profile.cpu_attention_table
    assert {p.key_tokens for p in table} == {1024, 4096} and all(p.bytes_per_s > 0 for p in table)
    assert max(p.threads for p in table) == torch.get_num_threads()
    assert profile.host_concurrency_table == []  # needs DMA: GPU only
    assert "host-attn" in progress
    # the job as a decode step calls it, at the table's two lengths: an intercept over the table's rate
    assert profile.host_attention_call_s is not None and profile.host_attention_call_s >= 0
    assert "job as decode calls it, 1K keys" in progress and "job as decode calls it, 4K keys" in progress
    assert "fixed cost per host-share call" in progress


def test_call_cost_is_the_median_intercept_over_the_tables_rate(monkeypatch):
    """measure_call_cost with the job's seconds replaced: bytes / rate + 2 ms at one length, + 0 at the other."""
    from executor.engine import host_share
    from executor.profiler import host_attention
    from executor.profiler.config import TINY
    from executor.profiler.context import ProfileContext
    from hwprofiles.schema import CpuAttentionPoint

    threads = host_attention.run_threads()
    rate = {1024: 1e9, 4096: 2e9}
    table = [CpuAttentionPoint(threads=threads, kv_heads=8, ratio=4, key_tokens=k, head_dim=128, element_bytes=4,
                               bytes_per_s=r) for k, r in rate.items()]
    extra_s = {1024: 2e-3, 4096: -1e-3}           # a job faster than the table counts as no fixed cost
    real_collect = host_share.HostShare.collect
    keys_of = {}

    def submit_spy(self, layer, query, past_tokens, streams, *, scale):
        keys_of["last"] = past_tokens
        return real_submit(self, layer, query, past_tokens, streams, scale=scale)

    def collect_fixed(self, layer):
        out, lse, timing = real_collect(self, layer)
        tokens = keys_of["last"]
        return out, lse, timing._replace(kernel_s=2 * 8 * tokens * 128 * 4 / rate[tokens] + extra_s[tokens])

    real_submit = host_share.HostShare.submit
    monkeypatch.setattr(host_share.HostShare, "submit", submit_spy)
    monkeypatch.setattr(host_share.HostShare, "collect", collect_fixed)
    ctx = ProfileContext(device=torch.device("cpu"), preset=TINY, quiet=True)
    assert host_attention.call_cost_lengths(ctx, table) == [1024, 4096]
    call_s = host_attention.measure_call_cost(ctx, table)
    assert call_s == pytest.approx((2e-3 + 0.0) / 2)     # the median over both lengths' calls (even count)
    assert host_attention.measure_call_cost(ctx, []) is None


def test_call_cost_and_hand_off_on_the_stream_wait_path(monkeypatch):
    """Where collect does not join (the GPU waits on the worker's counter), the profiler still times each job as
    decode calls it (take_timings after collect) and the hand-off loop leaves no job behind."""
    from executor.engine import host_share
    from executor.profiler import host_attention
    from executor.profiler.config import TINY
    from executor.profiler.context import ProfileContext
    from hwprofiles.schema import CpuAttentionPoint
    from tests.cpu.test_cpu_share import _BlockingCounter

    monkeypatch.setattr(host_share, "stream_counter", lambda device: _BlockingCounter())
    threads = host_attention.run_threads()
    table = [CpuAttentionPoint(threads=threads, kv_heads=8, ratio=4, key_tokens=k, head_dim=128, element_bytes=4,
                               bytes_per_s=1e12) for k in (1024, 4096)]
    ctx = ProfileContext(device=torch.device("cpu"), preset=TINY, quiet=True)
    assert host_attention.measure_call_cost(ctx, table) > 0     # the jobs' own seconds over a fast table
    assert host_attention.measure_handoff(ctx) > 0


def test_fit_decode_recovers_the_host_model():
    from executor.profiler.executor_host import fit_decode
    from planner.host_time import HOST_OPS_PER_GROUP_HEAD

    launch_s, model_s, layer_s, group_s = 5e-6, 400e-6, 300e-6, 80e-6

    def token_s(layers, groups, heads):
        return model_s + layers * (layer_s + groups * group_s + heads * HOST_OPS_PER_GROUP_HEAD * launch_s)

    rows = [(4, 0, 0, token_s(4, 0, 0)), (2, 0, 0, token_s(2, 0, 0)), (4, 4, 4, token_s(4, 4, 4)),
            (4, 1, 4, token_s(4, 1, 4))]
    fitted = fit_decode(rows, launch_s)
    assert fitted["executor_model_host_s"] == pytest.approx(model_s)
    assert fitted["executor_decode_layer_host_s"] == pytest.approx(layer_s)
    assert fitted["executor_group_host_s"] == pytest.approx(group_s)


def test_tiny_profile_round_trips_through_catalog_reader(tiny_run, tmp_path):
    run, _ = tiny_run
    path = tmp_path / "cpu.json"
    written = write_profile(run.profile, path)
    loaded = load_profile(str(path))
    assert loaded == written
    assert loaded.content_hash == profile_hash(loaded) != ""
    assert HardwareProfile.model_validate(json.loads(path.read_text())) == written


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_writes_profile_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "out" / "p.json"
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--out", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "ratio" in out
    assert load_profile(str(path)).origin == "measured"
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--out", str(path), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--out", str(path), "--quiet",
                     "--force", "--name", "my-box"]) == 0
    assert load_profile(str(path)).name == "my-box"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_without_gpu_is_a_user_error(tmp_path, capsys):
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_summary_table_shows_ratio_against_a_reference(tiny_run):
    from executor.profiler.summary import summary_table

    run, _ = tiny_run
    text = summary_table(run.profile, run.profile.model_copy(update={"name": "reference"}))
    assert "reference" in text and "1.00" in text
    assert "(no datasheet profile)" in summary_table(run.profile, None)


# --- attention step (executor/profiler/attention_step.py) on CPU: backend math, tiny sizes ------------------


def test_attention_step_points_on_cpu():
    from executor.profiler.attention_step import STEP_TINY, measure_attention_step
    from executor.profiler.context import ProfileContext

    progress = io.StringIO()
    ctx = ProfileContext(device=torch.device("cpu"), preset=TINY, stream=progress)
    points = measure_attention_step(ctx)
    shapes = {(g, c, s) for g in STEP_TINY.kv_heads for c in STEP_TINY.chunks for s in STEP_TINY.pasts}
    assert len(points) == len(shapes)
    assert {(p.kv_heads, p.q_len, p.k_len - p.q_len) for p in points} == shapes
    for point in points:
        assert point.backend == "math-step" and point.causal and point.head_dim == 64
        assert point.q_heads == 4 * point.kv_heads
        assert point.flops_per_s > 0 and point.spread_rel >= 0
    assert "attn-step  math d64 G2 c128 s256" in progress.getvalue()
    assert f"{len(points)} points" in progress.getvalue()


def test_attention_step_call_writes_what_attend_chunk_computes():
    from executor.attention.kernels import attend_chunk
    from executor.profiler.attention_step import step_call

    torch.manual_seed(0)
    chunk, query_heads, head_dim, kv_heads, past, capacity = 8, 8, 16, 1, 24, 64
    query = torch.randn(1, chunk, query_heads, head_dim)          # [1, c, H_q, d] as transformers has it
    out = torch.zeros_like(query)
    slot_keys, slot_values = torch.randn(2, capacity, head_dim), torch.randn(2, capacity, head_dim)
    step_call(query, out, slot_keys, slot_values, kv_heads=kv_heads, past=past, backend="math")()
    expected = attend_chunk(query.transpose(1, 2)[:, :4].contiguous(), slot_keys[None, :1, :past + chunk].clone(),
                            slot_values[None, :1, :past + chunk].clone(), scale=head_dim ** -0.5, backend="math")
    torch.testing.assert_close(out.transpose(1, 2)[:, :4], expected)
    assert torch.all(out.transpose(1, 2)[:, 4:] == 0)            # other groups' rows untouched


def test_attention_step_grids_and_names():
    from executor.profiler.attention_step import STEP_BACKEND_NAMES, STEP_FULL, STEP_QUICK, step_grid
    from hwprofiles.schema import AttentionPoint

    assert step_grid("quick") is STEP_QUICK and step_grid("full") is STEP_FULL
    assert STEP_QUICK.head_dims == (128, 64) and STEP_QUICK.chunks == (4096, 8192)
    assert STEP_QUICK.pasts[0] == 0 and STEP_QUICK.budget_s <= 40
    assert STEP_FULL.head_dims == (128, 64) and STEP_FULL.kv_heads == (1, 2, 4, 8) and STEP_FULL.budget_s <= 90
    assert STEP_FULL.pasts[0] == 0 and list(STEP_FULL.pasts) == sorted(STEP_FULL.pasts)
    # the split's cost depends on how many power-of-two past blocks a past needs: the grids must hold pasts that
    # need several (a grid of powers of two would only ever time one cuDNN call per step)
    from planner.host_time import PAST_BLOCK_TOKENS as block

    for grid in (STEP_QUICK, STEP_FULL):
        assert max(bin(past // block).count("1") for past in grid.pasts) >= 3
    for name in STEP_BACKEND_NAMES.values():
        AttentionPoint(backend=name, head_dim=128, q_heads=4, kv_heads=1, q_len=4096, k_len=4096, causal=True,
                       flops_per_s=1.0)


def test_tiny_profile_skips_the_attention_step_with_a_note(tiny_run):
    run, _ = tiny_run
    assert "attention step table (attention_step.py) skipped" in run.profile.measurement.notes
    assert not any(p.backend.endswith("-step") for p in run.profile.attention_table)


def test_allreduce_points_structure_on_gloo():
    """The all-reduce section's code path on 2 gloo ranks (the GPU run uses NCCL over every visible GPU): one
    point per size, sizes as asked, positive times, busbw = 2 (N-1)/N x size / t; they validate as the profile's
    table. On this CPU-only machine the profiler itself skips the section (one GPU or none)."""
    from executor.profiler.allreduce import allreduce_points
    from hwprofiles.schema import AllReducePoint

    points = allreduce_points(2, "cpu", (4096, 65536), repeats=2)
    assert [p["size_bytes"] for p in points] == [4096, 65536]
    for p in points:
        assert p["gpus"] == 2 and p["seconds"] > 0
        assert abs(p["bus_bytes_per_s"] - p["size_bytes"] / p["seconds"]) < 1e-6 * p["bus_bytes_per_s"]
        AllReducePoint(**p)


def test_graph_decode_fit_recovers_the_step_model():
    """graph_decode.fit_step: step(L, s) = token_s + L layer_s(s) from runs of 4 and 2 layers at each context,
    exactly for data of that form; noise that makes a slope negative gives 0, not a negative cost."""
    from executor.profiler import graph_decode as gd

    token_s, layer_s = 4e-4, {s: 150e-6 + 1e-9 * s ** 0.9 for s in gd.CONTEXTS}
    deep = {s: token_s + gd.LAYERS * layer_s[s] for s in gd.CONTEXTS}
    shallow = {s: token_s + gd.SHALLOW_LAYERS * layer_s[s] for s in gd.CONTEXTS}
    fitted_token_s, fitted_layer_s = gd.fit_step(deep, shallow)
    assert fitted_token_s == pytest.approx(token_s)
    assert fitted_layer_s == pytest.approx([layer_s[s] for s in gd.CONTEXTS])
    flat = {s: 1e-3 for s in gd.CONTEXTS}
    assert gd.fit_step(flat, flat)[1] == [0.0] * len(gd.CONTEXTS)
