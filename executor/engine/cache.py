"""OffloadCache: the transformers Cache that the head-offloaded attention works with.

transformers 5.x calls ``Cache.update(k, v, layer_idx)`` with the chunk's k, v [1, H_kv, c, d] (after RoPE)
before the attention function, and reads ``get_seq_length()`` at the start of each forward to build the
position ids. This cache stores nothing itself: each layer counts its tokens (so position ids continue from
the tokens already cached) and hands the chunk's k, v through unchanged; the registered attention function
(engine/registration.py, engine/offload.py) writes them into the resident store, the ping-pong slots and the host store.
Leaves out: cropping, beam reordering, batch > 1.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


def with_cache(model, cache) -> dict:
    """The forward's keyword for the cache, ``{name: cache}``: transformers 5.24 renamed ``past_key_values`` to
    ``cache`` (the old name still works there, with a FutureWarning; 5.17 knows only the old one)."""
    return {_cache_keyword(type(model)): cache}


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


class OffloadLayer(CacheLayerMixin):
    """Token count of one layer; ``past_tokens`` is s for the chunk being processed: keys [0, s) are cached."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity_tokens: int):
        super().__init__()
        self.capacity_tokens = capacity_tokens
        self.tokens = 0
        self.past_tokens = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Count the chunk's c tokens; return its k, v [1, H_kv, c, d] unchanged for the attention function."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        chunk_tokens = key_states.shape[-2]
        if self.tokens + chunk_tokens > self.capacity_tokens:
            raise ValueError(f"KV store capacity {self.capacity_tokens} tokens exceeded: "
                             f"{self.tokens} cached + {chunk_tokens} new")
        self.past_tokens = self.tokens
        self.tokens += chunk_tokens
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.tokens

    def get_max_length(self) -> int:
        return self.capacity_tokens

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` processed without update() (a replayed CUDA-graph decode step, or the
        synthetic past of a timing probe: runner.execute's ``synthetic_past_tokens``)."""
        if self.tokens + tokens > self.capacity_tokens:
            raise ValueError(f"KV store capacity {self.capacity_tokens} tokens exceeded: "
                             f"{self.tokens} cached + {tokens} new")
        self.past_tokens = self.tokens + tokens - 1
        self.tokens += tokens

    def reset(self) -> None:
        self.tokens = self.past_tokens = 0


class OffloadCache(Cache):
    """One OffloadLayer per decoder layer, plus the engine that owns the KV stores (``engine``)."""

    def __init__(self, num_layers: int, capacity_tokens: int, engine=None, *, drives_phase: bool = False):
        super().__init__(layers=[OffloadLayer(capacity_tokens) for _ in range(num_layers)])
        self.engine = engine
        self.drives_phase = drives_phase
        """True under model.generate: the attention function tells the engine prefill (c > 1) or decode (c = 1)"""

    @property
    def capacity_tokens(self) -> int:
        return self.layers[0].capacity_tokens

    def past_tokens(self, layer_idx: int) -> int:
        """s for the chunk now in layer ``layer_idx``: tokens cached before it."""
        return self.layers[layer_idx].past_tokens

    def token_counts(self) -> list[tuple[int, int]]:
        """(tokens, past_tokens) of each layer, to put back with restore_counts."""
        return [(layer.tokens, layer.past_tokens) for layer in self.layers]

    def restore_counts(self, counts: list[tuple[int, int]]) -> None:
        for layer, (tokens, past) in zip(self.layers, counts):
            layer.tokens, layer.past_tokens = tokens, past

    def advance(self, tokens: int) -> None:
        """Every layer counts ``tokens`` more (processed by a replayed graph, which calls no update(), or a
        synthetic past whose rows were filled with a pattern instead of computed)."""
        for layer in self.layers:
            layer.advance(tokens)
