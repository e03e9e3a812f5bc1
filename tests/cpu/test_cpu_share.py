"""The CPU's share of decode attention (engine/host_share.py): exact against transformers for shares 0, a fraction
and 1, with resident heads and several group sizes; float32 greedy tokens identical, bfloat16 within the bf16
reference's own error; the host kernel and the merge with an empty share on either side."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.attention.host_attention import host_partial_attention, key_blocks  # noqa: E402
from executor.attention.lse import merge_by_lse, partial_math  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402
from tests.references import half_precision_errors  # noqa: E402

NEW_TOKENS = 6
PROMPT = 13


def run_shared(model, ids, *, share: float, group: int, resident: int, chunk: int = 5):
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math",
                                 cpu_share=share)
    return execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu", options=RunOptions(keep_logits=True))


def _expected_host_bytes(model, ids, share: float, resident: int) -> int:
    """Bytes the host share reads over the decode steps: 2 (K, V) * offloaded heads * floor(F s) * d * b."""
    cfg = model.config
    offloaded = cfg.num_hidden_layers * cfg.num_key_value_heads - resident
    element = next(model.parameters()).element_size()
    past = range(ids.shape[1], ids.shape[1] + NEW_TOKENS - 1)
    return sum(2 * offloaded * min(s, int(share * s)) * cfg.head_dim * element for s in past)


@pytest.mark.parametrize("share", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("group,resident", [(1, 0), (2, 3), (3, 1), (4, 0)])
def test_float32_identical_tokens(share, group, resident):
    model = tiny_model(query_heads=8, kv_heads=4)
    ids = prompt(PROMPT)
    measurement = run_shared(model, ids, share=share, group=group, resident=resident)
    reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()
    assert (measurement.step_logits - reference).abs().max().item() < 1e-4
    decode = measurement.counters["decode"]
    assert decode.host_attention_bytes == _expected_host_bytes(model, ids, share, resident)
    if share == 1.0:  # the GPU share holds the new token only: nothing of the past crosses the link
        assert decode.h2d_bytes == 0
    if share == 0.0:
        assert decode.h2d_bytes > 0


def test_share_cuts_streamed_bytes():
    model = tiny_model(query_heads=8, kv_heads=4)
    ids = prompt(PROMPT)
    full = run_shared(model, ids, share=0.0, group=2, resident=0).counters["decode"].h2d_bytes
    half = run_shared(model, ids, share=0.5, group=2, resident=0).counters["decode"]
    assert half.h2d_bytes + half.host_attention_bytes == full


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_bfloat16_within_reference_error(share):
    model = tiny_model(query_heads=8, kv_heads=4, dtype=torch.bfloat16)
    ids = prompt(PROMPT)
    measurement = run_shared(model, ids, share=share, group=2, resident=3)
    offloaded_error, reference_error = half_precision_errors(measurement, model, ids)
    assert offloaded_error <= 3 * reference_error + 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("key_tokens", [1, 7, 2049, 5000])
def test_host_kernel_matches_math(dtype, key_tokens):
    heads, ratio, dim, capacity = 3, 4, 16, 5100
    gen = torch.Generator().manual_seed(key_tokens)
    keys = torch.randn(heads, capacity, dim, generator=gen).to(dtype)   # rows of a host store: stride T d
    values = torch.randn(heads, capacity, dim, generator=gen).to(dtype)
    query = torch.randn(heads, ratio, dim, generator=gen).to(dtype)
    out, lse = host_partial_attention(query, keys[:, :key_tokens], values[:, :key_tokens], scale=0.25, threads=4)
    ref_out, ref_lse = partial_math(query.double().reshape(1, heads * ratio, 1, dim),
                                    keys[None, :, :key_tokens].double(), values[None, :, :key_tokens].double(),
                                    scale=0.25, causal=False)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out.double().reshape(ref_out.shape) - ref_out).abs().max().item() < tol
    assert (lse.double().reshape(ref_lse.shape) - ref_lse).abs().max().item() < tol


def test_host_kernel_empty_share():
    out, lse = host_partial_attention(torch.ones(2, 3, 8), torch.ones(2, 0, 8), torch.ones(2, 0, 8), scale=1.0)
    assert torch.equal(out, torch.zeros(2, 3, 8)) and torch.isneginf(lse).all()


def test_key_blocks_give_every_thread_work():
    assert key_blocks(0, 8, 16) == 0
    assert key_blocks(100, 8, 16) == 1            # too short to cut
    assert key_blocks(1 << 20, 8, 16) == 8        # 8 heads x 8 blocks = 64 tasks for 16 threads
    assert key_blocks(1 << 20, 1, 2) == 8


@pytest.mark.parametrize("empty_side", ["host", "streamed"])
def test_merge_with_an_empty_share(empty_side):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 1, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64)
    full_out, full_lse = partial_math(q, k, v, scale=0.3, causal=False)
    empty_out, empty_lse = torch.zeros_like(full_out), torch.full_like(full_lse, float("-inf"))
    parts = [(full_out, full_lse), (empty_out, empty_lse)]
    if empty_side == "streamed":
        parts.reverse()
    out, lse = merge_by_lse([p[0] for p in parts], [p[1] for p in parts])
    assert torch.allclose(out, full_out, atol=1e-12) and torch.allclose(lse, full_lse, atol=1e-12)


def test_share_out_of_range_is_refused():
    with pytest.raises(ValueError, match="cpu_share"):
        ExecutionSettings(chunk_size=4, heads_per_group=1, resident_kv_heads=0, capacity_tokens=8, cpu_share=1.5)


def test_cli_run_cpu_share_reports_both_sides(tmp_path, capsys):
    from headplan.cli import main as cli_main
    from tests.cpu.test_tail_chunks import cli_run

    assert cli_run(tmp_path, "--cpu-share", "0.5", "--verify") == 0
    import json
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["cpu_share"] == 0.5
    share = report["host_share"]
    assert share["cpu_share"] == 0.5 and share["measured_cpu_bytes_per_token"] > 0
    assert share["measured_pcie_bytes_per_token"] > 0 and share["measured_cpu_bytes_per_s"] > 0
    # the per-layer timeline: one job per layer with offloaded heads and a host share, summed per token
    assert share["measured_cpu_calls_per_token"] == 2          # 2 layers, each with an offloaded head
    assert share["measured_cpu_kernel_s_per_token"] > 0
    assert share["measured_cpu_start_delay_s_per_token"] >= 0 and share["measured_join_wait_s_per_token"] >= 0
    assert share["hand_off"] == "join"                          # no stream to wait on a CPU device
    assert report["transfers"]["decode"]["host_attention_bytes"] > 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Decode CPU share F = 0.5" in markdown and "CPU share timeline per token" in markdown
    assert "deprecated" not in capsys.readouterr().err          # TorchScript's notice kept off the CLI
    assert cli_main(["report", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_cli_cpu_share_bad_value(tmp_path, capsys, value):
    from tests.cpu.test_tail_chunks import cli_run

    assert cli_run(tmp_path, "--cpu-share", value) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--cpu-share" in err


def test_worker_fault_reaches_the_caller_and_close_returns():
    from executor.engine.host_share import _Worker

    worker = _Worker(None)

    def fails():
        raise RuntimeError("kernel fault")
    worker.submit(fails)
    with pytest.raises(RuntimeError, match="kernel fault"):
        worker.result()
    worker.submit(lambda: 2.5)
    assert worker.result() == 2.5
    worker.close()


def test_profiler_kernel_loop_runs_on_a_worker_beside_a_busy_main_thread():
    from executor.engine.host_share import default_host_threads
    from executor.profiler.host_attention import _KernelLoop, _kernel_call

    keys, values = torch.randn(8, 4096, 128), torch.randn(8, 4096, 128)
    query = torch.randn(8, 4, 128)
    main_calls = []
    loop = _KernelLoop(_kernel_call(keys, values, query, 4096, 1), 2 * keys.numel() * 4, 1)
    assert loop.run(0.05) > 0
    assert loop.run(0.05, busy_main=lambda: main_calls.append(1)) > 0 and main_calls
    assert 1 <= default_host_threads() <= torch.get_num_threads()


def test_share_changed_between_tokens_stays_exact(monkeypatch):
    """A share that changes after a token's last layer (after the next token's first group was prefetched with the
    old s_h) still gives the standard forward's tokens: the stale prefetch is detected and fetched again."""
    from executor.engine.host_share import HostShare

    shares = iter([0.7, 0.2, 1.0, 0.0, 0.5, 0.3, 0.9, 0.4])
    original = HostShare.collect

    def collect(self, layer):
        result = original(self, layer)
        last = max(index for index, groups in enumerate(self.layout.groups_per_layer) if groups)
        if layer == last:
            self.share = next(shares, 0.5)
        return result

    monkeypatch.setattr(HostShare, "collect", collect)
    model = tiny_model(query_heads=8, kv_heads=4)
    ids = prompt(PROMPT)
    for group, resident in [(1, 0), (2, 3)]:
        measurement = run_shared(model, ids, share=0.4, group=group, resident=resident)
        reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
        assert measurement.generated_token_ids == reference.argmax(-1).tolist()
        assert (measurement.step_logits - reference).abs().max().item() < 1e-4


