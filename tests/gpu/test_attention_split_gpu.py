"""cudnn-split attention on CUDA in bf16: against the flash kernel's lower-right causal attention on the same
inputs and against a float64 reference; the number of distinct cuDNN shapes over a simulated prefill.

The tolerance is derived from the reference: the split path may be at most twice as far from float64 as the
flash kernel is, plus one bf16 rounding step of the output (both round their output to bf16 once).
"""

from __future__ import annotations

import math

import pytest
import torch

from executor.attention.split import (attend_chunk_split, cudnn_available, cudnn_key_lengths, cudnn_shapes_seen,
                                     partial_cudnn, partial_flash)

pytestmark = pytest.mark.gpu

HEAD_DIM = 128
BF16_STEP = 2.0 ** -8  # relative spacing of bf16 values near 1


def needs_cudnn():
    if not cudnn_available():
        pytest.skip("cuDNN attention not usable on this GPU")


def make_inputs(query_heads, kv_heads, past, chunk, seed=0, capacity_extra=64):
    """q [1, Hq, c, d]; k, v [1, G, s + c, d] sliced from a larger bf16 buffer, as the executor's are."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, query_heads, chunk, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    buffer = torch.randn(2, 1, kv_heads, past + chunk + capacity_extra, HEAD_DIM, device="cuda",
                         generator=gen).bfloat16()
    return q, buffer[0, :, :, :past + chunk], buffer[1, :, :, :past + chunk]


def reference(q, k, v, scale):
    """float64 lower-right causal GQA attention, explicit scores."""
    ratio = q.shape[1] // k.shape[1]
    chunk, keys = q.shape[2], k.shape[2]
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double().repeat_interleave(ratio, 1)) * scale
    allowed = torch.arange(keys, device=q.device)[None, :] <= (
        torch.arange(chunk, device=q.device)[:, None] + keys - chunk)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.double().repeat_interleave(ratio, 1))


CASES = [  # (past s, chunk c, block B)
    (0, 256, 512),  # empty past
    (300, 256, 512),  # past shorter than one block
    (2048, 256, 512),  # blocks divide the past
    (2500, 256, 512),  # do not divide: 4 blocks + tail 452
    (7 * 1024 + 100, 512, 1024),  # 7 blocks = 4B + 2B + 1B, tail 100
    (3000, 1, 512),  # decode shape
]


@pytest.mark.parametrize("past,chunk,block", CASES)
@pytest.mark.parametrize("kv_heads,ratio", [(1, 4), (2, 4), (1, 7), (2, 1)])
@pytest.mark.parametrize("chunk_backend", ["flash", "cudnn"])
def test_cudnn_split_matches_flash_and_reference(past, chunk, block, kv_heads, ratio, chunk_backend):
    needs_cudnn()
    q, k, v = make_inputs(kv_heads * ratio, kv_heads, past, chunk)
    scale = 1 / math.sqrt(HEAD_DIM)
    ref = reference(q, k, v, scale)
    flash = partial_flash(q, k, v, scale=scale, causal=True)[0]
    split = attend_chunk_split(q, k, v, scale=scale, past_block_tokens=block, chunk_backend=chunk_backend)
    assert split.shape == q.shape and split.dtype == torch.bfloat16
    flash_err = (flash.double() - ref).abs().max().item()
    split_err = (split.double() - ref).abs().max().item()
    tol = 2 * flash_err + BF16_STEP * ref.abs().max().item()
    assert split_err <= tol, (split_err, flash_err)
    assert (split.double() - flash.double()).abs().max().item() <= tol + flash_err


def test_partial_lses_agree_between_kernels():
    """cuDNN's and flash's log-sum-exp use the same convention (natural log of the scaled scores)."""
    needs_cudnn()
    q, k, v = make_inputs(8, 2, 1024, 128, seed=1)
    past_k, past_v = k[:, :, :1024], v[:, :, :1024]
    out_c, lse_c = partial_cudnn(q, past_k, past_v, scale=0.1, causal=False)
    out_f, lse_f = partial_flash(q, past_k, past_v, scale=0.1, causal=False)
    assert lse_c.shape == lse_f.shape == (1, 8, 128) and lse_c.dtype == torch.float32
    assert (lse_c - lse_f).abs().max().item() < 1e-3
    assert (out_c.float() - out_f.float()).abs().max().item() < 1e-2


def test_distinct_cudnn_shapes_bounded_over_a_prefill():
    """A simulated prefill of many chunks adds at most floor(log2(s_max / B)) + 1 past shapes, plus one for
    the shorter last chunk's row count per key length it uses."""
    needs_cudnn()
    context, chunk, block = 20 * 1024 + 512, 1024, 512
    # a capacity no other test uses, so every shape of this run is new to the process
    q_all, k, v = make_inputs(4, 1, context - 1024, 1024, seed=2, capacity_extra=777)
    before = cudnn_shapes_seen()
    for past in range(0, context, chunk):
        chunk_tokens = min(chunk, context - past)
        q = q_all[:, :, :chunk_tokens]
        attend_chunk_split(q, k[:, :, :past + chunk_tokens], v[:, :, :past + chunk_tokens], scale=0.1,
                           past_block_tokens=block)
    torch.cuda.synchronize()
    new_shapes = cudnn_shapes_seen() - before
    key_lengths = cudnn_key_lengths(context, chunk, block)
    assert len(key_lengths) <= int(math.log2((context - 1) // block)) + 1
    assert len(new_shapes) <= 2 * len(key_lengths)
    assert {shape[1][2] for shape in new_shapes} <= key_lengths


@pytest.mark.parametrize("past,chunk,chunk_backend", [(6144, 2048, "flash"), (14336, 2048, "cudnn"),
                                                      (30720, 1024, "flash"), (0, 2048, "cudnn")])
def test_fused_merge_matches_eager_merge(past, chunk, chunk_backend):
    """The one-pass Triton merge against the eager float32 accumulator on the same parts: equal to bf16
    rounding of the output."""
    from executor.attention import merge_triton as lse_merge_triton

    needs_cudnn()
    if not lse_merge_triton.available():
        pytest.skip("Triton not available")
    q, k, v = make_inputs(16, 4, past, chunk, seed=3)
    scale = HEAD_DIM ** -0.5
    fused = attend_chunk_split(q, k, v, scale=scale, chunk_backend=chunk_backend, fused_merge=True).float()
    eager = attend_chunk_split(q, k, v, scale=scale, chunk_backend=chunk_backend, fused_merge=False).float()
    assert (fused - eager).abs().max().item() <= 2 * BF16_STEP * eager.abs().max().item()


def test_warm_up_merge_compiles_each_part_count_of_the_prefill():
    """warm_up_merge runs the one-pass merge once per part count a 128K prefill in 8K chunks merges (2 to 5:
    popcount of the past's 2K blocks plus the chunk part)."""
    from executor.attention import merge_triton as lse_merge_triton
    from executor.attention.split import warm_up_merge

    needs_cudnn()
    if not lse_merge_triton.available():
        pytest.skip("Triton not available")
    counts = warm_up_merge(torch.device("cuda"), torch.bfloat16, HEAD_DIM, 131072, 8192)
    assert counts == [2, 3, 4, 5]


def test_warm_up_cudnn_makes_the_first_chunks_calls():
    """warm_up_cudnn calls cuDNN once non-causal (chunk against one past block) and, for chunks of 8K and more,
    square causal in both query layouts (contiguous, and transformers' [1, c, H_q, d] seen as [1, H_q, c, d]); the
    shapes land in cudnn_shapes_seen."""
    from executor.attention.split import cudnn_shapes_seen, warm_up_cudnn

    needs_cudnn()
    before = cudnn_shapes_seen()
    assert warm_up_cudnn(torch.device("cuda"), torch.bfloat16, head_dim=HEAD_DIM, query_heads_per_kv=4, kv_heads=2,
                         chunk_tokens=8192) == 3
    new = cudnn_shapes_seen() - before
    assert {shape[3] for shape in new} <= {False, True} and len(new) <= 2
    assert warm_up_cudnn(torch.device("cuda"), torch.bfloat16, head_dim=HEAD_DIM, query_heads_per_kv=4, kv_heads=2,
                         chunk_tokens=4096) == 1
