"""Decode's CPU share on CUDA (engine/host_share.py): the pinned hand-off, the worker waiting on a CUDA event and the
float32 merge really exercised; bf16 within the bf16 reference's error, float32 identical greedy tokens, no host
synchronisation on the main thread (sync debug mode "error"), fewer PCIe bytes by the share.
Run on the GPU machine: python -m pytest tests/gpu/test_cpu_share_gpu.py -m gpu -q"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.generation.runner import execute  # noqa: E402
from executor.report.verify import standard_step_logits  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from tests.gpu.test_executor_gpu import ids_of, model_on  # noqa: E402
from tests.references import half_precision_errors  # noqa: E402

pytestmark = pytest.mark.gpu
NEW_TOKENS = 6
PROMPT = 300


def run_share(model, share: float, *, group: int, resident: int):
    settings = ExecutionSettings(chunk_size=64, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=PROMPT + NEW_TOKENS, attention_backend="flash", cpu_share=share)
    return execute(model, ids_of(PROMPT), settings, new_tokens=NEW_TOKENS, device="cuda",
                   options=RunOptions(keep_logits=True, sync_debug=True))


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("group,resident", [(1, 0), (2, 5), (4, 0)])
def test_bfloat16_within_reference_error(share, group, resident):
    model16 = model_on("cuda", torch.bfloat16)
    ours = run_share(model16, share, group=group, resident=resident)
    our_error, standard_error = half_precision_errors(ours, model16, ids_of(PROMPT), "cuda", exact_dtype=torch.float32)
    assert our_error <= 2.0 * standard_error + 2e-2, (our_error, standard_error)
    decode = ours.counters["decode"]
    assert (decode.host_attention_bytes > 0) == (share > 0)
    if share == 1.0:
        assert decode.h2d_bytes == 0


@pytest.mark.parametrize("wait", ["stream", "join"])
@pytest.mark.parametrize("share", [0.5, 1.0])
def test_float32_identical_tokens(share, wait, monkeypatch):
    """Both hand-offs: the GPU waiting on the worker's counter (runtime/stream_wait.py) and the host join."""
    monkeypatch.setenv("HEADPLAN_HOST_WAIT", "join" if wait == "join" else "stream")
    model = model_on("cuda", torch.float32)
    ours = run_share(model, share, group=2, resident=3)
    reference = standard_step_logits(model, ids_of(PROMPT), ours.generated_token_ids, "cuda")
    assert ours.generated_token_ids == reference.argmax(-1).tolist()
    assert (ours.step_logits - reference).abs().max().item() < 1e-3
    decode = ours.counters["decode"]
    layers = model.config.num_hidden_layers
    assert decode.host_attention_calls == layers * (NEW_TOKENS - 1)   # every job's timeline counted
    assert decode.host_attention_s > 0
    if wait == "stream":
        assert decode.host_join_wait_s == 0.0


def test_stream_waits_for_the_host_counter():
    """A stream queued behind counter.wait(n) does not run until a host thread publishes n."""
    import threading
    import time

    from executor.runtime.stream_wait import HostCounter

    counter = HostCounter.create()
    assert counter is not None, "cuStreamWaitValue32 unavailable on this GPU machine"
    stream, done = torch.cuda.Stream(), torch.cuda.Event()
    x = torch.ones(1024, device="cuda")
    with torch.cuda.stream(stream):
        counter.wait(stream, 7)
        y = x * 2
        done.record(stream)
    time.sleep(0.05)
    assert not done.query()
    counter.publish(6)
    time.sleep(0.05)
    assert not done.query()
    threading.Thread(target=counter.publish, args=(7,)).start()
    done.synchronize()
    assert y.sum().item() == 2048


@pytest.mark.parametrize("wait", ["stream", "join"])
@pytest.mark.parametrize("new_share", [0.0, 0.2])
def test_share_rebalanced_during_decode_on_cuda(new_share, wait, monkeypatch):
    """--rebalance-cpu-share's path on CUDA: after 2 tokens the host share is rebuilt at another F (the devices
    synchronised, the old counter released) and decode goes on: float32 tokens identical to the standard forward."""
    from types import SimpleNamespace

    from executor.settings import ShareRebalancing

    monkeypatch.setenv("HEADPLAN_HOST_WAIT", "join" if wait == "join" else "stream")
    model = model_on("cuda", torch.float32)
    settings = ExecutionSettings(chunk_size=64, heads_per_group=2, resident_kv_heads=3,
                                 capacity_tokens=PROMPT + NEW_TOKENS, attention_backend="flash", cpu_share=0.5)
    rebalancing = ShareRebalancing(choose=lambda measured: SimpleNamespace(
        share=new_share, reason="test", planned_cpu_bytes_per_s=measured), after_tokens=2)
    ours = execute(model, ids_of(PROMPT), settings, new_tokens=NEW_TOKENS, device="cuda",
                   options=RunOptions(keep_logits=True, share_rebalancing=rebalancing))
    reference = standard_step_logits(model, ids_of(PROMPT), ours.generated_token_ids, "cuda")
    assert ours.generated_token_ids == reference.argmax(-1).tolist()
    assert (ours.step_logits - reference).abs().max().item() < 1e-3
    assert ours.share_rebalance["share"] == new_share and ours.host_share_hand_off == wait