class _BlockingCounter:
    """The stream wait's protocol on the CPU: ``wait_current`` blocks the caller (on CUDA: the stream) until a host
    thread has published the value, so the engine runs the path where collect does not join the worker."""

    def __init__(self):
        import threading

        self._value, self._changed = 0, threading.Condition()
        self.waits = 0

    def publish(self, value: int) -> None:
        with self._changed:
            self._value = value
            self._changed.notify_all()

    def release(self, device) -> None:
        self.released = True

    def wait_current(self, device, value: int) -> None:
        self.waits += 1
        with self._changed:
            assert self._changed.wait_for(lambda: self._value >= value, timeout=30), "job never published"


def test_stream_wait_path_is_exact_and_counts_every_job(monkeypatch):
    """With a counter to wait on (engine/host_share.py stream_counter), collect returns no timeline and the jobs'
    timelines are taken later (take_timings, settled before the counters are read): the tokens are the standard
    forward's and every layer's job is counted, with no join wait."""
    import executor.engine.host_share as host_share

    counters = []

    def counter(device):
        counters.append(_BlockingCounter())
        return counters[-1]

    monkeypatch.setattr(host_share, "stream_counter", counter)
    model = tiny_model(query_heads=8, kv_heads=4)
    ids = prompt(PROMPT)
    measurement = run_shared(model, ids, share=0.5, group=2, resident=3)
    reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()
    assert (measurement.step_logits - reference).abs().max().item() < 1e-4
    decode = measurement.counters["decode"]
    layers = model.config.num_hidden_layers
    assert counters and sum(c.waits for c in counters) == layers * (NEW_TOKENS - 1)
    assert all(getattr(c, "released", False) for c in counters)   # each counter released on close
    assert decode.host_attention_calls == layers * (NEW_TOKENS - 1) and decode.host_join_wait_s == 0.0
    assert measurement.host_share_hand_off == "stream"


