"""The split-and-merge attention path on CPU (math backend) against a float64 reference.

Covers: past blocks that divide and do not divide the past, an empty past, a past shorter than one block,
GQA ratios 1/4/7, 1 and 2 KV heads, c = 1 (decode shape), strided buffers; the log-sum-exp merge with empty
parts; the block cut (spans, bounded cuDNN key lengths). The tolerance is derived from the reference: the
split path may be at most a few times as far from float64 as the unsplit float32 path is.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from executor.attention import split as attention_split
from executor.attention.lse import LseAccumulator, merge_by_lse, pack_query_rows, partial_math, unpack_query_rows
from executor.attention.split import (AttentionPart, attend_chunk_split, cudnn_key_lengths, past_block_spans,
                                     split_parts)

EPS32 = torch.finfo(torch.float32).eps


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """float64 lower-right causal GQA attention through torch's SDPA with an explicit boolean mask."""
    ratio = q.shape[1] // k.shape[1]
    chunk, keys = q.shape[2], k.shape[2]
    allowed = torch.arange(keys)[None, :] <= torch.arange(chunk)[:, None] + (keys - chunk)
    return F.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(ratio, 1), v.double().repeat_interleave(ratio, 1),
        attn_mask=allowed, scale=scale)


def make_inputs(query_heads: int, kv_heads: int, past: int, chunk: int, head_dim: int = 16, seed: int = 0,
                capacity_extra: int = 0):
    """q [1, Hq, c, d]; k, v [1, G, s + c, d] as slices of a larger buffer (as the executor's are)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, query_heads, chunk, head_dim, generator=gen)
    buffer = torch.randn(2, 1, kv_heads, past + chunk + capacity_extra, head_dim, generator=gen)
    k, v = buffer[0, :, :, :past + chunk], buffer[1, :, :, :past + chunk]
    return q, k, v


def tolerance(q, k, v, scale, ref) -> float:
    """A few times the unsplit float32 path's distance from float64, floored at a few float32 ulps."""
    plain = partial_math(q, k, v, scale=scale, causal=True)[0]
    plain_err = (plain.double() - ref).abs().max().item()
    return max(4 * plain_err, 16 * EPS32 * ref.abs().max().item())


CASES = [  # (past s, chunk c, block B)
    (0, 8, 4),  # empty past
    (3, 8, 4),  # past shorter than one block: all of it is tail
    (16, 8, 4),  # blocks divide the past: 4 blocks = one cuDNN part of 4B
    (19, 8, 4),  # do not divide: 4 blocks + tail 3
    (37, 5, 4),  # 9 blocks = 8B + 1B, tail 1, chunk not a multiple of B
    (13, 1, 4),  # decode shape c = 1
    (0, 1, 4),
    (64, 16, 16),
]


@pytest.mark.parametrize("past,chunk,block", CASES)
@pytest.mark.parametrize("kv_heads,ratio", [(1, 1), (1, 4), (2, 4), (1, 7), (2, 7)])
def test_split_matches_float64_reference(past, chunk, block, kv_heads, ratio):
    q, k, v = make_inputs(kv_heads * ratio, kv_heads, past, chunk, capacity_extra=5)
    scale = 1 / math.sqrt(q.shape[-1])
    ref = reference(q, k, v, scale)
    out = attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block, past_backend="math",
                             chunk_backend="math")
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v, scale, ref)


@pytest.mark.parametrize("past,chunk,block", CASES)
def test_cudnn_chunk_branch_on_math_kernels(monkeypatch, past, chunk, block):
    """chunk_backend='cudnn' cuts differently (tail non-causal + square causal chunk): run that cut with
    every kernel replaced by the math one, so the cut and merge are checked without a GPU."""
    monkeypatch.setattr(attention_split, "_PARTIAL_BY_BACKEND",
                        {"cudnn": partial_math, "flash": partial_math, "math": partial_math})
    monkeypatch.setattr(attention_split, "_check_inputs", lambda *args: None)
    q, k, v = make_inputs(8, 2, past, chunk, seed=1)
    scale = 0.3
    ref = reference(q, k, v, scale)
    out = attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block, past_backend="cudnn",
                             chunk_backend="cudnn")
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v, scale, ref)


