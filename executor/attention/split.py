"""Prefill attention split for cuDNN: the chunk against its past in fixed-size key blocks (non-causal, on
PyTorch's cuDNN attention, ~2x the flash kernel on the H100), the chunk against itself on the flash kernel
(lower-right causal), merged exactly by log-sum-exp in float32 (attention/lse.py).

Contract (the same as attention/kernels.py attend_chunk):

    q [1, Hq_g, c, d]      a head group's query heads (query head j reads KV head j // (Hq_g // G))
    k, v [1, G, s + c, d]  the past [0, s) then the chunk [s, s + c); query i of the chunk sees keys [0, s + i]
    returns [1, Hq_g, c, d] in q.dtype

How the keys are cut (``split_parts``), with B = past_block_tokens (settings.SplitOptions; the planner's
PAST_BLOCK_TOKENS by default):

    s_full = B * floor(s / B)                    the past's full blocks; n = s_full / B of them
    [0, s_full) -> cuDNN, non-causal, one call per set bit of n, largest first: key lengths B * 2^i
    [s_full, s + c) -> flash, lower-right causal (the tail s - s_full < B plus the chunk itself, one call)

Why this cut: cuDNN builds a graph (~50 ms; ~600 ms seen at an odd key length) for every new shape, so its
key lengths must come from a small fixed set. The binary cut gives at most floor(log2(s_max / B)) + 1
distinct key lengths in a whole run (9 for 512K past with B = 2K) and at most that many cuDNN calls per chunk,
and every cuDNN key length is a multiple of B (aligned). Cutting into equal blocks of B instead needs one
shape but s / B calls and merges per chunk (the merge is a float32 pass over the output: too many at 512K);
one cuDNN call over the whole past costs a graph per chunk. The tail goes with the chunk on the flash
kernel, whose lower-right causal mask over [tail, chunk] is exactly the tail + chunk part, so no cuDNN call
ever has a tail-dependent shape. When the chunk length c is a multiple of B (the planner's chunks are
multiples of 1024) every past s = j * c is a multiple of B: the tail is empty and all of the past runs on
cuDNN. chunk_backend="cudnn" also puts the square causal chunk-vs-itself part on cuDNN (one shape per
chunk length; the probe measured 359 against the flash kernel's 174 TFLOP/s), with a non-empty tail then
on the flash kernel (non-causal).

The parts are merged in one Triton pass written into the caller's output (SplitOptions.fused_merge,
merge_triton.py) on
CUDA, else by an eager float32 accumulator. cuDNN gets the query heads packed into rows per KV head ([1, G, r*c,
d] against [1, G, n, d]: exact because the part is non-causal), packed once per call for all past parts.
Leaves out: decode (c = 1 works but the executor keeps the flash kernel there: decode's past grows by one
token a step), dropout, batch > 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from executor.attention import merge_triton
from executor.attention.lse import LseAccumulator, pack_query_rows, partial_math, unpack_query_rows
from executor.settings import SplitOptions
from planner.host_time import past_block_spans
PAST_BACKENDS = ("cudnn", "flash", "math")
CHUNK_BACKENDS = ("flash", "cudnn", "math")

_cudnn_shapes_seen: set[tuple] = set()  # every distinct cuDNN call signature of this process


@dataclass(frozen=True)
class AttentionPart:
    """One partial attention of the chunk's queries over keys [key_start, key_end) of the group's k, v.

    causal: lower-right aligned over the part (query i sees keys up to key_end - c + i); else all keys.
    """

    backend: str
    key_start: int
    key_end: int
    causal: bool


def split_parts(past_tokens: int, chunk_tokens: int, *, block_tokens: int, past_backend: str,
                chunk_backend: str, past_cut: str = "binary") -> list[AttentionPart]:
    """The parts attend_chunk_split computes for a chunk [s, s + c), in order (see the module docstring);
    ``past_cut`` "whole": the full blocks in one part (planner/host_time.py past_block_spans)."""
    if past_backend not in PAST_BACKENDS or chunk_backend not in CHUNK_BACKENDS:
        raise ValueError(f"past_backend must be one of {PAST_BACKENDS} and chunk_backend one of "
                         f"{CHUNK_BACKENDS}; got {past_backend!r}, {chunk_backend!r}")
    spans = past_block_spans(past_tokens, block_tokens, past_cut)
    parts = [AttentionPart(past_backend, start, end, False) for start, end in spans]
    full_end = spans[-1][1] if spans else 0
    chunk_end = past_tokens + chunk_tokens
    if chunk_backend != "cudnn":
        parts.append(AttentionPart(chunk_backend, full_end, chunk_end, True))  # tail + chunk, lower-right
        return parts
    if full_end < past_tokens:  # the tail, non-causal, on a kernel that builds no graph per shape
        tail_backend = "math" if past_backend == "math" else "flash"
        parts.append(AttentionPart(tail_backend, full_end, past_tokens, False))
    parts.append(AttentionPart("cudnn", past_tokens, chunk_end, True))  # square causal: alignment moot
    return parts


def cudnn_key_lengths(context_tokens: int, chunk_tokens: int, block_tokens: int, past_cut: str = "binary",
                      first_past_tokens: int = 0) -> set[int]:
    """Distinct cuDNN key lengths of the past parts over a prefill of context_tokens in chunks of
    chunk_tokens (pasts s0, s0 + c, ...; s0 = first_past_tokens): binary cut at most floor(log2(s_max / B)) + 1,
    whole cut one per chunk with s >= B. The number of graph builds is this times the distinct (query rows, G)
    pairs (the last, shorter chunk adds a second row count)."""
    lengths = set()
    for past in range(first_past_tokens, context_tokens, chunk_tokens):
        lengths.update(end - start for start, end in past_block_spans(past, block_tokens, past_cut))
    return lengths


def cudnn_shapes_seen() -> frozenset:
    """Distinct cuDNN call signatures (q shape, k shape, k strides, causal, dtype) made by this process:
    each one cost a graph build the first time."""
    return frozenset(_cudnn_shapes_seen)


@functools.lru_cache(maxsize=None)
def cudnn_available(device_index: int | None = None) -> bool:
    """True where PyTorch's cuDNN attention op exists and runs here: a CUDA device of compute capability
    8.0+ (cuDNN's fused attention needs Ampere or newer), cuDNN present, and a tiny bf16 call succeeds
    (one graph build, once per process). Never raises."""
    try:
        if not torch.cuda.is_available() or not torch.backends.cudnn.is_available():
            return False
        if not hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"):
            return False
        device = torch.device("cuda", torch.cuda.current_device() if device_index is None else device_index)
        if torch.cuda.get_device_capability(device) < (8, 0):
            return False
        q = torch.randn(1, 1, 128, 64, device=device, dtype=torch.bfloat16)
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, q, q, None, True, 0.0, False, False)
        return bool(torch.isfinite(out[0]).all())
    except Exception:  # noqa: BLE001 - any failure means "not usable here"; the caller falls back to flash
        return False


def partial_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                  causal: bool, packed_query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN partial attention (aten._scaled_dot_product_cudnn_attention, log-sum-exp on). CUDA, fp16/bf16.

    q [1, Hq, c, d]; k, v [1, G, n, d] (may be slices of a larger buffer: last dim contiguous).
    causal=False: query heads packed into rows per KV head, [1, G, r*c, d] against [1, G, n, d]
        (``packed_query``: that packing made once by the caller for several parts; else made here, a copy
        when q is a strided view).
    causal=True: only for n == c (square, where top-left and lower-right masks agree); GQA passed as is.
    returns (out [1, Hq, c, d] q.dtype, lse [1, Hq, c] float32); cuDNN's lse is [B, H, L, 1] on torch 2.11
    and [B, H, L] elsewhere: both are handled.
    """
    query_heads, chunk_tokens = q.shape[1], q.shape[2]
    if causal and k.shape[2] != chunk_tokens:
        raise ValueError(f"cuDNN causal part must be square; got {chunk_tokens} queries, {k.shape[2]} keys")
    if causal:
        query = q
    else:
        query = packed_query if packed_query is not None else pack_query_rows(q, k.shape[1])
    _cudnn_shapes_seen.add((tuple(query.shape), tuple(k.shape), k.stride(), causal, q.dtype))
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(
        query, k, v, None, True, 0.0, causal, False, scale=scale)
    out, lse = result[0], result[1]
    if causal:
        return out, lse.reshape(1, query_heads, chunk_tokens)
    return unpack_query_rows(out, query_heads), unpack_query_rows(lse, query_heads)


def partial_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                  causal: bool, packed_query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's flash kernel (aten._scaled_dot_product_flash_attention). CUDA, fp16/bf16, GQA native.

    q [1, Hq, c, d]; k, v [1, G, n, d]; causal=True is lower-right aligned (FA2's convention, which
    torch.nn.attention.bias.causal_lower_right relies on): query i sees keys [0, n - c + i]; needs n >= c.
    returns (out [1, Hq, c, d] q.dtype, lse [1, Hq, c] float32). packed_query: ignored (GQA is native here).
    """
    result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    return result[0], result[1].reshape(1, q.shape[1], q.shape[2])


_PARTIAL_BY_BACKEND = {"cudnn": partial_cudnn, "flash": partial_flash, "math": partial_math}
PACKING_BACKENDS = ("cudnn", "math")  # non-causal parts on these take the query packed into rows per KV head


def attend_chunk_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                       past_block_tokens: int | None = None, past_backend: str = "cudnn",
                       chunk_backend: str = "flash", fused_merge: bool = True,
                       out: torch.Tensor | None = None, past_cut: str = "binary") -> torch.Tensor:
    """Attention of the chunk's queries against [past, chunk], split into parts merged by log-sum-exp.

    q [1, Hq_g, c, d]; k, v [1, G, s + c, d] (past then chunk); returns [1, Hq_g, c, d] in q.dtype: ``out`` when
    given (any strides with a contiguous last dim, e.g. a slice of the layer's output: the merge writes there
    directly), else a new tensor.
    past_block_tokens: B of the binary block cut (default SplitOptions().past_block_tokens; a multiple of 128
        keeps cuDNN's key lengths aligned). past_backend: "cudnn" (GPU), "flash" or "math" (any device;
        the CPU path). chunk_backend: "flash", "cudnn" (square causal on cuDNN) or "math". fused_merge: the
        one-pass Triton merge where it runs (else the eager float32 merge). past_cut: "binary" or "whole"
        (settings.SplitOptions.past_cut).
    Exact: the same softmax as one lower-right causal attention, reordered; float32 accumulation.
    """
    _check_inputs(q, k, v, past_backend, chunk_backend)
    block_tokens = past_block_tokens or SplitOptions().past_block_tokens
    chunk_tokens = q.shape[2]
    past_tokens = k.shape[2] - chunk_tokens
    parts = split_parts(past_tokens, chunk_tokens, block_tokens=block_tokens, past_backend=past_backend,
                        chunk_backend=chunk_backend, past_cut=past_cut)
    packed = None
    if sum(part.backend in PACKING_BACKENDS and not part.causal for part in parts) > 1:
        packed = pack_query_rows(q, k.shape[1]).contiguous()  # once for all past parts, not a copy per part
    if len(parts) == 1:  # no past block and no cut: the single part is the whole answer
        result = _partial(parts[0], q, k, v, scale, packed)[0]
        return result if out is None else out.copy_(result)
    if fused_merge and _use_fused_merge(q, len(parts)):
        outs, lses = [], []
        for part in parts:
            part_out, part_lse = _partial(part, q, k, v, scale, packed)
            outs.append(part_out)
            lses.append(part_lse)
        dest = out if out is not None else torch.empty_like(q, memory_format=torch.contiguous_format)
        return _merge_fused(dest, outs, lses, q.dtype, out)
    return _merge_eager((_partial(part, q, k, v, scale, packed) for part in parts), q.dtype, out)


def chunk_part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
               backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk against itself, square causal, for all of a layer's heads in one call (it needs no past):
    q [1, H_q, c, d], k, v [1, H_kv, c, d] (the chunk's own keys) -> (out [1, H_q, c, d] q.dtype,
    lse [1, H_q, c] float32). ``backend``: "cudnn" (square causal, GQA as is), "flash" or "math". The engine
    merges each head set's rows of it with that set's past (attend_past_split): one call of 32 query heads where
    the per-set split made one per set (on the H200, a 128K prefill's attention replayed alone took 7.55 s
    against 8.36 s, benchmarks/prefill_attention_probe.py)."""
    return _PARTIAL_BY_BACKEND[backend](q, k, v, scale=scale, causal=True)


def attend_past_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_out: torch.Tensor,
                      chunk_lse: torch.Tensor, *, scale: float, out: torch.Tensor,
                      past_block_tokens: int | None = None, past_backend: str = "cudnn",
                      fused_merge: bool = True, past_cut: str = "binary") -> torch.Tensor:
    """Attention of a head set's chunk queries over [past, chunk] from the past alone and the set's rows of the
    layer's chunk part: q [1, Hq_g, c, d]; k, v [1, G, s, d] the past only (s >= 1); chunk_out [1, Hq_g, c, d],
    chunk_lse [1, Hq_g, c] (chunk_part's rows of these heads). The past is cut as in split_parts (full blocks on
    ``past_backend``, non-causal; a tail s - B floor(s / B) on flash, or math with the math past) and every part
    is merged with the chunk part by log-sum-exp into ``out`` (any strides, contiguous last dim); returns out.
    Exact: the same softmax as attend_chunk_split's, with the chunk part computed once for the layer."""
    past_tokens = k.shape[2]
    if past_tokens < 1 or k.shape != v.shape or chunk_out.shape != q.shape:
        raise ValueError(f"attend_past_split takes q [1, Hq, c, d], a past k = v [1, G, s >= 1, d] and the chunk "
                         f"part's out of q's shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(chunk_out.shape)}")
    block_tokens = past_block_tokens or SplitOptions().past_block_tokens
    spans = past_block_spans(past_tokens, block_tokens, past_cut)
    parts = [AttentionPart(past_backend, start, end, False) for start, end in spans]
    full_end = spans[-1][1] if spans else 0
    if full_end < past_tokens:
        parts.append(AttentionPart("math" if past_backend == "math" else "flash", full_end, past_tokens, False))
    packed = None
    if sum(part.backend in PACKING_BACKENDS for part in parts) > 1:
        packed = pack_query_rows(q, k.shape[1]).contiguous()
    outs, lses = [chunk_out], [chunk_lse]
    for part in parts:
        part_out, part_lse = _partial(part, q, k, v, scale, packed)
        outs.append(part_out)
        lses.append(part_lse)
    if fused_merge and _use_fused_merge(q, len(outs)):
        return _merge_fused(out, outs, lses, q.dtype, out)
    return _merge_eager(zip(outs, lses), q.dtype, out)


