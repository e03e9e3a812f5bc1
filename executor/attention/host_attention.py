"""Partial decode attention on the CPU over K, V rows that live in the host store, with their log-sum-exp.

One decode query per query head; GQA folded into the query length (the r query heads of a KV head are r rows of
one "head" of the kernel), and the keys cut into blocks so that every CPU thread has work (aten's CPU flash kernel
parallelises over batch x heads x query blocks only; one query block per head would leave threads idle):

    query_rows   [H, r, d]     model dtype; the r query heads of each of H KV heads
    keys, values [H, S, d]     views of host-store rows [0, S) of H heads (row stride T d: not copied, not cast)
    blocks       n (planner/host_share.py key_blocks): at most ceil(S / MIN_BLOCK_TOKENS) and ceil(8 T / H), chosen so
                 that the H n tasks split evenly over the T threads (ATen gives each thread ceil(H n / T) of
                 them), each of S // n keys (a view [H, n, S // n, d] of the rows); the remainder
                 S - n (S // n) < n keys in one more call
    per block    out_b [H, n, r, d] (model dtype, float32 work inside the kernel), lse_b [H, n, r] float32
    merged       lse = logsumexp_b(lse_b),  out = sum_b exp(lse_b - lse) out_b      float32 (attention/lse.py)
    returns      out [H, r, d] float32, lse [H, r] float32 (natural log); S = 0: out 0, lse -inf

The kernel is ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *,
attn_mask, scale) -> (output [B, H, L, d], logsumexp [B, H, L] float32)`` (torch 2.11 through 2.13): bf16 or
float32 in, float32 accumulation, no copy of strided K, V. Measured on a 2-core development VM (2026-12-01,
torch 2.13): 12 GB/s of bf16 KV and 23 GB/s of float32 at 128K keys x 8 heads, against 1.3 GB/s for a plain bf16
matmul + softmax; a sum over the same bytes read 44 GB/s.
Leaves out: the thread that runs it (engine/host_share.py), causal masks (decode sees every past key).
"""

from __future__ import annotations

import torch

from planner.host_share import MIN_BLOCK_TOKENS, key_blocks  # noqa: F401 - the planner prices the same blocks


def _flash_cpu(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float):
    """q [H, n, r, d] (may be expanded), k, v [H, n, L, d] -> (out [H, n, r, d], lse [H, n, r] float32)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, keys, values, 0.0, False,
                                                                          scale=scale)
    return out, lse


def host_partial_attention(query_rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, scale: float,
                           threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of query_rows [H, r, d] over keys, values [H, S, d] (host rows, any row stride); see the module
    docstring. Returns (out [H, r, d] float32, lse [H, r] float32)."""
    heads, ratio, head_dim = query_rows.shape
    key_tokens = keys.shape[1]
    if keys.shape != values.shape or keys.shape[0] != heads or keys.shape[2] != head_dim:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must be [H={heads}, S, "
                         f"d={head_dim}]")
    if key_tokens == 0:
        return (torch.zeros((heads, ratio, head_dim), dtype=torch.float32),
                torch.full((heads, ratio), float("-inf"), dtype=torch.float32))
    blocks = key_blocks(key_tokens, heads, threads or torch.get_num_threads())
    block_tokens = key_tokens // blocks
    main_tokens = blocks * block_tokens
    outs, lses = [], []
    query = query_rows.unsqueeze(1)
    main_keys = keys[:, :main_tokens].unflatten(1, (blocks, block_tokens))    # views: rows stay where they are
    main_values = values[:, :main_tokens].unflatten(1, (blocks, block_tokens))
    out, lse = _flash_cpu(query.expand(heads, blocks, ratio, head_dim), main_keys, main_values, scale)
    outs.append(out)
    lses.append(lse)
    if main_tokens < key_tokens:
        out, lse = _flash_cpu(query, keys[:, main_tokens:].unsqueeze(1), values[:, main_tokens:].unsqueeze(1),
                              scale)
        outs.append(out)
        lses.append(lse)
    block_out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]          # [H, n', r, d]
    block_lse = torch.cat(lses, dim=1) if len(lses) > 1 else lses[0]          # [H, n', r]
    total_lse = torch.logsumexp(block_lse, dim=1)                               # [H, r]
    weights = torch.exp(block_lse - total_lse.unsqueeze(1)).unsqueeze(-1)      # [H, n', r, 1], sum to 1
    merged = (block_out.float() * weights).sum(dim=1)
    return merged, total_lse
