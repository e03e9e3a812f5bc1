"""Decode attention with the token's position held on the device: what a CUDA-graph decode step runs.

A captured decode step replays with fixed shapes and fixed host arguments, so the position of the token being
decoded cannot be a Python int. DevicePosition holds it in device tensors that the step itself advances:

    position_ids  int64 [1, 1]   s, the decoded token's position (RoPE's position id; the row its K, V go to)
    key_tokens    int32 [1]      s + 1, the keys the token attends to: [0, s + 1)
    cu_query      int32 [2]      [0, 1]  (one query token)
    cu_keys       int32 [2]      [0, T]  (the store's capacity)

write_token(keys, values, k, v, position): the token's k, v [G, 1, d] into the store rows [G, T, d] at s
(index_copy_ along the token dimension).
attend_decode(q [1, Hq_g, 1, d], keys, values [G, T, d], position) -> [1, Hq_g, 1, d], attention over [0, s + 1):
  - CUDA fp16/bf16: the flash kernel's varlen form (aten._flash_attention_forward) with ``seqused_k`` =
    key_tokens: the same FA2 split-KV kernel the eager decode calls on the sliced keys. Measured on the H100
    (benchmarks/results/2026-11-22-h100/decode-varlen-probe.json): equal outputs (max |difference| 0 at 8K-512K keys
    but one 6e-5) and equal time (0.80 against 0.80 ms at 512K keys, d = 128);
  - elsewhere (CPU, the tests): s is read from the tensor (no device to synchronise with) and the sliced keys go
    through attend_chunk, exactly as the eager decode does.
Leaves out: streamed (offloaded) heads: their past is copied per token with a size that changes each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.attention.kernels import attend_chunk


@dataclass
class DevicePosition:
    """The decoded token's position in device tensors (module docstring); ``advance`` moves it on by one."""

    position_ids: torch.Tensor
    key_tokens: torch.Tensor
    cu_query: torch.Tensor
    cu_keys: torch.Tensor
    capacity_tokens: int

    @classmethod
    def create(cls, position: int, capacity_tokens: int, device: torch.device) -> "DevicePosition":
        """Buffers at ``position`` (made by kernels on the device: no host-to-device copy)."""
        if not 0 <= position < capacity_tokens:
            raise ValueError(f"position {position} outside the store's {capacity_tokens} tokens")
        int32 = dict(device=device, dtype=torch.int32)
        return cls(position_ids=torch.full((1, 1), position, device=device, dtype=torch.int64),
                   key_tokens=torch.full((1,), position + 1, **int32),
                   cu_query=torch.arange(2, **int32), cu_keys=torch.arange(2, **int32) * capacity_tokens,
                   capacity_tokens=capacity_tokens)

    def set(self, position: int) -> None:
        """Move to ``position`` (fills on the device, queued on the current stream)."""
        self.position_ids.fill_(position)
        self.key_tokens.fill_(position + 1)

    def advance(self) -> None:
        """s -> s + 1 (two tiny kernels; inside a captured step they replay with it)."""
        self.position_ids.add_(1)
        self.key_tokens.add_(1)


def write_token(keys: torch.Tensor, values: torch.Tensor, key_token: torch.Tensor, value_token: torch.Tensor,
                position: DevicePosition) -> None:
    """keys, values [G, T, d] <- the token's key_token, value_token [G, 1, d] at row s."""
    index = position.position_ids.view(1)
    keys.index_copy_(1, index, key_token)
    values.index_copy_(1, index, value_token)


def attend_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: DevicePosition, *,
                  scale: float, backend: str, out: torch.Tensor) -> torch.Tensor:
    """q [1, Hq_g, 1, d] against keys, values [G, T, d] rows [0, s + 1) -> ``out`` [1, Hq_g, 1, d]."""
    if q.shape[0] != 1 or q.shape[2] != 1:
        raise ValueError(f"attend_decode takes one query token, q [1, Hq, 1, d]; got {tuple(q.shape)}")
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and backend != "math":
        result = torch.ops.aten._flash_attention_forward(
            q[0].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), position.cu_query,
            position.cu_keys, 1, position.capacity_tokens, 0.0, False, False, scale=scale,
            seqused_k=position.key_tokens)[0]                                    # [1, Hq_g, d]
        return out.copy_(result.unsqueeze(0).transpose(1, 2))
    if q.is_cuda:
        raise RuntimeError(f"attend_decode on CUDA needs float16 or bfloat16 and a flash backend (got {q.dtype}, "
                           f"{backend!r}): the decode step runs eagerly there")
    end = int(position.key_tokens[0])
    return attend_chunk(q, keys[None, :, :end], values[None, :, :end], scale=scale, backend=backend, out=out)
