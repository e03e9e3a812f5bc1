"""The host share's scripted job (attention/host_job.py): bit-identical to the eager reference
(attention/host_attention.py host_partial_attention) in float32 and bf16, with remainders, S = 0 and several head
counts and thread counts; scripting shows no warning; the job runs to its end while the main thread holds the GIL
(the eager body cannot); the engine runs the scripted job and reports its per-layer timeline."""

from __future__ import annotations

import sys
import threading
import time
import warnings

import pytest

torch = pytest.importorskip("torch")

from executor.attention.host_attention import host_partial_attention  # noqa: E402
from executor.attention.host_job import HostJob, _host_job, host_job, script_host_job  # noqa: E402
from planner.host_share import key_blocks  # noqa: E402


def _inputs(heads: int, ratio: int, key_tokens: int, dtype, head_dim: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    capacity = key_tokens + 11                                             # host rows: row stride T d, not S d
    keys = torch.randn(heads, capacity, head_dim, generator=gen).to(dtype)[:, :key_tokens]
    values = torch.randn(heads, capacity, head_dim, generator=gen).to(dtype)[:, :key_tokens]
    query = torch.randn(heads, ratio, head_dim, generator=gen).to(dtype)
    return query, keys, values


def _run(job: HostJob, query, keys, values, threads: int, scale: float = 0.3):
    heads, ratio, head_dim = query.shape
    out = torch.full((heads * ratio, head_dim), float("nan"))
    lse = torch.full((heads * ratio,), float("nan"))
    with torch.inference_mode():
        job.run(query, keys, values, key_blocks(keys.shape[1], heads, threads), scale, out, lse)
    return out, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,ratio,key_tokens,threads", [
    (8, 4, 16461, 2),     # blocks and a remainder
    (6, 4, 12288, 15),    # 6 offloaded heads on 15 threads: no remainder
    (3, 2, 5000, 4),
    (1, 8, 7, 1),         # one short block
    (2, 4, 2049, 16),
    (4, 1, 0, 2),         # S = 0: out 0, lse -inf
])
def test_scripted_job_is_bit_identical_to_the_eager_reference(dtype, heads, ratio, key_tokens, threads):
    job = host_job()
    assert job.scripted
    query, keys, values = _inputs(heads, ratio, key_tokens, dtype, seed=key_tokens)
    out, lse = _run(job, query, keys, values, threads)
    ref_out, ref_lse = host_partial_attention(query, keys, values, scale=0.3, threads=threads)
    assert torch.equal(out, ref_out.reshape(heads * ratio, -1))
    assert torch.equal(lse, ref_lse.reshape(-1))
    if key_tokens == 0:
        assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_eager_fallback_body_is_the_same_arithmetic():
    query, keys, values = _inputs(3, 4, 4099, torch.bfloat16)
    scripted = _run(host_job(), query, keys, values, 2)
    eager = _run(HostJob(_host_job, False), query, keys, values, 2)
    assert torch.equal(scripted[0], eager[0]) and torch.equal(scripted[1], eager[1])


def test_scripting_and_calling_show_no_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job, why = script_host_job()
        _run(job, *_inputs(2, 2, 100, torch.float32), 1)
    assert job.scripted and why == ""
    assert [str(w.message) for w in caught] == []


def test_fallback_when_scripting_fails_is_said_once(monkeypatch):
    def refuse(fn):
        raise RuntimeError("no TorchScript here")
    monkeypatch.setattr(torch.jit, "script", refuse)
    host_job.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = host_job(), host_job()
        assert not first.scripted and first is second
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "eager Python" in messages[0] and "no TorchScript here" in messages[0]
    finally:
        host_job.cache_clear()


def _progress_while_main_holds_the_gil(job: HostJob, hold_s: float) -> tuple[bool, bool]:
    """Run ``job`` on a thread while the main thread holds the GIL: a pure-Python loop with a switch interval far
    longer than the test, so the worker can never take the GIL back until the loop ends; it watches the job's lse
    buffer through numpy (no ATen call, so it never gives the GIL up). The main thread gets the GIL where the worker
    first gives it up: inside the scripted call, or at the eager body's ATen calls, at the latest its flash call
    (64 query rows per head: ~30 ms of one thread's compute, so the main thread surely wakes meanwhile).
    Returns (the job was still running when the main thread took the GIL, it wrote its result during the hold)."""
    query, keys, values = _inputs(4, 64, 16384, torch.float32, head_dim=64)
    out, lse = torch.empty(4 * 64, 64), torch.full((4 * 64,), float("nan"))
    watched = lse.numpy()
    blocks = key_blocks(keys.shape[1], 4, 1)
    entering = threading.Event()

    def work():
        torch.set_num_threads(1)
        entering.set()
        job.run(query, keys, values, blocks, 0.1, out, lse)

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=work)
    try:
        sys.setswitchinterval(1000.0)
        thread.start()
        entering.wait()
        pending = watched[-1] != watched[-1]              # NaN: the job has not written its result yet
        deadline = time.perf_counter() + hold_s
        done = False
        while not done and time.perf_counter() < deadline:
            done = watched[-1] == watched[-1]
    finally:
        sys.setswitchinterval(interval)
        thread.join()
    return bool(pending), bool(done)


def test_scripted_job_needs_no_gil_and_the_eager_body_does():
    with torch.inference_mode():
        _run(host_job(), *_inputs(4, 64, 16384, torch.float32, head_dim=64), 1)   # the graph optimised first
    assert _progress_while_main_holds_the_gil(host_job(), hold_s=20.0) == (True, True)
    assert _progress_while_main_holds_the_gil(HostJob(_host_job, False), hold_s=0.5) == (True, False)


def test_host_share_runs_the_scripted_job_and_times_each_layer():
    from executor.engine.host_share import HostShare
    from executor.kv.host_store import HostKVStore
    from executor.kv.layout import KVLayout
    from executor.runtime.streams import StreamSet
    from executor.settings import ExecutionSettings

    layout = KVLayout.build(num_layers=2, kv_heads=4, query_heads=8, head_dim=16,
                            settings=ExecutionSettings(chunk_size=1, heads_per_group=2, resident_kv_heads=1,
                                                       capacity_tokens=300))
    device = torch.device("cpu")
    with HostKVStore(layout, torch.float32, pin=False, available_bytes=None) as host:
        for layer in range(2):
            host.keys[layer].normal_()
            host.values[layer].normal_()
        share = HostShare(layout, host, share=0.5, device=device, threads=2)
        try:
            assert share.job.scripted
            query = torch.randn(1, 8, 1, 16)
            streams = StreamSet(device, 1)
            for layer in range(2):
                key_tokens = share.submit(layer, query, 257, streams, scale=0.25)
                out, lse, timing = share.collect(layer)
                rows = query[0, 2 * layout.resident_per_layer[layer]:, 0].reshape(-1, 2, 16)   # r = 2
                ref_out, ref_lse = host_partial_attention(rows, host.keys[layer][:, :key_tokens],
                                                          host.values[layer][:, :key_tokens], scale=0.25, threads=2)
                assert key_tokens == 128
                assert torch.equal(out[0, :, 0], ref_out.reshape(-1, 16)) and torch.equal(lse[0, :, 0],
                                                                                          ref_lse.reshape(-1))
                assert timing.kernel_s > 0 and timing.start_delay_s >= 0 and timing.join_wait_s >= 0
        finally:
            share.close()

