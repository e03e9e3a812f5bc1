"""attend_chunk: attention of one chunk's queries against [past, chunk] keys, lower-right causal, GQA-native.

The one place the executor's attention math goes through. Every backend computes the same thing:

    q [1, Hq_g, c, d]      the chunk's query heads of one group (query head j reads KV head j // (Hq_g // G))
    k, v [1, G, s + c, d]  keys/values of the group: the past [0, s) followed by the chunk [s, s + c)
    query i of the chunk sees keys [0, s + i]   (causal, aligned to the lower right)
    returns [1, Hq_g, c, d] in q.dtype

Backends:
- ``flash``: PyTorch's flash kernel called directly (``aten._scaled_dot_product_flash_attention``); its
  ``is_causal`` is lower-right aligned and it accepts fewer KV heads than query heads (FA2's GQA). CUDA,
  fp16/bf16 only; anything else falls back to ``math``. Used for decode always (no graph per key length).
- ``flash_attn``: the flash-attn package, when importable (same alignment and GQA).
- ``cudnn-split``: attention/split.py (cuDNN for the chunk-vs-past part, merged by log-sum-exp);
  prefill only; decode (c = 1) uses ``flash``. The engine computes its chunk-vs-itself part once per layer
  (split_chunk_part) and each head set's past apart (attend_past), merged; on CPU or in float32 the same parts
  run on the math kernels, so CI runs that arrangement too.
- ``flex``: PyTorch's FlexAttention (attention/flex.py): logit soft-capping (Gemma-2) and sliding windows, with
  the log-sum-exp merge; the planner picks it for models with a soft-cap, and every backend hands a call with a
  soft-cap or a window to it on CUDA (decode too: one query against at most the window, or a streamed group).
- ``math`` (alias ``cpu``): explicit float32 scores with a lower-right mask, the soft-cap and the window. Exact on
  CPU; the CI path.
Scores: x = scale * q . k, then cap * tanh(x / cap) when ``softcap`` is set; with ``window`` W query position p
sees keys (p - W, p] only (transformers' sliding window).
Leaves out: dropout, padding masks (batch 1).
"""

from __future__ import annotations

import torch

from executor.attention.lse import partial_math
from executor.attention.split import attend_chunk_split, attend_past_split, chunk_part
from executor.settings import SplitOptions

BACKENDS = ("flash", "flash_attn", "cudnn-split", "flex", "math")
"""The backend names; a plan's ``attention_backend`` is one of "flash", "cudnn-split" and "flex"."""

_ALIASES = {"cpu": "math", "flash-attn": "flash_attn"}


def backend_name(name: str) -> str:
    """The backend ``name`` denotes (one of BACKENDS; "cpu" means "math"); ValueError for anything else, so a
    misspelt backend fails at the start of a run instead of silently running another kernel."""
    canonical = _ALIASES.get(name, name)
    if canonical not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)}")
    return canonical


def attend_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, backend: str,
                 out: torch.Tensor | None = None, split: SplitOptions = SplitOptions(),
                 softcap: float | None = None, window: int | None = None) -> torch.Tensor:
    """Attention of q [1, Hq_g, c, d] against k, v [1, G, s + c, d], lower-right causal; returns [1, Hq_g, c, d]:
    ``out`` when given (e.g. a strided slice of the layer's output; the split path's merge writes there
    directly, the other backends copy their result in), else a new tensor. ``split``: the cudnn-split knobs.
    ``softcap``: scores capped as cap * tanh(x / cap); ``window``: query position p sees keys (p - W, p]."""
    _check_shapes(q, k, v)
    if out is not None and out.shape != q.shape:
        raise ValueError(f"out {tuple(out.shape)} must have the query's shape {tuple(q.shape)}")
    if backend == "math" or not q.is_cuda:
        result = _attend_math(q, k, v, scale=scale, softcap=softcap, window=window)
        return result if out is None else out.copy_(result)
    if softcap is not None or window is not None or backend == "flex":
        from executor.attention.flex import attend_flex

        result = attend_flex(q, k, v, scale=scale, softcap=softcap, window=window)
        return result if out is None else out.copy_(result)
    on_gpu_half = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    chunk_tokens = q.shape[2]
    if backend == "cudnn-split" and chunk_tokens > 1 and on_gpu_half:
        return _attend_cudnn_split(q, k, v, scale=scale, split=split, out=out)
    if not on_gpu_half:
        result = _attend_math(q, k, v, scale=scale)
    elif backend == "flash_attn":
        result = _attend_flash_attn(q, k, v, scale=scale)
    else:
        result = _attend_flash(q, k, v, scale=scale)
    return result if out is None else out.copy_(result)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"attend_chunk expects q [1, Hq, c, d], k = v [1, G, S, d]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    query_heads, kv_heads = q.shape[1], k.shape[1]
    if kv_heads == 0 or query_heads % kv_heads:
        raise ValueError(f"query heads {query_heads} are not a multiple of KV heads {kv_heads}")
    if k.shape[2] < q.shape[2]:
        raise ValueError(f"keys ({k.shape[2]}) must include the chunk's own {q.shape[2]} tokens")


