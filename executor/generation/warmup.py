"""The warm-up before a timed run: one tiny run through the same engine path, then the first cuDNN calls and the
Triton merges the prefill will need, so the timed run does not pay the process's one-time costs (reported as
``warmup_s``, not hidden). The tiny run is passed in (generation/runner.py gives its own ``execute``), so this
module does not import the runner.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import torch

from executor.attention.kernels import backend_name
from executor.attention.split import warm_up_cudnn, warm_up_merge, warm_up_whole_past
from executor.kv.layout import HeadCounts
from executor.parallel.staged_engine import stage_layout
from executor.parallel.stages import DeviceStage
from executor.settings import ExecutionSettings


def cuda_devices(stages: list[DeviceStage]) -> list[torch.device]:
    """The distinct CUDA devices of ``stages``, in stage order."""
    seen: list[torch.device] = []
    for stage in stages:
        if stage.device.type == "cuda" and stage.device not in seen:
            seen.append(stage.device)
    return seen


WARMUP_CHUNK_TOKENS = 32
WARMUP_PROMPT_TOKENS = 96


def warm_up(run_tiny: Callable[[torch.Tensor, ExecutionSettings, int], None], model, input_ids: torch.Tensor,
            settings: ExecutionSettings, stages: list[DeviceStage], *, context_tokens: Optional[int] = None,
            heads: Optional[HeadCounts] = None, first_past_tokens: int = 0,
            compiled: Optional[Callable[[], None]] = None) -> float:
    """One tiny run through the same engine path (same stages, head groups and resident layout, a 96-token
    prompt in 32-token chunks, 2 new tokens, no synthetic past), so the timed run does not pay the process's
    one-time costs: CUDA module loading, cuBLAS / cuDNN handles, first launches of each kernel, and (cudnn-split)
    one cuDNN call of each kind at the first chunk's shapes (attention/split.py warm_up_cudnn: cuDNN compiles its
    kernels the first time a machine runs them) and the Triton merge of each part count a prefill of
    ``context_tokens`` (default: the prompt's length; after a synthetic past, past + prompt) will merge. Returns
    its wall seconds (reported as ``warmup_s``, not hidden). Shape-specific costs (cuDNN graphs of the real block
    sizes beyond the first chunk's) stay in the run. ``heads``: the heads the engine sees (default the config's;
    a tensor-parallel rank's local counts). ``first_past_tokens``: where the timed prefill starts (a synthetic or
    loaded past). With SplitOptions.past_cut "whole" every (call heads, chunk, key length) shape of the prefill
    gets its cuDNN graph here (split.py warm_up_whole_past). ``compiled``: called last, to compile the
    torch.compile'd layers at the run's chunk lengths (generation/compiled_layers.py)."""
    start_s = time.perf_counter()
    tiny = dataclasses.replace(settings, chunk_size=WARMUP_CHUNK_TOKENS,
                               capacity_tokens=WARMUP_PROMPT_TOKENS + 2)
    run_tiny(input_ids[:, :WARMUP_PROMPT_TOKENS], tiny, 2)
    if backend_name(settings.attention_backend) == "cudnn-split":
        dtype = next(model.parameters()).dtype
        heads = heads or HeadCounts.of_config(model.config)
        head_dim, kv_heads = heads.head_dim, heads.kv_heads
        for device in cuda_devices(stages):
            warm_up_cudnn(device, dtype, head_dim=head_dim, query_heads_per_kv=heads.query_heads // kv_heads,
                          kv_heads=min(settings.heads_per_group, kv_heads),
                          chunk_tokens=min(settings.chunk_size, input_ids.shape[1]), options=settings.split,
                          layer_kv_heads=kv_heads)
            warm_up_merge(device, dtype, head_dim, context_tokens or input_ids.shape[1], settings.chunk_size,
                          options=settings.split)
        for stage in stages:
            if stage.device.type != "cuda":
                continue
            layout = stage_layout(model.config, stage, settings, heads)
            call_heads = {r for r in layout.resident_per_layer if r} | {
                len(group) for layer_groups in layout.groups_per_layer for group in layer_groups}
            warm_up_whole_past(stage.device, dtype, head_dim=head_dim, query_heads_per_kv=heads.query_heads // kv_heads,
                               call_kv_heads=call_heads, capacity_tokens=settings.capacity_tokens,
                               context_tokens=context_tokens or input_ids.shape[1], chunk_tokens=settings.chunk_size,
                               first_past_tokens=first_past_tokens, options=settings.split)
    if compiled is not None:
        compiled()
    for device in cuda_devices(stages):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start_s
