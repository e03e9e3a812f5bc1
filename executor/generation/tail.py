"""A timing probe's share of the prefill (headplan run --tail-chunks K): which chunks run, which are timed, how many
tokens of zero-filled past stand in for the chunks before them. The runner's ``synthetic_past_tokens`` does the
zero-filling (generation/runner.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TailSplit:
    """A timing probe's share of the prefill: the last ``chunks`` of ``total_chunks`` chunks are timed, after
    ``lead_in`` (0 or 1) untimed chunk before them; the K, V of tokens [0, skipped_tokens) (the start of the first
    chunk run, a multiple of the chunk size) are zero-filled.

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
    """ValueError unless ``tail_chunks`` is None or >= 1 and not asked together with ``verify`` (the zero-filled
    past makes the outputs not the model's). The CLI calls it before loading anything."""
    if tail_chunks is None:
        return
    if tail_chunks < 1:
        raise ValueError(f"--tail-chunks must be at least 1, got {tail_chunks}")
    if verify:
        raise ValueError("--verify needs the whole prefill: --tail-chunks zero-fills the earlier chunks' KV, so the "
                         "outputs are not the model's")