def test_noncontiguous_query_and_bf16():
    q, k, v = make_inputs(4, 1, 21, 6, seed=2)
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)  # [1, H, c, d] view of a [1, c, H, d] buffer
    scale = 0.25
    ref = reference(q, k, v, scale)
    out = attend_chunk_split(q_strided, k, v, scale=scale, past_block_tokens=4, past_backend="math",
                             chunk_backend="math")
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v, scale, ref)
    out_bf16 = attend_chunk_split(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=scale, past_block_tokens=4,
                                  past_backend="math", chunk_backend="math")
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.double() - ref).abs().max().item() < 0.05  # bf16 inputs: ~2^-8 relative


def test_matches_attend_chunk_math():
    attention_kernels = pytest.importorskip("executor.attention.kernels")
    q, k, v = make_inputs(8, 2, 45, 7, seed=3)
    plain = attention_kernels.attend_chunk(q, k, v, scale=0.2, backend="math")
    split = attend_chunk_split(q, k, v, scale=0.2, past_block_tokens=8, past_backend="math",
                               chunk_backend="math")
    ref = reference(q, k, v, 0.2)
    assert (split.double() - plain.double()).abs().max().item() <= 2 * tolerance(q, k, v, 0.2, ref)


def test_gpu_backends_refused_on_cpu():
    q, k, v = make_inputs(4, 1, 8, 4)
    with pytest.raises(ValueError, match="CUDA"):
        attend_chunk_split(q, k, v, scale=0.1)


def test_merge_by_lse_with_empty_parts():
    q, k, v = make_inputs(4, 2, 30, 5, seed=4)
    keys = k.shape[2]
    ref_out, ref_lse = partial_math(q.double(), k.double(), v.double(), scale=0.5, causal=False)
    cuts = [0, 7, 7, 19, keys]  # one empty part
    outs, lses = [], []
    for start, end in zip(cuts[:-1], cuts[1:]):
        if end == start:
            outs.append(torch.zeros_like(q))
            lses.append(torch.full(q.shape[:3], float("-inf")))
        else:
            out, lse = partial_math(q, k[:, :, start:end], v[:, :, start:end], scale=0.5, causal=False)
            outs.append(out)
            lses.append(lse)
    merged, merged_lse = merge_by_lse(outs, lses)
    assert merged.dtype == torch.float32
    assert (merged.double() - ref_out).abs().max().item() < 1e-5
    assert (merged_lse.double() - ref_lse).abs().max().item() < 1e-5
    accumulator = LseAccumulator()
    for out, lse in zip(outs, lses):
        accumulator.add(out, lse)
    running, running_lse = accumulator.result()
    assert (running - merged).abs().max().item() < 1e-6
    assert (running_lse - merged_lse).abs().max().item() < 1e-6


def test_merge_of_rows_with_no_keys_is_zero_not_nan():
    zeros = torch.zeros(1, 2, 3, 4)
    no_keys = torch.full((1, 2, 3), float("-inf"))
    out, lse = merge_by_lse([zeros, zeros], [no_keys, no_keys])
    assert torch.equal(out, zeros) and torch.isneginf(lse).all()
    accumulator = LseAccumulator()
    accumulator.add(zeros, no_keys)
    accumulator.add(zeros, no_keys)
    assert torch.equal(accumulator.result()[0], zeros)
    # lower-right causal with fewer keys than queries: the first queries see nothing
    q, k, v = make_inputs(2, 1, 0, 4)
    out, lse = partial_math(q, k[:, :, :2], v[:, :, :2], scale=1.0, causal=True)
    assert torch.isneginf(lse[:, :, :2]).all() and torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    assert torch.isfinite(out).all()


def test_pack_unpack_round_trip():
    q = torch.randn(1, 8, 5, 3)
    packed = pack_query_rows(q, kv_heads=2)
    assert packed.shape == (1, 2, 20, 3)
    assert torch.equal(packed[0, 1, 5:10], q[0, 5])  # query head 5 = KV head 1, row block 1
    assert torch.equal(unpack_query_rows(packed, 8), q)
    lse = torch.randn(1, 2, 20)
    assert torch.equal(unpack_query_rows(lse.unsqueeze(-1), 8), unpack_query_rows(lse, 8))


