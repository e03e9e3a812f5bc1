"""The host probes' K, V (host_pages_probe.py, host_rate_drift.py, host_memory_map.py): Llama-3-8B's decode shape
over one flat host allocation, as the executor's store lays out one layer.

    kv_over(flat)         K, V [2, H, T, d] bf16 over the uint8 ``flat`` (T as many as fit), filled
    advised_kv(nbytes)    kv_over a new torch.empty of ``nbytes`` advised to huge pages before it is filled
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.runtime.host_pages import advise_huge_pages  # noqa: E402

KV_HEADS, RATIO, HEAD_DIM = 8, 4, 128


def kv_over(flat: torch.Tensor) -> torch.Tensor:
    """K, V [2, H, T, d] bf16 viewing ``flat``, filled with a constant: the kernel reads every byte either way, and
    uniform_ takes ~2 s per GiB."""
    tokens = flat.numel() // (2 * KV_HEADS * HEAD_DIM * 2)
    kv = flat.view(torch.bfloat16)[: 2 * KV_HEADS * tokens * HEAD_DIM].view(2, KV_HEADS, tokens, HEAD_DIM)
    kv.fill_(0.5)
    return kv


def advised_kv(nbytes: int) -> torch.Tensor:
    flat = torch.empty(nbytes, dtype=torch.uint8)
    advise_huge_pages(flat)
    return kv_over(flat)
