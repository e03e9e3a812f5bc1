"""What loading a saved context (headplan run --load-kv) costs and saves, predicted from the disk figures.

    load_s       = B_load / disk_read_bytes_per_s
                   B_load: the whole segments covering the reused prefix (executor/kv/context_manifest.py);
                   disk-bound: four workers each read, check (CRC-32, 7.5 GB/s per core) and copy a segment, so
                   the checks and copies overlap the other workers' reads (executor/kv/context_load.py)
    save_s       = B_save / disk_write_bytes_per_s      (written straight from the store, fsync'ed)
    replaced_s   = sum over the plan's chunks i of chunk_s[i] * (share of chunk i's tokens below N)
    remaining_s  = prefill_s - replaced_s               (the tokens [N, n) still prefilled)
    saved_s      = replaced_s - load_s
The share rule prices a chunk's tokens equally; attention makes later tokens dearer, so replaced_s is an upper
bound for the first chunks' share and the remaining prefill is a lower bound. No torch (planner).
"""

from __future__ import annotations

from typing import Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field


class ContextLoadPrediction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reused_tokens: int = Field(description="N: prompt tokens whose K, V come from the saved context")
    load_bytes: int = Field(description="bytes read: the whole segments covering [0, N)")
    disk_read_bytes_per_s: Optional[float] = Field(None, description="from the hardware profile (None: not "
                                                   "measured: headplan profile --disk DIR)")
    load_s: Optional[float] = None
    replaced_prefill_s: Optional[float] = Field(None, description="predicted prefill of tokens [0, N)")
    remaining_prefill_s: Optional[float] = Field(None, description="predicted prefill of tokens [N, n)")
    saved_s: Optional[float] = Field(None, description="replaced_prefill_s - load_s")
    speedup: Optional[float] = Field(None, description="replaced_prefill_s / load_s")
    note: str = ""


def replaced_prefill_s(chunk_s: Sequence[float], chunk_size: int, context_tokens: int, reused_tokens: int) -> float:
    """Sum of chunk_s[i] * |[i c, min((i + 1) c, n)) ∩ [0, N)| / |chunk i| (module docstring)."""
    total = 0.0
    for index, seconds in enumerate(chunk_s):
        first, last = index * chunk_size, min((index + 1) * chunk_size, context_tokens)
        if last <= first:
            continue
        total += seconds * max(0, min(last, reused_tokens) - first) / (last - first)
    return total


def predict_context_load(*, reused_tokens: int, load_bytes: int, disk_read_bytes_per_s: Optional[float],
                         chunk_s: Sequence[float], chunk_size: int, context_tokens: int,
                         prefill_s: Optional[float]) -> ContextLoadPrediction:
    replaced = replaced_prefill_s(chunk_s, chunk_size, context_tokens, reused_tokens) if chunk_s else None
    remaining = prefill_s - replaced if prefill_s is not None and replaced is not None else None
    load_s = load_bytes / disk_read_bytes_per_s if disk_read_bytes_per_s and reused_tokens else None
    if not reused_tokens:
        load_s = 0.0
    saved = replaced - load_s if replaced is not None and load_s is not None else None
    speedup = replaced / load_s if replaced is not None and load_s else None
    if not reused_tokens:
        note = "no token of the prompt is reused: nothing loads"
    elif disk_read_bytes_per_s is None:
        note = "the hardware profile has no disk figures (headplan profile --disk DIR): load time not predicted"
    elif saved is not None and saved < 0:
        note = f"loading ({load_s:.2f} s) is slower than the prefill it replaces ({replaced:.2f} s): do not load"
    elif saved is not None:
        note = f"loading {reused_tokens} tokens ({load_bytes / 2**30:.2f} GiB) takes {load_s:.2f} s where their " \
               f"prefill takes {replaced:.2f} s ({speedup:.1f}x)"
    else:
        note = ""
    return ContextLoadPrediction(reused_tokens=reused_tokens, load_bytes=load_bytes,
                                 disk_read_bytes_per_s=disk_read_bytes_per_s, load_s=load_s,
                                 replaced_prefill_s=replaced, remaining_prefill_s=remaining, saved_s=saved,
                                 speedup=speedup, note=note)


def predict_context_save(save_bytes: int, disk_write_bytes_per_s: Optional[float]) -> Optional[float]:
    """save_s = bytes / disk_write_bytes_per_s (None when the profile has no disk figure)."""
    return save_bytes / disk_write_bytes_per_s if disk_write_bytes_per_s else None
