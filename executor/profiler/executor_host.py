"""Host time of the executor's own loop: the real executor (executor.generation.runner.execute) on a tiny-width random
Llama, so that the GPU work is negligible and a step's time is the host's: transformers' module code, the
head-offloaded attention function with its events, copies and kernel calls, the runner's bookkeeping.

The model: hidden 256, 8 query heads, 4 KV heads of dim 32, vocabulary 512, random weights, bfloat16 on CUDA
(float32 on CPU), 4 decoder layers (and 2, to separate the per-forward cost). Step times come from the run's
own Measurement (CUDA events on the compute stream: with the GPU starved they advance at the host's pace).

Decode, per token, medians over ``repeats`` runs of ``decode_tokens`` tokens each, fitted by least squares:

    y = token_s - L * offloaded_heads * HOST_OPS_PER_GROUP_HEAD * launch_overhead_s     (heads' copies apart)
    y = model_s + L * layer_s + L * n * group_s        n = streamed groups per layer
    rows: 4 layers all resident (n = 0); 2 layers all resident (n = 0); 4 layers, no resident heads,
          heads_per_group 1 (n = 4) and heads_per_group 4 (n = 1)
    -> executor_model_host_s = model_s, executor_decode_layer_host_s = layer_s, executor_group_host_s = group_s

Prefill, all heads resident, chunks of ``prefill_chunk_tokens`` past ``PREFILL_SKIP_PAST_TOKENS`` of past:

    executor_prefill_layer_host_s = (median chunk_s - model_s) / L                        "flash"
    chunk_s(p) = a + L * calls * p * part_s, p = popcount(s // B) cuDNN parts             "cudnn-split"
    -> executor_split_part_host_s = part_s (slope over the medians per p; calls = 1: the resident call)
The split is measured on a CUDA GPU with cuDNN attention only (elsewhere the field stays None), in a second
run so that no cuDNN graph build is timed.

Decode replayed as a CUDA graph (all heads resident; executor/generation/decode_graph.py), on a GPU only; the rows above run
eager (decode_graphs off). Its host time per token is the host's own wall time issuing the token (Measurement.
decode_host_s: the GPU runs the graph meanwhile), medians at 4 and 2 layers:
    host(L) = token_s + L * layer_s  ->  executor_graph_token_host_s, executor_graph_layer_host_s (>= 0)
Leaves out: the GPU side of the same steps (the other sections measure kernels and copies).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Optional

import numpy as np
import torch

from executor.attention.split import cudnn_available
from executor.settings import ExecutionSettings
from executor.profiler.context import ProfileContext, compute_dtype
from executor.generation.runner import execute
from planner.host_time import HOST_OPS_CUDNN_SPLIT, HOST_OPS_PER_GROUP, HOST_OPS_PER_GROUP_HEAD, \
    HOST_OPS_PER_MODEL, PAST_BLOCK_TOKENS

HIDDEN, INTERMEDIATE, QUERY_HEADS, KV_HEADS, HEAD_DIM, VOCAB = 256, 512, 8, 4, 32, 512
LAYERS, SHALLOW_LAYERS = 4, 2
PREFILL_SKIP_PAST_TOKENS = 256   # chunks before this past are left out (first-chunk effects)


@dataclasses.dataclass(frozen=True)
class HostSizes:
    """Token counts of the runs (small: every run is host-bound by construction)."""

    decode_prompt_tokens: int = 32
    decode_tokens: int = 48
    repeats: int = 3
    prefill_chunk_tokens: int = 64
    prefill_prompt_tokens: int = 640
    split_chunk_tokens: int = 128
    split_prompt_tokens: int = 3 * PAST_BLOCK_TOKENS + 1024   # pasts with 0, 1 and 2 cuDNN parts


CPU_SIZES = HostSizes(decode_tokens=16, repeats=3, prefill_prompt_tokens=448)
TINY_SIZES = HostSizes(decode_tokens=8, repeats=2, prefill_prompt_tokens=384)


def tiny_llama(layers: int, device: torch.device, dtype: torch.dtype):
    """A random Llama of the module's tiny width, ``layers`` decoder layers, eval mode, on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                         num_attention_heads=QUERY_HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                         vocab_size=VOCAB, max_position_embeddings=16384)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def _run(model, prompt_tokens: int, new_tokens: int, *, chunk: int, group: int, resident: int, backend: str,
         device: torch.device, graphs: bool = False):
    """One executor run (eager decode unless ``graphs``); returns its Measurement."""
    ids = torch.randint(0, VOCAB, (1, prompt_tokens), generator=torch.Generator().manual_seed(1))
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=prompt_tokens + new_tokens, attention_backend=backend,
                                 decode_graphs=graphs)
    return execute(model, ids, settings, new_tokens=new_tokens, device=device)