@contextlib.contextmanager
def _one_layer_share():
    """A HostShare over a 1-layer host store (2 KV heads, 4 query heads, d 8, 64 tokens) on the CPU, one thread."""
    from executor.engine.host_share import HostShare
    from executor.kv.host_store import HostKVStore
    from executor.kv.layout import KVLayout

    layout = KVLayout.build(num_layers=1, kv_heads=2, query_heads=4, head_dim=8,
                            settings=ExecutionSettings(chunk_size=1, heads_per_group=1, resident_kv_heads=0,
                                                       capacity_tokens=64))
    with HostKVStore(layout, torch.float32, pin=False, available_bytes=None) as host:
        share = HostShare(layout, host, share=0.5, device=torch.device("cpu"), threads=1)
        try:
            yield share
        finally:
            share.close()


def test_stream_wait_job_fault_reaches_the_main_thread(monkeypatch):
    """A job that raises still publishes its ticket (the stream must not wait forever), and the fault is raised on
    the main thread when the timelines are taken."""
    from types import SimpleNamespace

    import executor.engine.host_share as host_share
    from executor.runtime.streams import StreamSet

    counter = _BlockingCounter()
    monkeypatch.setattr(host_share, "stream_counter", lambda device: counter)
    with _one_layer_share() as share:
        def fault(*args):
            raise RuntimeError("kernel fault")

        share.job = SimpleNamespace(run=fault)
        share.submit(0, torch.randn(1, 4, 1, 8), 32, StreamSet(torch.device("cpu"), 1), scale=1.0)
        out, lse, timing = share.collect(0)           # returns once the faulty job published its ticket
        assert timing is None and counter._value == 1
        with pytest.raises(RuntimeError, match="kernel fault"):
            share.take_timings(wait=True)


