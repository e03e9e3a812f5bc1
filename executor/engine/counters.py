"""What the engine counts and where it is: PhaseCounters (the work one phase queued: bytes moved, attention FLOPs,
the host share's reads and times) and Position (phase, chunk, layer, for fault messages). Filled by
engine/offload.py OffloadEngine, summed over stages and ranks by PhaseCounters.summed, read by
generation/measurement.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass
class PhaseCounters:
    """Work done in one phase (prefill or decode), counted on the host as the work is queued."""

    h2d_bytes: int = 0
    d2h_bytes: int = 0
    attention_flops: float = 0.0
    group_fetches: int = 0
    host_attention_bytes: int = 0
    """KV bytes the CPU read for its share of decode attention (engine/host_share.py)"""
    host_attention_s: float = 0.0
    """the CPU worker's kernel seconds for those bytes (wall time after its event wait, summed over layers)"""
    host_attention_calls: int = 0
    """layers whose host share ran (one worker job each)"""
    host_attention_start_delay_s: float = 0.0
    """end of submit -> the job's start, summed (worker wake-up, event wait, GIL; engine/host_share.py)"""
    host_join_wait_s: float = 0.0
    """the main thread's waits for the worker's result in collect, summed"""

    @staticmethod
    def summed(per_phase: "list[dict[str, PhaseCounters]]") -> "dict[str, PhaseCounters]":
        """Per phase, every field summed over several engines' (stages', ranks') counters."""
        total: dict[str, PhaseCounters] = {}
        for counters in per_phase:
            for phase, c in counters.items():
                t = total.setdefault(phase, PhaseCounters())
                for f in dataclasses.fields(PhaseCounters):
                    setattr(t, f.name, getattr(t, f.name) + getattr(c, f.name))
        return total


@dataclass
class Position:
    """Where the loop is (for fault messages): phase, chunk index and layer."""

    phase: str = "setup"
    chunk: Optional[int] = None
    layer: Optional[int] = None

    def describe(self) -> str:
        parts = [f"phase {self.phase}"]
        if self.chunk is not None:
            parts.append(f"{'token' if self.phase == 'decode' else 'chunk'} {self.chunk}")
        if self.layer is not None:
            parts.append(f"layer {self.layer}")
        return ", ".join(parts)