def decode_token_s(model, sizes: HostSizes, device: torch.device, *, group: int, resident: int) -> float:
    """Median over ``repeats`` runs of the mean decode seconds per token (first run untimed: warm-up)."""
    def once() -> float:
        measurement = _run(model, sizes.decode_prompt_tokens, sizes.decode_tokens + 1,
                           chunk=sizes.decode_prompt_tokens, group=group, resident=resident, backend="flash",
                           device=device)
        return measurement.decode_s_per_token
    once()
    return statistics.median(once() for _ in range(sizes.repeats))


def graph_token_host_s(model, sizes: HostSizes, device: torch.device, layers: int) -> float:
    """Median over ``repeats`` runs of the median host seconds issuing one replayed decode token (first run
    untimed); raises when the run did not replay a graph."""
    def once() -> float:
        measurement = _run(model, sizes.decode_prompt_tokens, sizes.decode_tokens + 1,
                           chunk=sizes.decode_prompt_tokens, group=1, resident=layers * KV_HEADS, backend="flash",
                           device=device, graphs=True)
        if measurement.decode_step != "graph":
            raise RuntimeError(f"decode ran {measurement.decode_step!r}, not as a CUDA graph "
                               f"({measurement.decode_graph_fallback})")
        return statistics.median(measurement.decode_host_s)
    once()
    return statistics.median(once() for _ in range(sizes.repeats))


def fit_graph(deep_s: float, shallow_s: float) -> dict:
    """host(L) = token_s + L layer_s through (LAYERS, deep_s) and (SHALLOW_LAYERS, shallow_s); a negative slope
    (noise) becomes 0 and token_s the mean."""
    layer_s = (deep_s - shallow_s) / (LAYERS - SHALLOW_LAYERS)
    if layer_s < 0:
        return {"executor_graph_token_host_s": (deep_s + shallow_s) / 2, "executor_graph_layer_host_s": 0.0}
    return {"executor_graph_token_host_s": deep_s - LAYERS * layer_s, "executor_graph_layer_host_s": layer_s}


def fit_decode(rows: list[tuple[int, int, int, float]], launch_overhead_s: float) -> dict:
    """Least squares of the module docstring's decode model.

    rows: (layers, streamed groups per layer, offloaded heads per layer, seconds per token).
    Returns {"executor_model_host_s", "executor_decode_layer_host_s", "executor_group_host_s"}; a fitted
    per-forward cost that is not positive is replaced by HOST_OPS_PER_MODEL * launch_overhead_s and the
    rest refitted; a group cost that is not positive by HOST_OPS_PER_GROUP * launch_overhead_s.
    """
    design = np.array([[1.0, layers, layers * groups] for layers, groups, _, _ in rows])
    target = np.array([seconds - layers * heads * HOST_OPS_PER_GROUP_HEAD * launch_overhead_s
                       for layers, _, heads, seconds in rows])
    model_s, layer_s, group_s = np.linalg.lstsq(design, target, rcond=None)[0]
    if model_s <= 0:
        model_s = HOST_OPS_PER_MODEL * launch_overhead_s
        layer_s, group_s = np.linalg.lstsq(design[:, 1:], target - model_s, rcond=None)[0]
    if group_s <= 0:
        group_s = HOST_OPS_PER_GROUP * launch_overhead_s
    return {"executor_model_host_s": float(model_s), "executor_decode_layer_host_s": float(max(layer_s, 1e-9)),
            "executor_group_host_s": float(group_s)}


def prefill_layer_s(model, sizes: HostSizes, device: torch.device, model_s: float) -> float:
    """(median chunk seconds past PREFILL_SKIP_PAST_TOKENS - per-forward seconds) / layers; flash, resident."""
    chunk = sizes.prefill_chunk_tokens
    run = lambda: _run(model, sizes.prefill_prompt_tokens, 1, chunk=chunk, group=1,  # noqa: E731
                       resident=LAYERS * KV_HEADS, backend="flash", device=device)
    run()
    chunk_s = run().chunk_s
    kept = [s for index, s in enumerate(chunk_s) if index * chunk >= PREFILL_SKIP_PAST_TOKENS]
    return max((statistics.median(kept) - model_s) / LAYERS, 1e-9)


