"""A timing probe's share of the prefill (headplan run --tail-chunks K): which chunks run, which are timed, how many
tokens of synthetic past stand in for the chunks before them, and what that past holds (``synthetic_past_rows``:
a fixed random pattern; the runner's ``synthetic_past_tokens`` writes it into the stores, generation/runner.py).

Why random and not zeros: the GPU's clock under its power limit depends on the data. On the H200 (2026-12-01,
benchmarks/sustained_probe.py) cuDNN attention over zero K, V drew 140 W less and ran 693 TFLOP/s sustained
against 596 over random ones, and the 512K and 1M probes over a zero past ran their chunks 9-23% faster than a whole
prefill of the same chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PATTERN_ROWS = 4096
"""rows of the synthetic past's pattern: position p holds row p % PATTERN_ROWS (a kernel's key tile never meets
the same rows twice within 4096 keys)"""
PATTERN_SEED = 0


@dataclass(frozen=True)
class TailSplit:
    """A timing probe's share of the prefill: the last ``chunks`` of ``total_chunks`` chunks are timed, after
    ``lead_in`` (0 or 1) untimed chunk before them; the K, V of tokens [0, skipped_tokens) (the start of the first
    chunk run, a multiple of the chunk size) are the synthetic pattern (synthetic_past_rows).

    The lead-in chunk pays what a whole prefill pays gradually as each shape first appears (cuDNN's graph builds
    for the past blocks of that context: measured on the H100, 1B at 2M tokens, the first chunk run took 1.20 s
    against 0.58 s for the next five) and the planner prices at the chunks where those shapes appear."""

    chunks: int
    total_chunks: int
    skipped_tokens: int
    lead_in: int = 0

    @property
    def run_chunks(self) -> int:
        """Chunks the probe runs: the lead-in and the timed ones."""
        return self.chunks + self.lead_in


def tail_split(prompt_tokens: int, chunk_size: int, tail_chunks: Optional[int]) -> Optional[TailSplit]:
    """The last ``tail_chunks`` of the chunks starting at range(0, prompt_tokens, chunk_size), with one untimed
    lead-in chunk before them; None when ``tail_chunks`` is None or covers every chunk (then the run is a whole
    one). ValueError when it is below 1."""
    if tail_chunks is None:
        return None
    if tail_chunks < 1:
        raise ValueError(f"tail_chunks must be at least 1, got {tail_chunks}")
    starts = range(0, prompt_tokens, chunk_size)
    if tail_chunks >= len(starts):
        return None
    return TailSplit(chunks=tail_chunks, total_chunks=len(starts), skipped_tokens=starts[-tail_chunks - 1],
                     lead_in=1)


def check_tail_request(tail_chunks: Optional[int], verify: bool) -> None:
    """ValueError unless ``tail_chunks`` is None or >= 1 and not asked together with ``verify`` (the synthetic
    past makes the outputs not the model's). The CLI calls it before loading anything."""
    if tail_chunks is None:
        return
    if tail_chunks < 1:
        raise ValueError(f"--tail-chunks must be at least 1, got {tail_chunks}")
    if verify:
        raise ValueError("--verify needs the whole prefill: --tail-chunks fills the earlier chunks' KV with a "
                         "synthetic pattern, so the outputs are not the model's")


def synthetic_pattern(head_dim: int, dtype, device="cpu"):
    """(keys, values), each [PATTERN_ROWS, head_dim] of ``dtype`` on ``device``: two standard-normal patterns drawn
    with seed PATTERN_SEED, the same for every layer and KV head."""
    import torch

    generator = torch.Generator().manual_seed(PATTERN_SEED)
    return tuple(torch.randn(PATTERN_ROWS, head_dim, generator=generator).to(device=device, dtype=dtype)
                 for _ in range(2))


def synthetic_past_rows(tokens: int, head_dim: int, dtype, device="cpu"):
    """(keys, values) of a synthetic past of ``tokens`` positions, each [tokens, head_dim]: row p is row
    p % PATTERN_ROWS of synthetic_pattern (what fill_synthetic_rows writes; a reference cache is built from it:
    tests/cpu/test_tail_chunks.py)."""
    repeats = -(-tokens // PATTERN_ROWS)
    return tuple(block.repeat(repeats, 1)[:tokens] for block in synthetic_pattern(head_dim, dtype, device))


def fill_synthetic_rows(rows, tokens: int, pattern) -> None:
    """Write the synthetic past into rows [0, min(tokens, T)) of a store view ``rows`` [h, T, d] (in place, nothing
    allocated beyond the pattern): the pattern [PATTERN_ROWS, d] (on rows' device) into its first rows, then the
    filled prefix copied after itself, doubling, so row p = pattern[p % PATTERN_ROWS] (the prefix's length stays
    a multiple of PATTERN_ROWS while it doubles)."""
    heads, capacity, head_dim = rows.shape
    tokens = min(tokens, capacity)          # a sliding window's ring holds fewer rows than the past
    filled = min(tokens, pattern.shape[0])
    rows[:, :filled].copy_(pattern[:filled].expand(heads, filled, head_dim))
    while filled < tokens:
        step = min(filled, tokens - filled)
        rows[:, filled:filled + step].copy_(rows[:, :step])
        filled += step
