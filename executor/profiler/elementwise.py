"""The memory-bound ops of a transformers Llama layer as they run in eager PyTorch: their achieved bandwidth.

The planner prices a chunk's norms, RoPE, layout copies, residual adds and SwiGLU product by the bytes they move,
planner/layer_time.elementwise_bytes_per_token(model) per token per layer, over a bandwidth. The streaming HBM
rate is too fast for them: RoPE runs on head-transposed (strided) tensors through PyTorch's non-vectorized
kernels, RMSNorm through float32 copies. On the H100 the elementwise kernels of a 128K 8B prefill took 1.28 s
against 0.76 s at the HBM read rate (benchmarks/results/2026-11-22-h100/kernels-prefill-128k-24gb.json).

This section runs those ops on one chunk of c tokens of a Llama-3-8B-shaped layer (Llama-3.2-1B-shaped on CPU,
tiny in tiny mode), with transformers' own modules and functions where they exist, in the layouts the model
and the executor produce them:

    h = RMSNorm(x); q, k = apply_rotary_pos_emb(q, k, cos, sin)   q [1, H_q, c, d], k [1, H_kv, c, d]: views of
    k.contiguous(), v.contiguous() (the executor's write)          [1, c, H, d] projections, as transformers has them
    x + h (twice); RMSNorm(x); act(gate) * up                      gate, up [1, c, I]

    elementwise_bytes_per_s = elementwise_bytes_per_token(layer) * c / (median seconds of the ops)
    compiled_elementwise_bytes_per_s: the same with the norm and the SwiGLU product torch.compile'd (CUDA only),
    over the same eager byte count (the fused kernels move fewer bytes: the rate says how much faster)

Leaves out: the matmuls (matmul.py) and the attention (attention.py, attention_step.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from executor.profiler.context import ProfileContext, compute_dtype
from planner.layer_time import elementwise_bytes_per_token

LAYER_SHAPES = {  # hidden D, intermediate I, query heads, KV heads, head dim d; chunk c tokens
    "gpu": (4096, 14336, 32, 8, 128, 4096),
    "cpu": (2048, 8192, 32, 8, 64, 256),
    "tiny": (256, 512, 8, 4, 32, 64),
}


def layer_ops(dim: int, inter: int, q_heads: int, kv_heads: int, head_dim: int, chunk: int, device, dtype,
              compiled: bool = False):
    """A callable running one layer's memory-bound ops on fresh random inputs, and its byte count per token.
    ``compiled``: the RMSNorm module and the SwiGLU product torch.compile'd, as a --compile-layers run has them
    (generation/compiled_layers.py compiles the norm modules and the whole MLP, whose product is this)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=dim, intermediate_size=inter, num_attention_heads=q_heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=max(chunk, 8192))
    norm = LlamaRMSNorm(dim, eps=config.rms_norm_eps).to(device=device, dtype=dtype)
    rotary = LlamaRotaryEmbedding(config=config).to(device)
    act = torch.nn.functional.silu

    def swiglu(gate, up):
        return act(gate) * up

    if compiled:
        norm.compile()
        swiglu = torch.compile(swiglu)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    x, attn_out, mlp_out = rand(1, chunk, dim), rand(1, chunk, dim), rand(1, chunk, dim)
    q = rand(1, chunk, q_heads * head_dim).view(1, chunk, q_heads, head_dim).transpose(1, 2)
    k = rand(1, chunk, kv_heads * head_dim).view(1, chunk, kv_heads, head_dim).transpose(1, 2)
    v = rand(1, chunk, kv_heads * head_dim).view(1, chunk, kv_heads, head_dim).transpose(1, 2)
    gate, up = rand(1, chunk, inter), rand(1, chunk, inter)
    cos, sin = rotary(v, torch.arange(chunk, device=device)[None])

    def ops():
        norm(x)
        q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
        k_rot[0].contiguous()
        v[0].contiguous()
        hidden = x + attn_out
        norm(hidden)
        swiglu(gate, up)
        return hidden + mlp_out

    shape = SimpleNamespace(hidden_size=dim, intermediate_size=inter, num_attention_heads=q_heads,
                            num_key_value_heads=kv_heads, head_dim=head_dim)
    return ops, elementwise_bytes_per_token(shape, torch.tensor([], dtype=dtype).element_size())


def measure_elementwise(ctx: ProfileContext) -> dict:
    """{"elementwise_bytes_per_s", "spread_rel"} or {} when the layer's tensors do not fit."""
    kind = "tiny" if ctx.preset.mode == "tiny" else ("gpu" if ctx.on_gpu else "cpu")
    dim, inter, q_heads, kv_heads, head_dim, chunk = LAYER_SHAPES[kind]
    dtype = compute_dtype(ctx.device)
    element = torch.tensor([], dtype=dtype).element_size()
    if not ctx.fits(12 * chunk * (dim + inter) * max(element, 4)):
        ctx.note("elementwise ops not measured: no room for one chunk's tensors")
        return {}
    ops, bytes_per_token = layer_ops(dim, inter, q_heads, kv_heads, head_dim, chunk, ctx.device, dtype)
    with torch.inference_mode():
        stats = ctx.time(ops)
    rate = stats.rate(bytes_per_token * chunk)
    ctx.progress("elementwise", f"layer ops D{dim} I{inter} {q_heads}q/{kv_heads}kv d{head_dim} c{chunk}",
                 f"{rate / 1e9:.0f} GB/s", stats)
    result = {"elementwise_bytes_per_s": rate, "spread_rel": stats.spread_rel}
    if ctx.on_gpu:  # the compiled path (--compile-layers) on CUDA only: CPU runs default to eager
        result.update(_measure_compiled(ctx, (dim, inter, q_heads, kv_heads, head_dim, chunk), dtype))
    return result


def _measure_compiled(ctx: ProfileContext, shape: tuple, dtype) -> dict:
    """{"compiled_elementwise_bytes_per_s", "compiled_spread_rel"} of the same ops with the norm and SwiGLU
    compiled, over the same byte count; {} where torch.compile fails here (noted)."""
    try:
        ops, bytes_per_token = layer_ops(*shape, ctx.device, dtype, compiled=True)
        with torch.inference_mode():
            ops()  # the compile, outside the timing
            stats = ctx.time(ops)
    except Exception as exc:  # noqa: BLE001 - no working compiler here: the planner prices compile at eager
        ctx.note(f"compiled elementwise ops not measured: {type(exc).__name__}: {exc}")
        return {}
    rate = stats.rate(bytes_per_token * shape[5])
    ctx.progress("elementwise", "same, norm + SwiGLU compiled", f"{rate / 1e9:.0f} GB/s", stats)
    return {"compiled_elementwise_bytes_per_s": rate, "compiled_spread_rel": stats.spread_rel}
