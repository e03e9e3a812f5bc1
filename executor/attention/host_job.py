"""The host share's per-layer job as ONE TorchScript call: the kernel over the key blocks, their log-sum-exp merge and
the writes of out and lse into the pinned hand-off buffers, without the GIL between its ATen ops.

Why one scripted call: the job runs on the host share's worker thread (engine/host_share.py) while the main thread
issues the layer's GPU share (~1 ms of Python that gives the GIL up only for an instant at each ATen call). Called
from eager Python, each of the job's ~15 ATen calls (slices, unflatten, expand, the flash call(s), cat, logsumexp,
exp, mul, sum, copy_) must re-take the GIL on its return, and the busy main thread wins it back again and again (the
GIL convoy). The TorchScript interpreter releases the GIL once for the whole call. On the 2-core development VM
(2026-12-01, torch 2.13, 8 heads x 16K keys, one kernel thread beside a main thread in a pure-Python loop): the eager
job took 52 ms where alone it takes 11 ms; the scripted job 21.6 ms, bit-identical output. On the H200
(2026-12-01, Llama-3-8B, 24 GB) the run's kernel seconds per layer had fitted 1.4 ms + bytes / 40 GB/s; with this
job, at 512K and F 0.45 in clean processes, the scripted and the eager job (PYTORCH_JIT=0) decoded in 789 and 759 ms
per token, and the kernel started 2.9 ms after the submit with either: no gain measured there, the wait being the
GPU's (docs/cpu-share.md).

    query_rows   [H, r, d]      model dtype (the pinned query buffer's view)
    keys, values [H, S, d]      host-store rows [0, S) (row stride T d: views, not copied, not cast)
    blocks       n = key_blocks(S, H, threads) (planner/host_share.py), computed on the main thread; 0 when S = 0
    out_rows     [H r, d] float32, written: sum_b exp(lse_b - lse) out_b     (S = 0: zeros)
    lse_rows     [H r] float32, written: logsumexp_b lse_b (natural log)      (S = 0: -inf)
The arithmetic is attention/host_attention.py host_partial_attention's, op for op (the reference; tests/cpu prove
the two bit-identical). Where TorchScript is unavailable (PYTORCH_JIT=0, a build without it) the same function
runs as eager Python, said once by a RuntimeWarning.
Leaves out: the event wait and the timing (engine/host_share.py), the block choice (planner/host_share.py).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import torch


def _host_job(query_rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, blocks: int, scale: float,
              out_rows: torch.Tensor, lse_rows: torch.Tensor) -> None:
    """See the module docstring (TorchScript source: types annotated, no Python-only constructs)."""
    heads, ratio, head_dim = query_rows.shape[0], query_rows.shape[1], query_rows.shape[2]
    key_tokens = keys.shape[1]
    if key_tokens == 0 or blocks <= 0:
        out_rows.zero_()
        lse_rows.fill_(float("-inf"))
        return
    block_tokens = key_tokens // blocks
    main_tokens = blocks * block_tokens
    query = query_rows.unsqueeze(1)                                               # [H, 1, r, d]
    main_keys = keys[:, :main_tokens].unflatten(1, [blocks, block_tokens])       # [H, n, S // n, d] views
    main_values = values[:, :main_tokens].unflatten(1, [blocks, block_tokens])
    block_out, block_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query.expand(heads, blocks, ratio, head_dim), main_keys, main_values, 0.0, False, scale=scale)
    if main_tokens < key_tokens:                                                  # the remainder, one more call
        rest_out, rest_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, keys[:, main_tokens:].unsqueeze(1), values[:, main_tokens:].unsqueeze(1), 0.0, False,
            scale=scale)
        block_out = torch.cat([block_out, rest_out], 1)                          # [H, n + 1, r, d]
        block_lse = torch.cat([block_lse, rest_lse], 1)                          # [H, n + 1, r]
    total_lse = torch.logsumexp(block_lse, 1)                                     # [H, r]
    weights = torch.exp(block_lse - total_lse.unsqueeze(1)).unsqueeze(-1)        # [H, n', r, 1], sum to 1
    out_rows.copy_((block_out.float() * weights).sum(1).reshape(heads * ratio, head_dim))
    lse_rows.copy_(total_lse.reshape(heads * ratio))


class HostJob(NamedTuple):
    run: Callable[..., None]
    """_host_job's signature"""
    scripted: bool
    """True: one TorchScript call (no GIL between its ops); False: the eager fallback"""


def script_host_job() -> tuple[HostJob, str]:
    """(the job, why it is not scripted or ""), scripted now (uncached; host_job() caches it). TorchScript's own deprecation notice (torch 2.13:
    "`torch.jit.script` is deprecated") is about the API, not this run, and is kept out of the CLI's stderr."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(_host_job)
    except Exception as exc:  # noqa: BLE001 - any scripting failure: the eager path is the same arithmetic
        return HostJob(_host_job, False), f"{type(exc).__name__}: {exc}".splitlines()[0]
    if not isinstance(scripted, torch.jit.ScriptFunction):     # PYTORCH_JIT=0 returns the Python function
        return HostJob(_host_job, False), "TorchScript is disabled (PYTORCH_JIT=0)"
    return HostJob(scripted, True), ""


@functools.lru_cache(maxsize=1)
def host_job() -> HostJob:
    """The job every HostShare runs: scripted once per process; the eager fallback is said once."""
    job, why = script_host_job()
    if not job.scripted:
        warnings.warn(f"the CPU share's host job runs as eager Python ({why}); it re-takes the GIL after each of "
                      "its ATen calls, so it runs slower beside the main thread", RuntimeWarning, stacklevel=2)
    return job
