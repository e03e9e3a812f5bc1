"""One-pass log-sum-exp merge of up to MAX_PARTS partial attentions on the GPU (Triton), for the cudnn-split path.

The eager merge (attention_lse.LseAccumulator) folds parts in one at a time through a float32 accumulator:
per part after the first it reads and writes the accumulator twice (rescale, then add), ~18 bytes per output
element per part. Here the weights are computed first on the small [P, H, c] log-sum-exp tensor, then one
kernel reads each part's output once and writes the result once, in the output dtype:

    lse   = logsumexp_p(lse_p)                       [H, c]      (torch; -inf where no part has keys)
    w_p   = exp(lse_p - lse)                         [P, H, c]   (0 where lse_p = -inf)
    out[h, i, :] = sum_p w_p[h, i] * out_p[h, i, :]  float32 sums, stored in the output dtype

(P + 1) * 2 bytes per output element for bf16 parts instead of ~18 (P - 1) + 12. Exact in the same sense as
the eager merge: the same weights, float32 accumulation; results agree to float32 rounding.

Parts are [1, H, c, d] tensors with any strides whose last dimension is contiguous (the flash kernel's output
is a transposed view, cuDNN's a reshape). Used where Triton imports and the tensors are on CUDA; elsewhere
(CPU, no Triton, more than MAX_PARTS parts) the caller keeps the eager merge. Leaves out: the lse of the
merge for further merging (the split path needs only the output).
"""

from __future__ import annotations

import functools

import torch

MAX_PARTS = 8
BLOCK_ROWS = 16


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Triton imports and a CUDA device is present."""
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
    def merge_kernel(out_ptr, w_ptr, p0, p1, p2, p3, p4, p5, p6, p7,
                     s0h, s0c, s1h, s1c, s2h, s2c, s3h, s3c, s4h, s4c, s5h, s5c, s6h, s6c, s7h, s7c,
                     out_sh, out_sc, rows, chunk, NUM_PARTS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        row = pid * BLOCK + tl.arange(0, BLOCK)          # row = h * c + i
        live = row < rows
        head = row // chunk
        pos = row - head * chunk
        col = tl.arange(0, HEAD_DIM)
        acc = tl.zeros((BLOCK, HEAD_DIM), dtype=tl.float32)
        ptrs = (p0, p1, p2, p3, p4, p5, p6, p7)
        strides_h = (s0h, s1h, s2h, s3h, s4h, s5h, s6h, s7h)
        strides_c = (s0c, s1c, s2c, s3c, s4c, s5c, s6c, s7c)
        for p in tl.static_range(NUM_PARTS):
            weight = tl.load(w_ptr + p * rows + row, mask=live, other=0.0)
            offset = head * strides_h[p] + pos * strides_c[p]
            values = tl.load(ptrs[p] + offset[:, None] + col[None, :], mask=live[:, None], other=0.0)
            acc += weight[:, None] * values.to(tl.float32)
        out_offset = head * out_sh + pos * out_sc
        tl.store(out_ptr + out_offset[:, None] + col[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=live[:, None])

    return merge_kernel


def merge_weights(lses: list[torch.Tensor]) -> torch.Tensor:
    """[P, H * c] float32 weights exp(lse_p - logsumexp_p lse_p); 0 for parts (or rows) with no keys."""
    stacked = torch.stack([lse.reshape(-1).float() for lse in lses])        # [P, H c]
    total = torch.logsumexp(stacked, dim=0)
    total = torch.where(torch.isneginf(total), torch.zeros_like(total), total)
    return torch.exp(stacked - total).contiguous()


def merge(outs: list[torch.Tensor], lses: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Merge parts outs[p] [1, H, c, d] (last dim contiguous) with lses[p] [1, H, c] into a new contiguous
    [1, H, c, d] tensor of ``dtype``. 1 <= P <= MAX_PARTS; CUDA tensors; d a power of two."""
    if not 1 <= len(outs) <= MAX_PARTS or len(outs) != len(lses):
        raise ValueError(f"merge takes 1..{MAX_PARTS} parts with one lse each; got {len(outs)}, {len(lses)}")
    _, heads, chunk, head_dim = outs[0].shape
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim} is not a power of two")
    for part in outs:
        if part.shape != outs[0].shape or part.stride(3) != 1:
            raise ValueError("parts must share one shape [1, H, c, d] with a contiguous last dimension")
    weights = merge_weights(lses)
    out = torch.empty((1, heads, chunk, head_dim), dtype=dtype, device=outs[0].device)
    parts = list(outs) + [outs[0]] * (MAX_PARTS - len(outs))             # unused slots: never read
    strides = [s for part in parts for s in (part.stride(1), part.stride(2))]
    rows = heads * chunk
    grid = (-(-rows // BLOCK_ROWS),)
    _kernel()[grid](out, weights, *parts, *strides, out.stride(1), out.stride(2), rows, chunk,
                    NUM_PARTS=len(outs), HEAD_DIM=head_dim, BLOCK=BLOCK_ROWS)
    return out
