"""Attention with a score modification (Gemma-2's logit soft-cap) and a sliding window, on PyTorch's
FlexAttention, with the log-sum-exp for merging.

    scores  x_ij = scale * q_i . k_j
    softcap x_ij -> cap * tanh(x_ij / cap)          (``softcap``: Gemma-2's attn_logit_softcapping, 50)
    mask    query i of the chunk (position p_i = S - c + i over keys [0, S)) sees key j iff
            j <= p_i  and, with a window W, j > p_i - W  (transformers' sliding_window_overlay)

``attend_flex(q, k, v, ...)``: q [1, Hq, c, d], k, v [1, G, S, d] (Hq % G == 0, GQA native) -> out
[1, Hq, c, d] in q.dtype. A full-attention call (no window) is cut into the past [0, S - c) (every query sees
every key: no block mask, the soft-cap alone) and the chunk against itself (square causal), merged exactly by
log-sum-exp in float32 (attention/lse.py), so no block mask ever spans the whole context (a block mask over
c x S is c * S / 128^2 blocks, and building it touches every one). A windowed call covers at most W - 1 + c
keys: one call with the windowed causal mask.

On CUDA the kernel is ``torch.compile(flex_attention)`` (compiled once per process; compile's automatic dynamic
shapes keep the past's growing length from recompiling per chunk: the warm-up run's chunks and decode steps
already vary it); block masks are built eagerly (create_block_mask materialises c x S booleans: the chunk part's
c x c, a window's c x (W - 1 + c), never the whole context) and cached per shape; elsewhere the eager flex_attention (a
reference implementation; the CPU CI runs the math backend, and tests this module's arithmetic against it).
Leaves out: dropout, batch > 1, padding masks.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from executor.attention.lse import merge_by_lse


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_fn(device: torch.device):
    if device.type == "cuda":
        return _compiled_flex()
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _softcap_mod(softcap: Optional[float]):
    if softcap is None:
        return None

    def score_mod(score, batch, head, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return score_mod


def _call(q, k, v, *, scale: float, softcap: Optional[float], block_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """One flex_attention call -> (out [1, Hq, c, d], lse [1, Hq, c] float32, natural log)."""
    from torch.nn.attention.flex_attention import AuxRequest

    out, aux = _flex_fn(q.device)(q, k, v, score_mod=_softcap_mod(softcap), block_mask=block_mask, scale=scale,
                                  enable_gqa=q.shape[1] != k.shape[1], return_aux=AuxRequest(lse=True))
    return out, aux.lse.float()


@functools.lru_cache(maxsize=16)
def causal_block_mask(chunk_tokens: int, key_tokens: int, window: Optional[int], device: torch.device):
    """BlockMask of the lower-right causal (and windowed) pattern of c queries over S keys; cached per shape,
    since every layer of a chunk asks for the same one. The offset S - c is a captured tensor, not a Python
    int, so the compiled kernel is not specialised (and recompiled) for each offset."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = torch.tensor(key_tokens - chunk_tokens, device=device)

    def mask_mod(batch, head, q_idx, kv_idx):
        position = q_idx + offset
        keep = kv_idx <= position
        if window is not None:
            keep = keep & (kv_idx > position - window)
        return keep

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=chunk_tokens, KV_LEN=key_tokens, device=device)


def attend_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, softcap: Optional[float],
                window: Optional[int]) -> torch.Tensor:
    """q [1, Hq, c, d] against k, v [1, G, S, d], lower-right causal, soft-capped, windowed -> [1, Hq, c, d]."""
    q = q.contiguous()  # the engine passes a strided slice of the layer's query heads (a copy of c x h x d)
    chunk_tokens, key_tokens = q.shape[2], k.shape[2]
    past_tokens = key_tokens - chunk_tokens
    if window is not None or past_tokens == 0:
        mask = causal_block_mask(chunk_tokens, key_tokens, window, q.device)  # at most W - 1 + c keys
        return _call(q, k, v, scale=scale, softcap=softcap, block_mask=mask)[0]
    past = _call(q, k[:, :, :past_tokens], v[:, :, :past_tokens], scale=scale, softcap=softcap, block_mask=None)
    chunk_mask = causal_block_mask(chunk_tokens, chunk_tokens, None, q.device)
    own = _call(q, k[:, :, past_tokens:], v[:, :, past_tokens:], scale=scale, softcap=softcap,
                block_mask=chunk_mask)
    out, _ = merge_by_lse([past[0], own[0]], [past[1], own[1]])
    return out.to(q.dtype)
