"""Exact merging of partial attentions by log-sum-exp, query-row packing for GQA, and a float32 math
implementation of the partial attentions (the CPU backend of the split path and the tests' oracle).

A partial attention of one query over a key subset P returns

    out_P = sum_{j in P} exp(x_j - lse_P) * v_j,   lse_P = log sum_{j in P} exp(x_j),   x_j = scale * q . k_j

For disjoint parts P_1 .. P_n that cover the keys, one softmax over all keys is the same arithmetic reordered:

    lse = log sum_p exp(lse_p)            (natural log, the convention of both the flash and cuDNN kernels)
    out = sum_p exp(lse_p - lse) * out_p  (weights in [0, 1] that sum to 1: no overflow, float32 is enough)

A part that holds no keys has lse = -inf and weight 0; a query that sees no keys at all gets out = 0 and
lse = -inf (never NaN). Rows whose lse is -inf must hold finite values (zeros): 0 * NaN is NaN.

Leaves out: the GPU kernels and the choice of parts (attention/split.py).
"""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types and float32; float64 stays float64 (tests feed float64 references)."""
    return torch.promote_types(dtype, torch.float32)


def _finite_or_zero(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf replaced by 0, so that exp(lse_p - lse) is exp(-inf) = 0 instead of NaN."""
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)


def merge_by_lse(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attentions over disjoint key sets into the attention over their union. Exact.

    outs: n tensors [1, H, c, d] (any float dtype; rows whose lse is -inf must be finite, e.g. zeros)
    lses: n tensors [1, H, c] (float32, natural log; -inf for a part with no keys)
    returns (out [1, H, c, d] float32 (float64 if the inputs are), lse [1, H, c] same dtype)
    One pass over each part's output: lse = logsumexp_p(lse_p), out = sum_p exp(lse_p - lse) * out_p.
    """
    if not outs or len(outs) != len(lses):
        raise ValueError(f"need as many outputs as lses, at least one; got {len(outs)} and {len(lses)}")
    acc_dtype = accumulation_dtype(torch.promote_types(outs[0].dtype, lses[0].dtype))
    lse_total = torch.logsumexp(torch.stack([lse.to(acc_dtype) for lse in lses]), dim=0)
    lse_safe = _finite_or_zero(lse_total)
    out = None
    for part_out, part_lse in zip(outs, lses):
        weight = torch.exp(part_lse.to(acc_dtype) - lse_safe).unsqueeze(-1)  # [1, H, c, 1]
        if out is None:
            out = torch.mul(part_out, weight).to(acc_dtype)
        else:
            out.addcmul_(part_out, weight)
    return out, lse_total


class LseAccumulator:
    """Running merge: holds one float32 accumulator instead of every part (parts arrive one at a time).

    add(out_p [1, H, c, d], lse_p [1, H, c]) folds a part in:
        lse' = logaddexp(lse, lse_p),  acc' = acc * exp(lse - lse') + out_p * exp(lse_p - lse')
    result() -> (out [1, H, c, d] float32, lse [1, H, c] float32). Same result as merge_by_lse up to
    float32 rounding; costs one extra pass over the accumulator per part (the rescale).
    """

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, part_out: torch.Tensor, part_lse: torch.Tensor) -> None:
        acc_dtype = accumulation_dtype(torch.promote_types(part_out.dtype, part_lse.dtype))
        if self.out is None:
            self.out = part_out.to(acc_dtype, copy=True)
            self.lse = part_lse.to(acc_dtype, copy=True)
            return
        new_lse = torch.logaddexp(self.lse, part_lse.to(acc_dtype))
        new_safe = _finite_or_zero(new_lse)
        keep = torch.exp(self.lse - new_safe).unsqueeze(-1)  # weight of what is already merged
        take = torch.exp(part_lse.to(acc_dtype) - new_safe).unsqueeze(-1)  # weight of the new part
        self.out.mul_(keep).addcmul_(part_out, take)
        self.lse = new_lse

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.out is None:
            raise ValueError("LseAccumulator.result() before any part was added")
        return self.out, self.lse


def pack_query_rows(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Stack each KV head's query heads into rows: q [1, G*r, c, d] -> [1, G, r*c, d].

    Query head j = g*r + i reads KV head g, so its rows land at [g, i*c : (i+1)*c]. Exact for non-causal
    attention only (a causal mask depends on the row's position, which packing changes). Copies when q is
    not contiguous.
    """
    batch, query_heads, chunk_tokens, head_dim = q.shape
    ratio = query_heads // kv_heads
    return q.reshape(batch, kv_heads, ratio * chunk_tokens, head_dim)


def unpack_query_rows(packed: torch.Tensor, query_heads: int) -> torch.Tensor:
    """Inverse of pack_query_rows for outputs [1, G, r*c, d] -> [1, G*r, c, d] and lses [1, G, r*c] or
    [1, G, r*c, 1] -> [1, G*r, c]."""
    batch, kv_heads, rows = packed.shape[:3]
    chunk_tokens = rows * kv_heads // query_heads
    if packed.dim() == 4 and packed.shape[3] == 1:  # cuDNN's lse [B, H, L, 1]
        packed = packed.squeeze(3)
    return packed.reshape(batch, query_heads, chunk_tokens, *packed.shape[3:])


def partial_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                 causal: bool, packed_query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention with explicit scores in float32 (float64 for float64 inputs). Any device.

    q [1, Hq, c, d]; k, v [1, G, n, d] with Hq % G == 0 (query head j reads KV head j // (Hq // G)).
    causal=False: every query sees all n keys (computed on packed rows, the same layout as the cuDNN path;
        ``packed_query``: those rows packed once by the caller).
    causal=True: lower-right aligned, query i sees keys [0, n - c + i]; a query seeing none (n < c) gets
    out 0 and lse -inf.
    returns (out [1, Hq, c, d] in q.dtype, lse [1, Hq, c] in the accumulation dtype)
    """
    query_heads, chunk_tokens = q.shape[1], q.shape[2]
    kv_heads, key_tokens = k.shape[1], k.shape[2]
    compute = accumulation_dtype(q.dtype)
    if not causal:
        rows = (packed_query if packed_query is not None else pack_query_rows(q, kv_heads)).to(compute)
        scores = torch.einsum("bgqd,bgkd->bgqk", rows, k.to(compute)) * scale
    else:
        ratio = query_heads // kv_heads
        grouped = q.to(compute).reshape(1, kv_heads, ratio * chunk_tokens, q.shape[3])
        scores = torch.einsum("bgqd,bgkd->bgqk", grouped, k.to(compute)) * scale
        # row r*c + i is query i of its head: it sees key j iff j <= (n - c) + i
        query_pos = torch.arange(chunk_tokens, device=q.device).repeat(ratio) + (key_tokens - chunk_tokens)
        key_pos = torch.arange(key_tokens, device=q.device)
        scores = scores.masked_fill(key_pos[None, :] > query_pos[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [1, G, r*c]
    probs = torch.exp(scores - _finite_or_zero(lse).unsqueeze(-1))  # rows with no keys: all zeros
    out = torch.einsum("bgqk,bgkd->bgqd", probs, v.to(compute))
    return unpack_query_rows(out, query_heads).to(q.dtype), unpack_query_rows(lse, query_heads)
