"""The four strategies as points of one space (chunk size c, heads per group G, resident slots R), and the
candidate values the solver enumerates.

    standard       R = L * H_kv (nothing offloaded), c = context (one forward over the prompt)
    chunked        R = L * H_kv, c < context
    layer-offload  R = 0, G = H_kv (a whole layer's KV streamed at a time)
    head-offload   anything else: 0 <= R < L * H_kv, G a divisor of H_kv

Chunk sizes come from a ladder (1K .. 64K, powers of two and the steps between), capped at the context; G
from the divisors of H_kv; R is not enumerated: for each (c, G) the solver takes the most that fits (decode
time only falls with R) and the multiple of L below it (whole heads per layer; guards against shape effects).
Leaves out: costs (memory_model, time_model) and the choice (solver).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from planner.errors import PlanError
from planner.model_spec import ModelSpec
from planner.plan import STRATEGIES
from planner.units import format_tokens

K_TOKENS = 1024
CHUNK_LADDER_TOKENS = tuple(k * K_TOKENS for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))


@dataclass(frozen=True)
class Knobs:
    """User-fixed knobs (None = auto) and a forced strategy (None = any)."""

    chunk_size: Optional[int] = None
    heads_per_group: Optional[int] = None
    resident_kv_heads: Optional[int] = None
    strategy: Optional[str] = None
    attention_backend: Optional[str] = None
    """'flash', 'cudnn-split' or 'flex' to force the prefill attention kernel; None = the faster by the profile
    (soft-capped or windowed models: always 'flex')"""


def strategy_of(model: ModelSpec, *, context_tokens: int, chunk_size: int, heads_per_group: int,
                resident_kv_heads: int) -> str:
    """The strategy name of a point of the space."""
    if resident_kv_heads >= model.kv_head_slots:
        return "standard" if chunk_size >= context_tokens else "chunked"
    if resident_kv_heads == 0 and heads_per_group >= model.num_key_value_heads:
        return "layer-offload"
    return "head-offload"


def check_knobs(model: ModelSpec, context_tokens: int, knobs: Knobs) -> None:
    """Reject knob values that no plan can honour (one readable line)."""
    kv_heads = model.num_key_value_heads
    if knobs.strategy is not None and knobs.strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy {knobs.strategy!r}; use one of {', '.join(STRATEGIES)}")
    if knobs.heads_per_group is not None and (knobs.heads_per_group <= 0 or kv_heads % knobs.heads_per_group):
        divisors = ", ".join(str(g) for g in group_candidates(model, Knobs()))
        raise PlanError(f"--heads-per-group {knobs.heads_per_group} must divide the {kv_heads} KV heads of "
                        f"{model.name} (one of {divisors})")
    if knobs.resident_kv_heads is not None and not 0 <= knobs.resident_kv_heads <= model.kv_head_slots:
        raise PlanError(f"--resident-heads {knobs.resident_kv_heads} must be between 0 and "
                        f"{model.kv_head_slots} (L_full * H_kv = {model.full_attention_layers} * {kv_heads}: "
                        f"the full-attention layers' slots)")
    if knobs.chunk_size is not None and knobs.chunk_size <= 0:
        raise PlanError(f"--chunk-size must be positive, got {knobs.chunk_size}")


def chunk_candidates(context_tokens: int, knobs: Knobs) -> list[int]:
    """Chunk sizes to try: the fixed one (capped at the context) or the ladder below the context, plus the
    context itself when it is no longer than the ladder's top (a single chunk)."""
    if knobs.chunk_size is not None:
        return [min(knobs.chunk_size, context_tokens)]
    sizes = [c for c in CHUNK_LADDER_TOKENS if c < context_tokens]
    if context_tokens <= CHUNK_LADDER_TOKENS[-1] or not sizes:
        sizes.append(context_tokens)
    return sizes


def group_candidates(model: ModelSpec, knobs: Knobs) -> list[int]:
    """Heads per group to try: the fixed one or every divisor of H_kv."""
    if knobs.heads_per_group is not None:
        return [knobs.heads_per_group]
    kv_heads = model.num_key_value_heads
    return [g for g in range(1, kv_heads + 1) if kv_heads % g == 0]


def allowed(strategy: str, model: ModelSpec, context_tokens: int, knobs: Knobs) -> bool:
    """Whether fixed knobs leave any point of ``strategy``."""
    if knobs.strategy is not None and knobs.strategy != strategy:
        return False
    all_slots, kv_heads = model.kv_head_slots, model.num_key_value_heads
    c, g, r = knobs.chunk_size, knobs.heads_per_group, knobs.resident_kv_heads
    if strategy in ("standard", "chunked"):
        if r is not None and r != all_slots:
            return False
        if strategy == "standard":
            return c is None or c >= context_tokens
        return c is None or c < context_tokens
    if r is not None and r >= all_slots:
        return False
    if all_slots == 0:  # every layer slides (Mistral v0.1): nothing grows with the context, nothing to offload
        return False
    if strategy == "layer-offload":
        return (r is None or r == 0) and (g is None or g == kv_heads)
    return not (r == 0 and g == kv_heads)


def describe_knobs(knobs: Knobs) -> str:
    """'chunk 8K, G=2' style text of the fixed knobs, for messages."""
    parts = []
    if knobs.chunk_size is not None:
        parts.append(f"chunk {format_tokens(knobs.chunk_size)}")
    if knobs.heads_per_group is not None:
        parts.append(f"G={knobs.heads_per_group}")
    if knobs.resident_kv_heads is not None:
        parts.append(f"R={knobs.resident_kv_heads}")
    if knobs.strategy is not None:
        parts.append(f"strategy {knobs.strategy}")
    return ", ".join(parts)
