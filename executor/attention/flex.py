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

On CUDA the kernel is the compiled flex_attention, one compiled entry per kind of call (``CALL_KINDS``: the past
without a mask, a masked prefill call, a decode call of one query), each its own code object and so its own Dynamo
cache, the past and decode kinds compiled with dynamic shapes from the first call (the past's length grows every chunk and every decode
step). A call that Dynamo cannot serve from its compiled entries raises instead of running the eager
flex_attention: that reference implementation materialises the c x S scores (float32: 1 GiB for 2 query heads x
1K queries x 128K keys) and runs ~20x slower, which once cost a Gemma-2 run its GPU memory budget unseen
(DYNAMO_SETTINGS). Block masks are built eagerly
(create_block_mask materialises c x S booleans: the chunk part's c x c, a window's c x (W - 1 + c), never the whole
context) and cached per shape; elsewhere (CPU) the eager flex_attention (a reference implementation; the CPU CI
runs the math backend, and tests this module's arithmetic against it). ``compiled_call(kind, backend)`` is that
entry for any compile backend, so a CPU test can count the graphs of the engine's call pattern (backend "eager").
Leaves out: dropout, batch > 1, padding masks.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from executor.attention.lse import merge_by_lse


CALL_KINDS = ("past", "masked", "decode")
"""past: chunk queries over the whole past, no mask; masked: the chunk against itself or a window (block mask);
decode: one query (flex's decoding kernel), no mask"""

RECOMPILE_LIMIT = 32
"""compiled variants per kind; the engine's pattern makes a handful (query heads per call, view or not, window)"""


def _flex_past(q, k, v, score_mod, scale: float, enable_gqa: bool):
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    return flex_attention(q, k, v, score_mod=score_mod, scale=scale, enable_gqa=enable_gqa,
                          return_aux=AuxRequest(lse=True))


def _flex_masked(q, k, v, score_mod, block_mask, scale: float, enable_gqa: bool):
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                          return_aux=AuxRequest(lse=True))


def _flex_decode(q, k, v, score_mod, scale: float, enable_gqa: bool):
    # _flex_past's body on purpose: a code object of its own is a Dynamo cache of its own
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    return flex_attention(q, k, v, score_mod=score_mod, scale=scale, enable_gqa=enable_gqa,
                          return_aux=AuxRequest(lse=True))


_ENTRIES = {"past": _flex_past, "masked": _flex_masked, "decode": _flex_decode}


DYNAMO_SETTINGS = (("recompile_limit", RECOMPILE_LIMIT), ("fail_on_recompile_limit_hit", True),
                   ("specialize_float", True))
"""Dynamo's config around every compiled call (they are read when a call traces or recompiles): raise rather than
fall back to eager when a kind's variants run out, and specialise Python floats (the soft-cap in the score_mod's
closure) as constants: left dynamic they enter the graph as float64 scalar tensors on the CPU, which the CUDA
kernel's lowering refuses (H200, torch 2.11)"""


@contextlib.contextmanager
def _dynamo_settings():
    """DYNAMO_SETTINGS set for the block and restored after, by plain attribute writes (config.patch costs ~10x
    more, and this runs on every call of every layer of every decode step)."""
    config = torch._dynamo.config
    changed = [(name, getattr(config, name)) for name, value in DYNAMO_SETTINGS
               if hasattr(config, name) and getattr(config, name) != value]
    wanted = dict(DYNAMO_SETTINGS)
    for name, _ in changed:
        setattr(config, name, wanted[name])
    try:
        yield
    finally:
        for name, old in changed:
            setattr(config, name, old)


@functools.cache
def compiled_call(kind: str, backend: str = "inductor"):
    """torch.compile of the ``kind`` entry, run under DYNAMO_SETTINGS: dynamic shapes, but "masked" static, since
    its block masks are cached per shape and a symbolic block mask failed to lower on the H200 (torch 2.11). Same
    arguments as the entry: (q, k, v, score_mod, [block_mask,] scale, enable_gqa) -> (out, aux with .lse)."""
    compiled = torch.compile(_ENTRIES[kind], dynamic=kind != "masked", backend=backend)

    def call(*args):
        with _dynamo_settings():
            return compiled(*args)

    return call


def _entry(kind: str, device: torch.device):
    return compiled_call(kind) if device.type == "cuda" else _ENTRIES[kind]


@functools.cache
def _softcap_mod(softcap: Optional[float]):
    """One score_mod per cap value, so that every call passes the same function (Dynamo guards on it)."""
    if softcap is None:
        return None

    def score_mod(score, batch, head, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return score_mod


def _call(q, k, v, *, scale: float, softcap: Optional[float], block_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """One flex_attention call -> (out [1, Hq, c, d], lse [1, Hq, c] float32, natural log)."""
    gqa, score_mod = q.shape[1] != k.shape[1], _softcap_mod(softcap)
    if block_mask is not None:
        out, aux = _entry("masked", q.device)(q, k, v, score_mod, block_mask, scale, gqa)
    else:
        out, aux = _entry("decode" if q.shape[2] == 1 else "past", q.device)(q, k, v, score_mod, scale, gqa)
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
    if chunk_tokens == 1 and (window is None or key_tokens <= window):  # one query that sees every key
        return _call(q, k, v, scale=scale, softcap=softcap, block_mask=None)[0]
    if window is not None or past_tokens == 0:
        mask = causal_block_mask(chunk_tokens, key_tokens, window, q.device)  # at most W - 1 + c keys
        return _call(q, k, v, scale=scale, softcap=softcap, block_mask=mask)[0]
    past = _call(q, k[:, :, :past_tokens], v[:, :, :past_tokens], scale=scale, softcap=softcap, block_mask=None)
    chunk_mask = causal_block_mask(chunk_tokens, chunk_tokens, None, q.device)
    own = _call(q, k[:, :, past_tokens:], v[:, :, past_tokens:], scale=scale, softcap=softcap,
                block_mask=chunk_mask)
    out, _ = merge_by_lse([past[0], own[0]], [past[1], own[1]])
    return out.to(q.dtype)