def split_part_s(model, sizes: HostSizes, device: torch.device) -> Optional[float]:
    """Host seconds per cuDNN part per attention call (module docstring), or None where the slope is not
    positive. Two runs: the first builds the cuDNN graphs."""
    chunk = sizes.split_chunk_tokens
    run = lambda: _run(model, sizes.split_prompt_tokens, 1, chunk=chunk, group=1,  # noqa: E731
                       resident=LAYERS * KV_HEADS, backend="cudnn-split", device=device)
    run()
    by_parts: dict[int, list[float]] = {}
    for index, seconds in enumerate(run().chunk_s):
        past = index * chunk
        if past >= PREFILL_SKIP_PAST_TOKENS:
            by_parts.setdefault(bin(past // PAST_BLOCK_TOKENS).count("1"), []).append(seconds)
    parts = sorted(by_parts)
    if len(parts) < 2:
        return None
    medians = [statistics.median(by_parts[p]) for p in parts]
    slope = np.polyfit(np.array(parts, dtype=float), np.array(medians), 1)[0]
    calls_per_layer = 1   # all heads resident: one attention call per layer
    return float(slope / (LAYERS * calls_per_layer)) if slope > 0 else None


def _sizes(ctx: ProfileContext) -> HostSizes:
    if ctx.preset.mode == "tiny":
        return TINY_SIZES
    return HostSizes() if ctx.on_gpu else CPU_SIZES


def measure_executor_host(ctx: ProfileContext, launch_overhead_s: float) -> dict:
    """The executor_* profile fields (None or absent where not measured here); progress lines "executor ...".
    A failing run is noted and leaves the fields out (the planner falls back): the rest of the profile
    stands without them."""
    try:
        return _measure(ctx, launch_overhead_s)
    except Exception as exc:  # noqa: BLE001 - optional section: the note says what went wrong
        ctx.note(f"executor host time not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        return {}


def _measure(ctx: ProfileContext, launch_overhead_s: float) -> dict:
    device, dtype, sizes = ctx.device, compute_dtype(ctx.device), _sizes(ctx)
    deep, shallow = tiny_llama(LAYERS, device, dtype), tiny_llama(SHALLOW_LAYERS, device, dtype)
    rows = []
    for label, model, layers, group, resident in (
            ("4 layers, all heads resident", deep, LAYERS, 1, LAYERS * KV_HEADS),
            ("2 layers, all heads resident", shallow, SHALLOW_LAYERS, 1, SHALLOW_LAYERS * KV_HEADS),
            ("4 layers, 4 groups of 1 head", deep, LAYERS, 1, 0),
            ("4 layers, 1 group of 4 heads", deep, LAYERS, KV_HEADS, 0)):
        seconds = decode_token_s(model, sizes, device, group=group, resident=resident)
        groups = 0 if resident else KV_HEADS // group
        rows.append((layers, groups, 0 if resident else KV_HEADS, seconds))
        ctx.progress("executor", f"decode token, {label}", f"{seconds * 1e3:.3f} ms")
    fields = fit_decode(rows, launch_overhead_s)
    fields["executor_prefill_layer_host_s"] = prefill_layer_s(deep, sizes, device, fields["executor_model_host_s"])
    fields["executor_split_part_host_s"] = None
    if ctx.on_gpu and ctx.preset.mode != "tiny" and cudnn_available(device.index):
        try:
            fields["executor_split_part_host_s"] = split_part_s(deep, sizes, device)
        except Exception as exc:  # noqa: BLE001 - the split's figure is optional; the others stand
            ctx.note(f"executor split part host time not measured ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120]})")
    elif ctx.on_gpu:
        ctx.note("executor split part host time not measured (needs cuDNN attention on a GPU, non-tiny sizes); "
                 f"the planner uses {HOST_OPS_CUDNN_SPLIT} launches per part")
    if ctx.on_gpu:
        try:
            deep_s, shallow_s = (graph_token_host_s(m, sizes, device, layers)
                                 for m, layers in ((deep, LAYERS), (shallow, SHALLOW_LAYERS)))
            fields.update(fit_graph(deep_s, shallow_s))
        except Exception as exc:  # noqa: BLE001 - optional figures; the planner falls back to counted launches
            ctx.note(f"executor graph decode host time not measured ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120]})")
    for name, value in fields.items():
        ctx.progress("executor", name, "-" if value is None else f"{value * 1e6:.1f} us")
    del deep, shallow
    return fields