def test_start_delay_counts_from_the_previous_jobs_end():
    """A job submitted while the previous one still ran (the stream wait lets the host submit ahead) waits from that
    job's end, not from its submit: the worker was busy, not idle."""
    with _one_layer_share() as share:
        first = share._timing((10.0, 10.5, 12.0))            # idle 0.5 s after its submit
        second = share._timing((10.2, 12.25, 13.0))          # submitted during the first: idle 0.25 s
        third = share._timing((14.0, 14.1, 15.0))            # submitted after: from its submit
    assert (first.start_delay_s, second.start_delay_s) == (0.5, 0.25)
    assert third.start_delay_s == pytest.approx(0.1) and second.kernel_s == 0.75


@pytest.mark.parametrize("new_share", [0.0, 0.2, 0.4])
def test_share_rebalanced_during_decode_stays_exact(new_share):
    """RunOptions.share_rebalancing: after 2 decode tokens the runner measures the kernel's rate, asks for a share
    and rebuilds the host share at it (0: none left; 0.4: kept): the standard forward's tokens and logits, the
    decision recorded with the rate it saw, and the CPU reading nothing more once the share is 0."""
    from types import SimpleNamespace

    from executor.settings import ShareRebalancing

    seen = []

    def choose(measured):
        seen.append(measured)
        return SimpleNamespace(share=new_share, reason="test", planned_cpu_bytes_per_s=1e9)

    model = tiny_model(query_heads=8, kv_heads=4)
    ids = prompt(PROMPT)
    settings = ExecutionSettings(chunk_size=5, heads_per_group=2, resident_kv_heads=3,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math", cpu_share=0.4)
    options = RunOptions(keep_logits=True, share_rebalancing=ShareRebalancing(choose=choose, after_tokens=2))
    measurement = execute(model, ids, settings, new_tokens=NEW_TOKENS, device="cpu", options=options)
    reference = standard_step_logits(model, ids, measurement.generated_token_ids, "cpu")
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()
    assert (measurement.step_logits - reference).abs().max().item() < 1e-4
    assert len(seen) == 1 and seen[0] > 0
    record = measurement.share_rebalance
    assert record["at_token"] == 2 and record["planned_share"] == 0.4 and record["share"] == new_share
    assert record["measured_cpu_bytes_per_s"] == seen[0] and measurement.host_share_hand_off == "join"
    cfg = model.config
    offloaded = cfg.num_hidden_layers * cfg.num_key_value_heads - 3
    past = list(range(ids.shape[1], ids.shape[1] + NEW_TOKENS - 1))    # decode tokens 1 .. 5 at these pasts
    shares = [0.4, 0.4] + [new_share] * (len(past) - 2)
    expected = sum(2 * offloaded * int(f * s) * cfg.head_dim * 4 for f, s in zip(shares, past))
    assert measurement.counters["decode"].host_attention_bytes == expected


def test_no_rebalancing_without_a_share_or_when_kept():
    """No share: the hook is never installed (choose never called); a decision that keeps F changes nothing."""
    from types import SimpleNamespace

    from executor.settings import ShareRebalancing

    calls = []
    model, ids = tiny_model(query_heads=8, kv_heads=4), prompt(PROMPT)
    options = RunOptions(share_rebalancing=ShareRebalancing(choose=lambda m: calls.append(m), after_tokens=1))
    base = dict(chunk_size=5, heads_per_group=2, resident_kv_heads=3, capacity_tokens=ids.shape[1] + NEW_TOKENS,
                attention_backend="math")
    measurement = execute(model, ids, ExecutionSettings(**base), new_tokens=NEW_TOKENS, device="cpu",
                          options=options)
    assert calls == [] and measurement.share_rebalance is None
    keep = RunOptions(share_rebalancing=ShareRebalancing(
        choose=lambda m: SimpleNamespace(share=0.5, reason="kept", planned_cpu_bytes_per_s=m), after_tokens=1))
    kept = execute(model, ids, ExecutionSettings(**base, cpu_share=0.5), new_tokens=NEW_TOKENS, device="cpu",
                   options=keep)
    plain = run_shared(model, ids, share=0.5, group=2, resident=3)
    assert kept.share_rebalance["share"] == 0.5 and kept.generated_token_ids == plain.generated_token_ids
    assert kept.counters["decode"].host_attention_bytes == plain.counters["decode"].host_attention_bytes


def test_cli_rebalance_cpu_share_reports_the_decision(tmp_path, capsys):
    """--rebalance-cpu-share end to end on the CPU: the tiny model's jobs are a few KB each, so the H200 profile
    prices each at its fixed cost (host_attention_call_s, ~1 ms), whatever this machine's jobs take (a timing, not
    compared here); the planner's choice again is F = 0, as its CPU table lacks the head dim; report.json and
    report.md say so, the answer is the standard forward's (--verify)."""
    import json

    from tests.cpu.test_tail_chunks import cli_run

    assert cli_run(tmp_path, "--cpu-share", "0.5", "--rebalance-cpu-share", "--new-tokens", "8", "--hw",
                   "h200-sxm-measured", "--verify") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rebalance = report["host_share"]["rebalance"]
    assert rebalance["at_token"] == 4 and rebalance["planned_share"] == 0.5 and rebalance["share"] == 0.0
    assert rebalance["measured_cpu_bytes_per_s"] > 0 and rebalance["planned_cpu_bytes_per_s"] > 0  # no race of rates
    assert "no head dim 16" in rebalance["reason"]
    assert report["verify"]["greedy_tokens_agree"] and report["verify"]["max_abs_logit_diff"] < 1e-4
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Re-balanced after 4 decode tokens" in markdown and "F 0.5 -> 0" in markdown


def test_a_slow_host_is_named_in_the_report_warning():
    """The H200's 8B 128K cell of 2026-12-01: decode 203 ms against 159 predicted, the CPU share's jobs at 19.0 GB/s
    and PCIe at 39.6 where the plan priced ~28 (the kernel's 37.5 with each job's fixed cost) and ~51."""
    from hwprofiles import load_profile
    from executor.report.assemble import decode_shortfall_warning
    from executor.report.schema import HostShareFigures
    from executor.runtime.cpu_steal import StealFigures
    from planner.builtin_models import BUILTIN_MODELS
    from planner.share_rebalance import planned_job
    from planner.solver import make_plan

    plan = make_plan(BUILTIN_MODELS["llama-3-8b"], load_profile("h200-sxm-measured"), context_tokens=131072,
                     decode_tokens=16, gpu_mem_bytes=24 * 10**9)
    planned, decode_s, pcie_bytes = planned_job(plan).job_bytes_per_s, 0.159, 8.1e9     # pcie planned: 50.9 GB/s

    def warning(cpu_rate, pcie_rate, error=0.27, rebalance=None):
        figures = HostShareFigures(cpu_share=plan.cpu_share, measured_cpu_bytes_per_s=cpu_rate,
                                   measured_pcie_bytes_per_s=pcie_rate, predicted_pcie_bytes_per_token=pcie_bytes,
                                   rebalance=rebalance)
        return decode_shortfall_warning(plan, figures, decode_s, error)

    slow = warning(0.5 * planned, 39.6e9)
    assert slow.startswith("decode +27%") and "PCIe stream at 39.6 GB/s (planned 50.9)" in slow
    assert f"jobs (F {plan.cpu_share:g}) at {0.5 * planned / 1e9:.1f} GB/s (planned {planned / 1e9:.1f})" in slow
    assert f"{(0.5 * planned + 39.6e9) / 1e9:.1f} GB/s together" in slow
    assert "PCIe stream at 39.6" in warning(planned, 39.6e9)                          # the link's side alone
    assert warning(0.5 * planned, 50e9) is not None                                    # the kernel's side alone
    assert "re-balanced after 4 tokens to F 0.2" in warning(0.5 * planned, 39.6e9,
                                                            rebalance={"at_token": 4, "share": 0.2})
    assert warning(0.5 * planned, 39.6e9, error=0.05) is None                          # within its prediction
    assert warning(0.95 * planned, 50e9) is None                                       # slow for another reason
    assert decode_shortfall_warning(plan, None, decode_s, 0.27) is None
    stolen = decode_shortfall_warning(plan, HostShareFigures(cpu_share=plan.cpu_share, measured_cpu_bytes_per_s=0.5 * planned),
                                      decode_s, 0.27, steal=StealFigures(fraction=0.031, busiest_cpu_fraction=0.12))
    assert stolen.endswith("the hypervisor took 3.1% of the CPUs' time during decode (the busiest CPU 12.0%)")
