"""The knobs a run takes, typed and passed in: ExecutionSettings (what the engine needs from a plan) and
RunOptions (how the run is driven: tracing, logits, warm-up, progress, host RAM, debugging).

No module of the executor keeps switches in mutable globals: a benchmark that varies a knob passes a
different ExecutionSettings. Leaves out: the plan itself (planner/plan.py) and its conversion
(executor/api.py settings_from_plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

from planner.host_time import CUDNN_SPLIT_CHUNK_MIN_TOKENS, PAST_BLOCK_TOKENS

SPLIT_CHUNK_BACKENDS = ("flash", "cudnn")


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """Knobs of the "cudnn-split" prefill attention (attention/split.py). The defaults are the planner's own
    constants (planner/host_time.py), imported rather than repeated, so the two cannot drift apart."""

    past_block_tokens: int = PAST_BLOCK_TOKENS
    """B: the past is cut into binary multiples of B tokens for cuDNN (a multiple of 128 keeps them aligned)"""
    chunk_backend: Optional[str] = None
    """kernel of the square chunk-vs-itself part: "flash" or "cudnn"; None: cuDNN for chunks of at least
    CUDNN_SPLIT_CHUNK_MIN_TOKENS, else flash (the rule the planner prices)"""
    fused_merge: bool = True
    """merge the parts in one Triton pass where it runs (attention/merge_triton.py); False: the eager float32
    merge"""

    def __post_init__(self) -> None:
        if self.past_block_tokens < 1:
            raise ValueError(f"past_block_tokens must be >= 1, got {self.past_block_tokens}")
        if self.chunk_backend not in (None, *SPLIT_CHUNK_BACKENDS):
            raise ValueError(f"chunk_backend must be None or one of {SPLIT_CHUNK_BACKENDS}, got "
                             f"{self.chunk_backend!r}")

    def chunk_backend_for(self, chunk_tokens: int) -> str:
        """Kernel of the chunk-vs-itself part for a chunk of ``chunk_tokens`` queries. The rule: on the H100,
        128K prefill of the 8B shape, 8K chunks took 12.03 s with the cuDNN chunk part against 12.53 s with
        flash; 4K chunks 13.04 s against 12.74 s."""
        if self.chunk_backend is not None:
            return self.chunk_backend
        return "cudnn" if chunk_tokens >= CUDNN_SPLIT_CHUNK_MIN_TOKENS else "flash"


@dataclass(frozen=True)
class ExecutionSettings:
    """What the executor core needs from a plan (keyword-only, validated by KVLayout)."""

    chunk_size: int
    """prefill chunk length c (tokens); decode uses 1"""
    heads_per_group: int
    """G: offloaded KV heads streamed together (the last group of a layer may be smaller)"""
    resident_kv_heads: int
    """R: (layer, KV head) slots kept on the GPU over all layers, spread by planner/layout.py"""
    capacity_tokens: int
    """T: tokens the stores hold (context + new tokens)"""
    attention_backend: str = "flash"
    """attention/kernels.py backend: flash | flash_attn | cudnn-split | math"""
    decode_graphs: bool = True
    """decode through the static step where it applies (generation/decode_graph.py), replayed as a CUDA graph on a
    GPU"""
    split: SplitOptions = field(default_factory=lambda: SplitOptions())
    """how "cudnn-split" cuts and merges (attention/split.py); the defaults are what the planner prices"""



class PastLoader(Protocol):
    """Fills the stores' first rows from a saved context (kv/context_load.py ContextLoader)."""

    path: Any

    def reusable_tokens(self, prompt_ids: Sequence[int]) -> int:
        """N: prompt tokens whose K, V can be loaded (at most len(prompt_ids) - 1)."""

    def load(self, rows: Any, tokens: int) -> Any:
        """Copy tokens [0, N) into ``rows`` (kv/rows.py KVRows); returns a result with nbytes and load_s."""


class KVSaver(Protocol):
    """Writes the prompt's K, V from the stores after the run (kv/context_save.py, bound to a folder)."""

    def __call__(self, rows: Any, prompt_ids: Sequence[int]) -> Any:
        """Save tokens [0, len(prompt_ids)) of ``rows``; returns a result with nbytes and save_s."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How generation.runner.execute drives one run (every field optional)."""

    trace: bool = False
    """record per-group events for a timeline (report/plots.py write_trace)"""
    keep_logits: bool = False
    """keep each step's last-position logits (float32, for verification)"""
    on_chunk: Optional[Callable[[int], None]] = None
    """called with a prefill chunk index once that chunk has finished (progress bars)"""
    host_available_bytes: Optional[int] = None
    """host RAM the stores may take (None: MemAvailable)"""
    sync_debug: bool = False
    """CUDA: run the loops under torch.cuda.set_sync_debug_mode("error"), so a host sync raises (tests)"""
    warmup: Optional[bool] = None
    """one tiny run through the same path first (None: on CUDA only)"""
    synthetic_past_tokens: int = 0
    """a timing probe: the first N tokens' K, V are zero-filled instead of computed (generation/runner.py)"""
    past_loader: Optional[PastLoader] = None
    """--load-kv: after the stores are built, the prompt's longest common prefix with a saved context (N tokens, at
    most n - 1) is loaded into rows [0, N) and the prefill runs tokens [N, n) only (generation/runner.py)"""
    kv_saver: Optional[KVSaver] = None
    """--save-kv: after the run (stores synchronised, before they are released) the prompt's K, V are saved"""
