"""The head-offloaded attention as transformers sees it: an AttentionInterface function, registered explicitly.

``offload_attention_selected(model)`` registers the function (once per process: ``register_offload_attention``)
and switches the model's attention implementation to it for the duration, restoring the previous one after.
Nothing registers on import. Under ``model.generate`` (executor/api.py offloaded_cache) the cache is bound with
``bound_cache`` instead of passed. The function receives q [1, H_q, c, d] and the chunk's k, v [1, H_kv, c, d] from
the unmodified model code, hands them to the engine of the OffloadCache passed as ``headplan_cache=`` (engine/
offload.py OffloadEngine, or parallel/staged_engine.py StagedEngine over several GPUs), and returns
([1, c, H_q, d], None).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Optional

import torch

ATTENTION_NAME = "headplan_offload"

_BOUND_CACHE: contextvars.ContextVar = contextvars.ContextVar("headplan_bound_cache", default=None)
"""The OffloadCache of a ``bound_cache`` block: how the function finds its engine under ``model.generate``, which
refuses model keywords it does not know (``headplan_cache=``)."""


def headplan_offload_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                               dropout: float = 0.0, headplan_cache=None, softcap: Optional[float] = None,
                               sliding_window: Optional[int] = None, **kwargs):
    """AttentionInterface entry: q [1, H_q, c, d], chunk k, v [1, H_kv, c, d] -> ([1, c, H_q, d], None).

    Needs ``headplan_cache=`` (an OffloadCache with its engine) passed to ``model(...)``; the mask is ignored
    (None for a registered implementation: the engine owns causality and the window). ``softcap`` and
    ``sliding_window``: what Gemma-2 (softcap, sliding_window) and Mistral (sliding_window) pass for the layer.
    """
    headplan_cache = headplan_cache if headplan_cache is not None else _BOUND_CACHE.get()
    if headplan_cache is None or getattr(headplan_cache, "engine", None) is None:
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} runs only inside executor.api.run_plan "
                           "or executor.api.offloaded_cache (model(..., headplan_cache=cache) with an OffloadCache)")
    if query.shape[0] != 1:
        raise ValueError(f"head-offloaded attention runs batch 1, got batch {query.shape[0]}")
    layer = module.layer_idx
    scale = scaling if scaling is not None else module.scaling
    if headplan_cache.drives_phase and layer == 0:  # under generate(): no loop tells the engine where it is
        position = headplan_cache.engine.position
        position.phase, position.chunk = ("prefill" if query.shape[2] > 1 else "decode"), None
    output = headplan_cache.engine.attend_layer(layer, query, key, value,  # a StagedEngine routes by stage
                                                past_tokens=headplan_cache.past_tokens(layer), scale=scale,
                                                softcap=softcap, sliding_window=sliding_window)
    return output, None


@contextlib.contextmanager
def bound_cache(cache):
    """Within the block, the attention function uses ``cache`` when no ``headplan_cache=`` is passed."""
    token = _BOUND_CACHE.set(cache)
    try:
        yield cache
    finally:
        _BOUND_CACHE.reset(token)


def register_offload_attention() -> str:
    """Register the function with transformers' AttentionInterface under ATTENTION_NAME (idempotent); returns
    the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, headplan_offload_attention)
    return ATTENTION_NAME


@contextlib.contextmanager
def offload_attention_selected(model):
    """Select the registered head-offloaded attention for the duration; restore the previous one after."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(register_offload_attention())
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