@pytest.mark.parametrize("past,block", [(0, 4), (3, 4), (4, 4), (37, 4), (1000, 7), (524288, 2048)])
def test_block_spans_cover_full_blocks_in_powers_of_two(past, block):
    spans = past_block_spans(past, block)
    full = past // block * block
    assert [s for s, _ in spans] == ([0] + [e for _, e in spans[:-1]] if spans else [])  # contiguous from 0
    assert (spans[-1][1] if spans else 0) == full
    lengths = [e - s for s, e in spans]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(lengths)
    assert all((n // block) & (n // block - 1) == 0 and n % block == 0 for n in lengths)


@pytest.mark.parametrize("chunk_backend", ["flash", "cudnn", "math"])
def test_split_parts_cover_the_keys_once(chunk_backend):
    past_backend = "math" if chunk_backend == "math" else "cudnn"
    for past in (0, 3, 8, 11, 100):
        parts = split_parts(past, 5, block_tokens=4, past_backend=past_backend, chunk_backend=chunk_backend)
        assert parts[0].key_start == 0 and parts[-1].key_end == past + 5
        assert all(a.key_end == b.key_start for a, b in zip(parts, parts[1:]))
        assert parts[-1].causal and not any(p.causal for p in parts[:-1])
        cudnn_lengths = {p.key_end - p.key_start for p in parts if p.backend == "cudnn" and not p.causal}
        assert all(n % 4 == 0 for n in cudnn_lengths)
    assert split_parts(8, 5, block_tokens=4, past_backend="cudnn", chunk_backend="flash") == [
        AttentionPart("cudnn", 0, 8, False), AttentionPart("flash", 8, 13, True)]


def test_cudnn_key_lengths_bounded_over_a_long_prefill():
    for context, chunk, block in ((524288, 10240, 2048), (524288, 16384, 2048), (131072, 8192, 1024),
                                  (1048576, 10240, 4096)):
        lengths = cudnn_key_lengths(context, chunk, block)
        bound = int(math.log2((context - chunk) // block)) + 1
        assert len(lengths) <= bound, (context, chunk, block, sorted(lengths))


def test_chunk_part_rule_and_the_planner_agree():
    """The executor's split knobs default to the planner's own constants (imported, not copied): the chunk-size rule
    for the cuDNN chunk part and the past block; an override is a typed option, refused when misspelt."""
    from executor.settings import ExecutionSettings, SplitOptions
    from planner.host_time import PAST_BLOCK_TOKENS
    from planner.host_time import CUDNN_SPLIT_CHUNK_MIN_TOKENS

    default = SplitOptions()
    assert default.past_block_tokens == PAST_BLOCK_TOKENS
    assert default.chunk_backend is None and default.fused_merge
    assert default.chunk_backend_for(CUDNN_SPLIT_CHUNK_MIN_TOKENS) == "cudnn"
    assert default.chunk_backend_for(CUDNN_SPLIT_CHUNK_MIN_TOKENS - 1024) == "flash"
    assert SplitOptions(chunk_backend="flash").chunk_backend_for(CUDNN_SPLIT_CHUNK_MIN_TOKENS) == "flash"
    assert ExecutionSettings(chunk_size=8, heads_per_group=1, resident_kv_heads=0, capacity_tokens=8).split == default
    with pytest.raises(ValueError, match="chunk_backend"):
        SplitOptions(chunk_backend="cudnn-split")


def test_fused_merge_kernel_in_triton_interpreter():
    """The Triton merge kernel (executor/attention/merge_triton.py), run by Triton's CPU interpreter in a subprocess
    (the interpreter must be chosen before Triton is imported): strided and contiguous parts, a part with no
    keys on a row, 1 to 8 parts, against the eager float32 merge."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from executor.attention import merge_triton as m
        from executor.attention.lse import merge_by_lse
        torch.manual_seed(0)
        H, c, d = 3, 5, 16
        for P in (1, 2, 3, 8):
            outs, lses = [], []
            for p in range(P):
                base = torch.randn(1, c, H, d, dtype=torch.bfloat16)
                o = base.transpose(1, 2) if p % 2 else base.transpose(1, 2).contiguous()
                lse = torch.randn(1, H, c) * 3
                if p == 1:
                    lse[0, 0, 2] = float("-inf")
                    o = o.clone()
                    o[0, 0, 2] = 0
                outs.append(o)
                lses.append(lse)
            got = m.merge(outs, lses, torch.bfloat16).float()
            ref = merge_by_lse(outs, lses)[0]
            assert torch.isfinite(got).all()
            assert (got - ref).abs().max().item() <= 2 ** -7 * ref.abs().max().item(), P
            layer_out = torch.full((1, c, H + 2, d), 7.0, dtype=torch.bfloat16)   # [1, c, H_q, d] output
            dest = layer_out.transpose(1, 2)[:, 1:1 + H]                          # a strided head slice
            m.merge_into(dest, outs, lses)
            assert torch.equal(dest.float(), got), P
            assert (layer_out[:, :, 0] == 7).all() and (layer_out[:, :, H + 1] == 7).all(), P
        # a row where no part has keys: output 0, not NaN
        outs = [torch.zeros(1, H, c, d, dtype=torch.bfloat16) for _ in range(2)]
        lses = [torch.full((1, H, c), float("-inf")) for _ in range(2)]
        assert torch.equal(m.merge(outs, lses, torch.bfloat16), torch.zeros(1, H, c, d, dtype=torch.bfloat16))
        print("ok")
    """)
    import os
    from pathlib import Path

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_planner_counts_the_parts_the_split_holds():
    """planner/memory_model.split_held_parts against the executor's own cut (split_parts) over whole prefills:
    parts held = the most parts of any chunk's call (eager merge beyond the one-pass limit) + the packed query."""
    from executor.attention import merge_triton as lse_merge_triton
    from executor.settings import SplitOptions
    from planner.host_time import CUDNN_SPLIT_CHUNK_MIN_TOKENS
    from planner.memory_model import EAGER_MERGE_HELD_PARTS, FUSED_MERGE_MAX_PARTS, split_held_parts

    assert FUSED_MERGE_MAX_PARTS == lse_merge_triton.MAX_PARTS
    for context, chunk in ((131072, 8192), (131072, 16384), (524288, 8192), (1 << 20, 1024), (32768, 32768),
                           (300_000, 9216), (70_000, 3072)):
        chunk_backend = "cudnn" if chunk >= CUDNN_SPLIT_CHUNK_MIN_TOKENS else "flash"
        most = 0
        for past in range(0, context, chunk):
            parts = len(split_parts(past, min(chunk, context - past),
                                    block_tokens=SplitOptions().past_block_tokens,
                                    past_backend="cudnn", chunk_backend=chunk_backend))
            if parts > 1:
                most = max(most, (parts if parts <= FUSED_MERGE_MAX_PARTS else EAGER_MERGE_HELD_PARTS) + 1)
        assert split_held_parts(context, chunk) == most, (context, chunk)


def test_merge_into_refuses_bad_arguments_before_any_kernel():
    """merge_triton.merge_into checks its inputs first (no Triton needed to see these errors)."""
    from executor.attention import merge_triton as m

    outs = [torch.zeros(1, 2, 4, 16) for _ in range(2)]
    lses = [torch.zeros(1, 2, 4) for _ in range(2)]
    with pytest.raises(ValueError, match="share one shape"):
        m.merge_into(torch.zeros(1, 2, 5, 16), outs, lses)
    with pytest.raises(ValueError, match="1..8 parts"):
        m.merge_into(torch.zeros(1, 2, 4, 16), outs * 5, lses * 5)
    with pytest.raises(ValueError, match="power of two"):
        m.merge_into(torch.zeros(1, 2, 4, 12), [torch.zeros(1, 2, 4, 12)] * 2, lses)


def test_a_merge_kernel_that_cannot_build_falls_back_to_the_eager_merge(monkeypatch):
    """If the one-pass merge fails for a reason other than bad arguments (a Triton that imports but cannot build),
    the call still returns the exact result through the eager merge, and the merge stays off for the process."""
    from executor.attention import merge_triton as lse_merge_triton

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(attention_split, "_use_fused_merge", lambda q, n: lse_merge_triton.available())
    monkeypatch.setattr(lse_merge_triton, "_importable", lambda: True)
    monkeypatch.setattr(lse_merge_triton, "merge_into", broken)
    monkeypatch.setattr(lse_merge_triton, "_disabled", [])
    q, k, v = make_inputs(8, 2, 40, 8, seed=5)
    ref = reference(q, k, v, 0.3)
    with pytest.warns(RuntimeWarning, match="eager merge"):
        out = attend_chunk_split(q, k, v, scale=0.3, past_block_tokens=8, past_backend="math", chunk_backend="math")
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v, 0.3, ref)
    assert not lse_merge_triton.available()
