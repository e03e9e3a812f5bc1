"""Reference arithmetic the CPU and GPU tests share."""

from __future__ import annotations

import torch


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                        softcap: float | None = None, window: int | None = None) -> torch.Tensor:
    """Float64 attention of q [1, Hq, c, d] over k, v [1, G, S, d] (GQA by repeating KV heads), lower-right causal:
    query i (position S - c + i) sees key j iff j <= S - c + i and, with a window W, j > S - c + i - W; scores
    soft-capped as cap * tanh(x / cap). Returns [1, Hq, c, d] in float64 on q's device."""
    q, k, v = q.double(), k.double(), v.double()
    ratio = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(ratio, 1), v.repeat_interleave(ratio, 1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    c, n = q.shape[2], k.shape[2]
    qpos = torch.arange(c, device=q.device)[:, None] + n - c
    kpos = torch.arange(n, device=q.device)[None, :]
    visible = kpos <= qpos
    if window is not None:
        visible &= kpos > qpos - window
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v


def half_precision_errors(measurement, model16, ids: torch.Tensor, device="cpu", *,
                          exact_dtype: torch.dtype = torch.float64, reference=None) -> tuple[float, float]:
    """(headplan's error, the standard half-precision forward's own error): max |ours - exact| and
    max |standard16 - exact| over the step logits of ``measurement``'s tokens, ``exact`` the ``exact_dtype`` forward
    of the same weights (same_weights). ``reference(model, ids, tokens, device)`` gives a standard forward's step
    logits (default executor/report/verify.py standard_step_logits)."""
    if reference is None:
        from executor.report.verify import standard_step_logits as reference
    tokens = measurement.generated_token_ids
    exact = reference(same_weights(model16, exact_dtype), ids, tokens, device).double()
    standard16 = reference(model16, ids, tokens, device).double()
    ours = measurement.step_logits.double()
    return (ours - exact).abs().max().item(), (standard16 - exact).abs().max().item()


def same_weights(model, dtype: torch.dtype):
    """A copy of ``model`` whose floating-point parameters and buffers are cast to ``dtype``: the same weights at
    another precision, the reference of a bf16 run (float64 or float32 holds every bf16 value exactly). A model
    built again in another dtype from the same seed is NOT that: its random initialisation draws other values (on
    torch 2.13 a tiny Llama's weights differ by up to 0.15), so its logits are another model's."""
    import copy

    twin = copy.deepcopy(model)
    for tensor in (*twin.parameters(), *twin.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)
    return twin