def _attend_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, softcap: float | None = None,
                 window: int | None = None) -> torch.Tensor:
    """Explicit float32 attention: scores [1, G, ratio, c, S] (soft-capped), lower-right (windowed) mask,
    softmax, weighted sum."""
    batch, query_heads, chunk_tokens, head_dim = q.shape
    kv_heads, key_tokens = k.shape[1], k.shape[2]
    ratio = query_heads // kv_heads
    q_grouped = q.float().reshape(batch, kv_heads, ratio, chunk_tokens, head_dim)
    scores = torch.einsum("bgrcd,bgsd->bgrcs", q_grouped, k.float()) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    past_tokens = key_tokens - chunk_tokens
    query_pos = torch.arange(chunk_tokens, device=q.device).unsqueeze(1) + past_tokens
    key_pos = torch.arange(key_tokens, device=q.device).unsqueeze(0)
    hidden = key_pos > query_pos
    if window is not None:
        hidden = hidden | (key_pos <= query_pos - window)
    scores = scores.masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bgrcs,bgsd->bgrcd", probs, v.float())
    return out.reshape(batch, query_heads, chunk_tokens, head_dim).to(q.dtype)


def _attend_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float) -> torch.Tensor:
    """PyTorch's FA2 kernel: lower-right causal, GQA-native (num_heads % num_heads_k == 0)."""
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)[0]
    return out


def _attend_flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float) -> torch.Tensor:
    """The flash-attn package: takes [B, L, H, d]; causal is lower-right aligned since 2.1."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("attention backend 'flash_attn' needs the flash-attn package, which is not "
                           "importable here; use backend 'flash'") from exc
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                          causal=True)
    return out.transpose(1, 2)


def _attend_cudnn_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                        split: SplitOptions, out: torch.Tensor | None = None) -> torch.Tensor:
    """cuDNN past + chunk part (split.chunk_backend_for), merged by log-sum-exp (attention/split.py)."""
    return attend_chunk_split(q, k, v, scale=scale, past_block_tokens=split.past_block_tokens,
                              chunk_backend=split.chunk_backend_for(q.shape[2]), fused_merge=split.fused_merge,
                              past_cut=split.past_cut,
                              out=out)


def _gpu_half(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def split_chunk_part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                     split: SplitOptions = SplitOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """cudnn-split's chunk-vs-itself part of a whole layer: q [1, H_q, c, d] against the chunk's own k, v
    [1, H_kv, c, d], square causal -> (out [1, H_q, c, d], lse [1, H_q, c] float32): on ``split``'s chunk
    backend on a GPU in fp16/bf16, else on the math kernel (attention/split.py chunk_part)."""
    backend = split.chunk_backend_for(q.shape[2]) if _gpu_half(q) else "math"
    return chunk_part(q, k, v, scale=scale, backend=backend)


def attend_past(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_out: torch.Tensor, chunk_lse: torch.Tensor,
                *, scale: float, out: torch.Tensor, split: SplitOptions = SplitOptions()) -> torch.Tensor:
    """A head set's chunk queries q [1, Hq_g, c, d] over its past k, v [1, G, s, d] (s >= 1), merged with its
    rows of the layer's chunk part into ``out`` (attention/split.py attend_past_split): the past on cuDNN on a
    GPU in fp16/bf16, else on the math kernel."""
    return attend_past_split(q, k, v, chunk_out, chunk_lse, scale=scale, out=out,
                             past_block_tokens=split.past_block_tokens,
                             past_backend="cudnn" if _gpu_half(q) else "math", fused_merge=split.fused_merge,
                             past_cut=split.past_cut)


def attend_partial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal attention of q [1, Hq_g, c, d] over every key of k, v [1, G, S, d] with its log-sum-exp:
    (out [1, Hq_g, c, d] in q.dtype, lse [1, Hq_g, c] float32, natural log). The GPU share of a decode token whose
    older keys are attended on the host (engine/host_share.py); merged with that share by attention/lse.py.
    CUDA fp16/bf16 (any backend but "math"): PyTorch's flash kernel, which returns the lse; else float32 math."""
    _check_shapes(q, k, v)
    if backend != "math" and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        return out, lse
    out, lse = partial_math(q, k, v, scale=scale, causal=False)
    return out, lse.float()


def attention_flops(query_heads: int, head_dim: int, chunk_tokens: int, past_tokens: int) -> float:
    """FLOPs of attend_chunk: 4 * Hq * d * pairs, pairs = c * s + c * (c + 1) / 2 (lower-right causal)."""
    pairs = chunk_tokens * past_tokens + chunk_tokens * (chunk_tokens + 1) / 2
    return 4.0 * query_heads * head_dim * pairs
