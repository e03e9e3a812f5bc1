"""One-pass log-sum-exp merge of up to MAX_PARTS partial attentions on the GPU (Triton), for the cudnn-split path.

The eager merge (attention/lse.py LseAccumulator) folds parts in one at a time through a float32 accumulator: per
part after the first, ~8 kernels that read and write the accumulator twice (rescale, then add), ~18 bytes per
output element per part, then a cast and a copy into the layer's output. On the H100 (128K prefill of the 8B
shape, c = 8K, G = 2, 2026-11-22) the elementwise kernels took 1.87 s of the prefill with the eager merge and 1.28 s
with this one (benchmarks/results/2026-11-22-h100/kernels-prefill-128k-24gb.json). Here one kernel per merge reads each part's log-sum-exp and output once
and writes the result once, in the output's dtype, straight into the caller's (strided) destination:

    per row r = (head h, query i):   m = max_p lse_p[r]      (0 where every part is -inf: the row sees no key)
    w_p = exp(lse_p[r] - m)          out[h, i, :] = sum_p w_p * out_p[h, i, :] / sum_p w_p     (float32 sums)

(P + 1) * 2 bytes per output element for bf16 parts. Exact in the same sense as the eager merge: the same
softmax weights, normalised after instead of before the sum, float32 accumulation; results agree to float32
rounding. It holds every part until the merge: P parts of H_q,g * c * d elements (the planner counts them:
planner/memory_model.py split_parts_bytes).

Parts are [1, H, c, d] tensors with any strides whose last dimension is contiguous (the flash kernel's output
is a transposed view, cuDNN's a reshape), log-sum-exps [1, H, c] float32. Used where Triton imports and the
tensors are on CUDA; elsewhere (CPU, no Triton, more than MAX_PARTS parts) the caller keeps the eager merge.
Leaves out: the lse of the merge for further merging (the split path needs only the output).
"""

from __future__ import annotations

import functools
import warnings

import torch

MAX_PARTS = 8
BLOCK_ROWS = 32
_disabled: list[str] = []   # why the merge was turned off in this process (a Triton that cannot build here)


def disable(cause: BaseException) -> None:
    """Turn the one-pass merge off for the rest of the process (callers fall back to the eager merge), warning once
    with ``cause`` (the error from building or launching the kernel)."""
    text = str(cause)
    reason = f"{type(cause).__name__}: {text.splitlines()[0][:200] if text else ''}"
    if not _disabled:
        warnings.warn(f"one-pass Triton merge disabled, using the eager merge: {reason}", RuntimeWarning,
                      stacklevel=2)
    _disabled.append(reason)


def available() -> bool:
    """Triton imports, a CUDA device is present, and the merge has not been disabled."""
    return not _disabled and _importable()


@functools.lru_cache(maxsize=None)
def _importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "use the eager merge"
        return False
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def merge_kernel(dest_ptr, dest_sh, dest_sc,
                     o0, o1, o2, o3, o4, o5, o6, o7, l0, l1, l2, l3, l4, l5, l6, l7,
                     s0h, s0c, s1h, s1c, s2h, s2c, s3h, s3c, s4h, s4c, s5h, s5c, s6h, s6c, s7h, s7c,
                     rows, chunk, NUM_PARTS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        row = pid * BLOCK + tl.arange(0, BLOCK)          # row = h * c + i
        live = row < rows
        head = row // chunk
        pos = row - head * chunk
        col = tl.arange(0, HEAD_DIM)
        outs = (o0, o1, o2, o3, o4, o5, o6, o7)
        lses = (l0, l1, l2, l3, l4, l5, l6, l7)
        strides_h = (s0h, s1h, s2h, s3h, s4h, s5h, s6h, s7h)
        strides_c = (s0c, s1c, s2c, s3c, s4c, s5c, s6c, s7c)
        top = tl.full((BLOCK,), float("-inf"), tl.float32)
        for p in tl.static_range(NUM_PARTS):
            top = tl.maximum(top, tl.load(lses[p] + row, mask=live, other=float("-inf")))
        top = tl.where(top == float("-inf"), 0.0, top)   # no part has keys: every weight is exp(-inf) = 0
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        acc = tl.zeros((BLOCK, HEAD_DIM), dtype=tl.float32)
        for p in tl.static_range(NUM_PARTS):
            weight = tl.exp(tl.load(lses[p] + row, mask=live, other=float("-inf")) - top)
            total += weight
            offset = head * strides_h[p] + pos * strides_c[p]
            values = tl.load(outs[p] + offset[:, None] + col[None, :], mask=live[:, None], other=0.0)
            acc += weight[:, None] * values.to(tl.float32)
        inverse = tl.where(total > 0.0, 1.0 / total, 0.0)
        out_offset = head * dest_sh + pos * dest_sc
        tl.store(dest_ptr + out_offset[:, None] + col[None, :], (acc * inverse[:, None]).to(dest_ptr.dtype.element_ty),
                 mask=live[:, None])

    return merge_kernel


def merge_into(dest: torch.Tensor, outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Merge parts outs[p] [1, H, c, d] with lses[p] [1, H, c] (float32) into ``dest`` [1, H, c, d] (any strides
    with a contiguous last dimension, e.g. a slice of the layer's [1, c, H_q, d] output seen as [1, H_q, c, d]);
    returns dest. 1 <= P <= MAX_PARTS; CUDA tensors; d a power of two."""
    if not 1 <= len(outs) <= MAX_PARTS or len(outs) != len(lses):
        raise ValueError(f"merge takes 1..{MAX_PARTS} parts with one lse each; got {len(outs)}, {len(lses)}")
    _, heads, chunk, head_dim = outs[0].shape
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim} is not a power of two")
    for tensor in (*outs, dest):
        if tensor.shape != outs[0].shape or tensor.stride(3) != 1:
            raise ValueError("parts and destination must share one shape [1, H, c, d] with a contiguous last "
                             "dimension")
    flat_lses = [lse.reshape(heads * chunk).float() for lse in lses]     # views where already contiguous
    parts = list(outs) + [outs[0]] * (MAX_PARTS - len(outs))             # unused slots: never read
    flat_lses += [flat_lses[0]] * (MAX_PARTS - len(lses))
    strides = [s for part in parts for s in (part.stride(1), part.stride(2))]
    rows = heads * chunk
    grid = (-(-rows // BLOCK_ROWS),)
    _kernel()[grid](dest, dest.stride(1), dest.stride(2), *parts, *flat_lses, *strides, rows, chunk,
                    NUM_PARTS=len(outs), HEAD_DIM=head_dim, BLOCK=BLOCK_ROWS)
    return dest


def merge(outs: list[torch.Tensor], lses: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """merge_into a new contiguous [1, H, c, d] tensor of ``dtype``."""
    out = torch.empty(outs[0].shape, dtype=dtype, device=outs[0].device)
    return merge_into(out, outs, lses)
