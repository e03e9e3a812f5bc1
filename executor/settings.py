"""The knobs a run takes, typed and passed in: ExecutionSettings (what the engine needs from a plan) and
RunOptions (how the run is driven: tracing, logits, warm-up, progress, host RAM, debugging).

No module of the executor keeps switches in mutable globals: a benchmark that varies a knob passes a
different ExecutionSettings. Leaves out: the plan itself (planner/plan.py) and its conversion
(executor/api.py settings_from_plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

from planner.host_time import PAST_BLOCK_TOKENS, PAST_CUTS, chunk_part_backend

SPLIT_CHUNK_BACKENDS = ("flash", "cudnn")
SPLIT_CHUNK_PARTS = ("layer", "group")


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
    past_cut: str = "binary"
    """how the past's full blocks [0, B floor(s / B)) go to cuDNN (planner/host_time.py PAST_CUTS): "binary", one
    call per set bit of s // B (at most log2(s / B) + 1 key lengths in a run); "whole", one call per chunk
    (fewer, larger calls: 31 instead of 48 per attention call of a 128K prefill in 8K chunks; one key length per
    chunk, whose cuDNN graphs the warm-up builds: attention/split.py warm_up_whole_past)"""
    chunk_part: str = "layer"
    """where the chunk-vs-itself causal part is computed (SPLIT_CHUNK_PARTS): "layer", once per layer for all query
    heads (attention/split.py chunk_part; each head set then attends only its past and merges); "group", inside
    every head set's call, as attend_chunk_split does (the earlier arrangement, kept for comparison)"""

    def __post_init__(self) -> None:
        if self.chunk_part not in SPLIT_CHUNK_PARTS:
            raise ValueError(f"chunk_part must be one of {SPLIT_CHUNK_PARTS}, got {self.chunk_part!r}")
        if self.past_block_tokens < 1:
            raise ValueError(f"past_block_tokens must be >= 1, got {self.past_block_tokens}")
        if self.past_cut not in PAST_CUTS:
            raise ValueError(f"past_cut must be one of {PAST_CUTS}, got {self.past_cut!r}")
        if self.chunk_backend not in (None, *SPLIT_CHUNK_BACKENDS):
            raise ValueError(f"chunk_backend must be None or one of {SPLIT_CHUNK_BACKENDS}, got "
                             f"{self.chunk_backend!r}")

    def chunk_backend_for(self, chunk_tokens: int) -> str:
        """Kernel of the chunk-vs-itself part for a chunk of ``chunk_tokens`` queries. The rule: on the H100,
        128K prefill of the 8B shape, 8K chunks took 12.03 s with the cuDNN chunk part against 12.53 s with
        flash; 4K chunks 13.04 s against 12.74 s."""
        return chunk_part_backend(self.chunk_backend, chunk_tokens)


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
    cpu_share: float = 0.0
    """F in [0, 1]: in decode, each offloaded head's past [0, floor(F s)) is attended on the CPU straight from the
    host store (engine/host_share.py) and only [floor(F s), s) crosses PCIe; 0: everything streams"""
    host_attention_threads: Optional[int] = None
    """CPU threads of that host share's kernel (None: engine/host_share.py default_host_threads, the cores less one
    for the main thread, which issues the GPU's work meanwhile)"""
    compile_layers: bool = False
    """prefill runs every decoder layer's RMSNorms and MLP, and the final norm, through torch.compile (fused
    elementwise kernels; generation/compiled_layers.py); the registered attention function stays outside the
    graphs, decode runs them eagerly, the first compile of each shape is paid in the warm-up. Off by default:
    it needs a working compiler (Triton on CUDA, a C++ compiler on CPU)"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be in [0, 1], got {self.cpu_share}")
        if self.host_attention_threads is not None and self.host_attention_threads < 1:
            raise ValueError(f"host_attention_threads must be >= 1, got {self.host_attention_threads}")


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """How each next token is chosen, by transformers' own logits processors and warpers (generation/sampling.py),
    in generate()'s order: repetition penalty, temperature, top-k, top-p; then argmax (temperature 0) or one draw
    from the softmax with a seeded generator on the device."""

    temperature: float = 0.0
    """0: greedy (argmax); > 0: sample from softmax(logits / temperature)"""
    top_p: float = 1.0
    """nucleus sampling: keep the smallest set of tokens whose probability sums to at least top_p (1: off)"""
    top_k: Optional[int] = None
    """keep the k most likely tokens (None: off)"""
    repetition_penalty: float = 1.0
    """> 1 penalises tokens already in the prompt or the answer (1: off)"""
    seed: Optional[int] = None
    """seed of the sampling generator (None: torch's default generator)"""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain_argmax(self) -> bool:
        """Greedy with no processor: the token is argmax(logits), which the CUDA-graph step computes itself."""
        return self.greedy and self.repetition_penalty == 1


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


@dataclass(frozen=True)
class ShareRebalancing:
    """Decode's CPU share F chosen again once during the run (planner/share_rebalance.py): after ``after_tokens``
    decode tokens the runner waits for the host share's jobs, measures the CPU kernel's rate (bytes / kernel
    seconds, every stage), and ``choose(bytes_per_s)`` returns the decision (an object with ``share`` and
    ``reason``: planner.share_rebalance.Rebalance) or None; a new F rebuilds the host share between two tokens."""

    choose: Callable[[float], Optional[Any]]
    after_tokens: int = 4


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
    """a timing probe: the first N tokens' K, V are a fixed random pattern, not computed (generation/tail.py)"""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    """how each next token is chosen (default greedy)"""
    token_stream: Optional[Any] = None
    """a generation/output.py TokenStream: receives each generated token one behind the device, streams the
    text and may end the decode early (end of sequence, a stop string); None: every token, no stop"""
    past_loader: Optional[PastLoader] = None
    """--load-kv: after the stores are built, the prompt's longest common prefix with a saved context (N tokens, at
    most n - 1) is loaded into rows [0, N) and the prefill runs tokens [N, n) only (generation/runner.py)"""
    kv_saver: Optional[KVSaver] = None
    """--save-kv: after the run (stores synchronised, before they are released) the prompt's K, V are saved"""
    share_rebalancing: Optional[ShareRebalancing] = None
    """--rebalance-cpu-share: decode's CPU share chosen again from the kernel rate the run measures"""