def _merge_fused(dest: torch.Tensor, outs: list, lses: list, dtype: torch.dtype,
                 out: torch.Tensor | None) -> torch.Tensor:
    """The one-pass Triton merge into ``dest``; where Triton imports but cannot build or launch here, the merge is
    turned off for the process and this one goes through _merge_eager (into ``out``)."""
    try:
        return merge_triton.merge_into(dest, outs, lses)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - a Triton that imports but cannot build or launch here
        merge_triton.disable(exc)
        return _merge_eager(zip(outs, lses), dtype, out)


def _merge_eager(parts, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """Fold (out_p, lse_p) pairs through the float32 LseAccumulator; the result in ``dtype`` (into ``out``)."""
    merged = LseAccumulator()
    for part_out, part_lse in parts:
        merged.add(part_out, part_lse)
    result = merged.result()[0]
    return result.to(dtype) if out is None else out.copy_(result)


def warm_up_merge(device: torch.device, dtype: torch.dtype, head_dim: int, context_tokens: int, chunk_tokens: int,
                  options: SplitOptions = SplitOptions()) -> list[int]:
    """Compile (or load from Triton's cache) the one-pass merge for every part count a prefill of
    ``context_tokens`` in chunks of ``chunk_tokens`` will merge, on tiny tensors with the same alignment, so the
    timed run does not pay it (~0.45 s in the first chunk with a merge on the H100). Returns the part counts
    warmed (none where the merge would not run: CPU, no Triton, options.fused_merge off, or a Triton that cannot build
    here, which turns the merge off for the process)."""
    if not options.fused_merge:
        return []
    block = options.past_block_tokens
    probe = torch.empty(1, 1, 1, head_dim, device=device, dtype=dtype)
    counts = set()
    for past in range(0, context_tokens, chunk_tokens):
        chunk = min(chunk_tokens, context_tokens - past)
        if options.chunk_part == "layer":  # the past's blocks, a tail, and the layer's chunk part
            spans = past_block_spans(past, block, options.past_cut)
            counts.add(len(spans) + int((spans[-1][1] if spans else 0) < past) + 1 if past else 1)
            continue
        counts.add(len(split_parts(past, chunk, block_tokens=block, past_backend="cudnn",
                                   chunk_backend=options.chunk_backend_for(chunk), past_cut=options.past_cut)))
    counts = sorted(counts - {1})
    counts = [n for n in counts if _use_fused_merge(probe, n)]
    heads, rows = 2, 16     # strides and sizes multiples of 16, as in the run (Triton specialises on that)
    for parts in counts:
        outs = [torch.zeros(1, heads, rows, head_dim, device=device, dtype=dtype) for _ in range(parts)]
        lses = [torch.zeros(1, heads, rows, device=device) for _ in range(parts)]
        try:
            merge_triton.merge(outs, lses, dtype)
        except Exception as exc:  # noqa: BLE001 - cannot build here: the run merges eagerly (warned once)
            merge_triton.disable(exc)
            return []
    return counts


def warm_up_cudnn(device: torch.device, dtype: torch.dtype, *, head_dim: int, query_heads_per_kv: int,
                  kv_heads: int, chunk_tokens: int, options: SplitOptions = SplitOptions(),
                  layer_kv_heads: int | None = None) -> int:
    """One cuDNN call of each kind the prefill makes, at its first shapes: a chunk of ``chunk_tokens`` queries of
    ``kv_heads`` KV heads against one past block (non-causal) and, for chunks on the cuDNN chunk part, the square
    causal chunk. On a machine where no process has run them yet, cuDNN's first calls of a kind compile their
    kernels (the first 128K prefill of each fresh H100 ran 1.0-1.9 s over in its first two chunks, later
    processes not); the run's warm-up pays that instead (reported as warmup_s). ``layer_kv_heads``: the layer's KV
    heads, whose query heads the causal chunk part takes at once with SplitOptions.chunk_part "layer". Returns the
    calls made."""
    if not cudnn_available(device.index):
        return 0
    block = options.past_block_tokens
    query = torch.zeros(1, kv_heads * query_heads_per_kv, chunk_tokens, head_dim, device=device, dtype=dtype)
    keys = torch.zeros(1, kv_heads, max(block, chunk_tokens), head_dim, device=device, dtype=dtype)
    partial_cudnn(query, keys[:, :, :block], keys[:, :, :block], scale=head_dim ** -0.5, causal=False)
    calls = 1
    if options.chunk_backend_for(chunk_tokens) == "cudnn":
        causal_heads = layer_kv_heads if options.chunk_part == "layer" and layer_kv_heads else kv_heads
        query_heads = causal_heads * query_heads_per_kv
        causal_keys = torch.zeros(1, causal_heads, chunk_tokens, head_dim, device=device, dtype=dtype)
        # cuDNN keys its graphs on strides too: the run's query comes from transformers' rotary embedding as a
        # [1, c, H_q, d] buffer seen as [1, H_q, c, d] (the chunk 0 of every H200 run with the chunk part on cuDNN
        # paid a 33-72 ms build while the warm-up had built only the contiguous layout), so build both
        for causal_query in (torch.zeros(1, query_heads, chunk_tokens, head_dim, device=device, dtype=dtype),
                             torch.zeros(1, chunk_tokens, query_heads, head_dim, device=device,
                                         dtype=dtype).transpose(1, 2)):
            partial_cudnn(causal_query, causal_keys, causal_keys, scale=head_dim ** -0.5, causal=True)
            calls += 1
    return calls


def warm_up_whole_past(device: torch.device, dtype: torch.dtype, *, head_dim: int, query_heads_per_kv: int,
                       call_kv_heads: set[int], capacity_tokens: int, context_tokens: int, chunk_tokens: int,
                       first_past_tokens: int = 0, options: SplitOptions = SplitOptions()) -> int:
    """The "whole" past cut's cuDNN graphs, built before the timed run: one call per (KV heads h of a call,
    chunk length, key length n B) the prefill of [first_past_tokens, context_tokens) in chunks of
    ``chunk_tokens`` will make, on zero tensors laid out as the run's: the packed query [1, h, r c, d]
    (contiguous, as the run's pack copies it) against keys [1, h, n B, d] viewed out of an [h_max, T, d] buffer
    (T = capacity_tokens: the stores' row stride, which cuDNN's graph cache keys on). ``call_kv_heads``: the
    distinct head counts of the run's attention calls (a layer's resident heads, its streamed groups). Returns
    the calls made (0: another cut, no cuDNN here, or no past block). Costs a graph build (~40 ms on the H200)
    plus one call per shape, and one buffer of 2 h_max T d bytes while it runs (freed before the stores)."""
    if options.past_cut != "whole" or not call_kv_heads or not cudnn_available(device.index):
        return 0
    shapes = set()
    for past in range(first_past_tokens, context_tokens, chunk_tokens):
        chunk = min(chunk_tokens, context_tokens - past)
        shapes.update((chunk, end - start) for start, end in past_block_spans(past, options.past_block_tokens,
                                                                              "whole"))
    if not shapes:
        return 0
    store = torch.zeros(max(call_kv_heads), capacity_tokens, head_dim, device=device, dtype=dtype)
    calls = 0
    for heads in sorted(call_kv_heads):
        for chunk, key_tokens in sorted(shapes):
            packed = torch.zeros(1, heads, query_heads_per_kv * chunk, head_dim, device=device, dtype=dtype)
            keys = store[:heads][None, :, :key_tokens]
            partial_cudnn(packed.view(1, heads * query_heads_per_kv, chunk, head_dim), keys, keys,
                          scale=head_dim ** -0.5, causal=False, packed_query=packed)
            calls += 1
    return calls


def _use_fused_merge(q: torch.Tensor, num_parts: int) -> bool:
    head_dim = q.shape[3]
    return (q.is_cuda and 1 < num_parts <= merge_triton.MAX_PARTS
            and head_dim & (head_dim - 1) == 0 and merge_triton.available())


def _partial(part: AttentionPart, q, k, v, scale: float, packed: torch.Tensor | None = None):
    part_k = k[:, :, part.key_start:part.key_end]
    part_v = v[:, :, part.key_start:part.key_end]
    return _PARTIAL_BY_BACKEND[part.backend](q, part_k, part_v, scale=scale, causal=part.causal,
                                             packed_query=None if part.causal else packed)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_backend: str,
                  chunk_backend: str) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[0] != 1:
        raise ValueError(f"attend_chunk_split expects q [1, Hq, c, d], k = v [1, G, S, d]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of KV heads {k.shape[1]}")
    if q.shape[2] < 1 or k.shape[2] < q.shape[2]:
        raise ValueError(f"keys ({k.shape[2]}) must include the chunk's own {q.shape[2]} (>= 1) tokens")
    gpu_kernels = {past_backend, chunk_backend} - {"math"}
    if gpu_kernels and not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        raise ValueError(f"backends {sorted(gpu_kernels)} need fp16/bf16 tensors on CUDA (got {q.dtype} on "
                         f"{q.device}); use past_backend='math', chunk_backend='math'")
