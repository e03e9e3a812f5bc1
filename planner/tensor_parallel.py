"""Several GPUs by heads: tensor parallelism (``headplan plan/run --gpus N --parallel heads``), and the choice
between it and the layer pipeline (``--parallel auto``).

Megatron-style split of every decoder layer over N ranks (one per GPU): q, k, v, gate, up column-wise (each rank
its contiguous block of H_q / N query heads, H_kv / N KV heads and I / N MLP columns); o, down row-wise; one
all-reduce of the layer's hidden state after attention and one after the MLP. So a rank is, for the cost model,
the same model with
    H_q / N query heads, H_kv / N KV heads, I / N MLP columns     (``local_spec``)
and the embeddings, the final norm and lm_head REPLICATED on every rank (V x D each, twice unless tied: the
embedding lookup and the last position's logits are small next to the layers, and replicating them needs no
collective). Per rank, for L layers, capacity T, chunk c, hidden D, dtype bytes b:
    GPU memory      the single-GPU memory model on local_spec (weights/N of the layers + full embeddings and
                    lm_head, the local KV terms with its own R resident slots among L x H_kv / N), per GPU
    host            N ranks x local offloaded KV <= --host-mem (each rank its own store, on its GPU's NUMA node);
                    each rank is planned with host_mem / N
    prefill         chunk_s = local chunk time (compute / N, its own offloaded heads over its own link) +
                    2 L all-reduces of c x D x b bytes
    decode          local step (each link moves its own offloaded heads, all links at once) + 2 L all-reduces
                    of D x b bytes; every rank issues the same eager per-layer host work (not divided by N)
    all-reduce      ring: latency + 2 (N - 1) / N x bytes / bus bandwidth, from the profile's allreduce_table
                    (measured by ``headplan profile`` where several GPUs are visible) interpolated by size; where
                    the profile has none, ASSUMED_BUS_BYTES_PER_S and ASSUMED_LATENCY_S, said in a note
    pinning         N stores pinned at once by N processes: the summed pin time (conservative)
    decode graphs   off (a CUDA graph over NCCL collectives is not what the executor captures)
N must divide H_q and H_kv (``check_head_split``). Leaves out: sequence parallelism of the norms, overlapping the
all-reduce with compute, NVLink SHARP, sharding the embeddings or lm_head.
"""

from __future__ import annotations

import math
from typing import Optional

from hwprofiles.schema import HardwareProfile
from planner.errors import PlanError
from planner.model_spec import ModelSpec
from planner.plan import MemoryPrediction, Plan, Prediction
from planner.units import format_seconds

ASSUMED_BUS_BYTES_PER_S = 100e9
"""GPU-to-GPU all-reduce bus bandwidth taken where the profile measured none: well under NVLink 4's 450 GB/s per
direction (H100/H200 SXM datasheet) and above PCIe 5 x16's 64 GB/s; a stated guess, replaced by a measurement"""
ASSUMED_LATENCY_S = 20e-6
"""per all-reduce latency taken where the profile measured none (NCCL's small-message time on one host is
10-30 us)"""
PARALLEL_CHOICES = ("auto", "layers", "heads")


def head_split_divisors(query_heads: int, kv_heads: int) -> list[int]:
    """Rank counts N > 1 that divide both H_q and H_kv (the splits tensor parallelism can make)."""
    return [n for n in range(2, kv_heads + 1) if kv_heads % n == 0 and query_heads % n == 0]


def check_head_split(query_heads: int, kv_heads: int, ranks: int) -> None:
    """PlanError (a ValueError) unless ``ranks`` >= 1 divides H_q and H_kv; the message lists the divisors."""
    if ranks < 1:
        raise PlanError(f"--gpus must be at least 1, got {ranks}")
    if query_heads % ranks or kv_heads % ranks:
        divisors = head_split_divisors(query_heads, kv_heads)
        allowed = ", ".join(str(n) for n in divisors) if divisors else "none above 1"
        raise PlanError(f"--parallel heads over {ranks} GPUs needs {ranks} to divide the model's {query_heads} "
                        f"query heads and {kv_heads} KV heads; GPU counts that do: {allowed}")


def local_spec(model: ModelSpec, ranks: int) -> ModelSpec:
    """One rank's model: H_q / N, H_kv / N heads, I / N MLP columns; embeddings and lm_head whole (replicated)."""
    check_head_split(model.num_attention_heads, model.num_key_value_heads, ranks)
    if model.intermediate_size % ranks:
        raise PlanError(f"--parallel heads over {ranks} GPUs needs {ranks} to divide the MLP's "
                        f"{model.intermediate_size} columns")
    return model.model_copy(update={
        "num_attention_heads": model.num_attention_heads // ranks,
        "num_key_value_heads": model.num_key_value_heads // ranks,
        "intermediate_size": model.intermediate_size // ranks,
        "name": f"{model.name} (1/{ranks} by heads)"})


def allreduce_s(profile: HardwareProfile, ranks: int, size_bytes: float) -> tuple[float, bool]:
    """Seconds of one all-reduce of ``size_bytes`` over ``ranks`` GPUs, and whether it came from a measurement.

    Measured: log-log interpolation of the profile's allreduce_table at the nearest measured rank count (clamped
    at its ends, scaled linearly in bytes above the largest). Else the ring model
        t = ASSUMED_LATENCY_S + 2 (N - 1) / N * bytes / ASSUMED_BUS_BYTES_PER_S."""
    if ranks < 2 or size_bytes <= 0:
        return 0.0, True
    table = list(getattr(profile, "allreduce_table", None) or [])
    if table:
        nearest = min({p.gpus for p in table}, key=lambda g: (abs(g - ranks), -g))
        points = sorted((p.size_bytes, p.seconds) for p in table if p.gpus == nearest)
        return _interpolate_log(points, size_bytes), True
    ring_bytes = 2.0 * (ranks - 1) / ranks * size_bytes
    return ASSUMED_LATENCY_S + ring_bytes / ASSUMED_BUS_BYTES_PER_S, False


def _interpolate_log(points: list[tuple[int, float]], size_bytes: float) -> float:
    if size_bytes <= points[0][0]:
        return points[0][1]
    if size_bytes >= points[-1][0]:
        return points[-1][1] * size_bytes / points[-1][0]  # bandwidth-bound above the largest size measured
    for (s0, t0), (s1, t1) in zip(points, points[1:]):
        if s0 <= size_bytes <= s1:
            w = (math.log(size_bytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    return points[-1][1]


def _chunk_lengths(context_tokens: int, chunk_tokens: int) -> list[int]:
    full, rest = divmod(context_tokens, chunk_tokens)
    return [chunk_tokens] * full + ([rest] if rest else [])


def make_tensor_plan(model: ModelSpec, hardware: HardwareProfile, *, gpus: int, context_tokens: int,
                     decode_tokens: int, gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int] = None,
                     dtype: str = "bfloat16", chunk_size: Optional[int] = None,
                     heads_per_group: Optional[int] = None, resident_kv_heads: Optional[int] = None,
                     strategy: Optional[str] = None, attention_backend: Optional[str] = None) -> Plan:
    """The per-rank plan over ``gpus`` GPUs split by heads (module doc). ``resident_kv_heads`` and
    ``heads_per_group`` are per rank (of its L x H_kv / N slots; G <= H_kv / N). ``host_mem_bytes`` is the whole
    host's. The Plan's ``memory`` is one GPU's, ``predicted`` the whole run's."""
    from planner.solver import make_plan

    if gpus < 2:
        raise PlanError(f"--parallel heads needs --gpus 2 or more, got {gpus}")
    local = local_spec(model, gpus)
    host_total = host_mem_bytes if host_mem_bytes is not None else hardware.host_mem_bytes
    rank_plan = make_plan(local, hardware, context_tokens=context_tokens, decode_tokens=decode_tokens,
                          gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_total // gpus, dtype=dtype,
                          chunk_size=chunk_size, heads_per_group=heads_per_group,
                          resident_kv_heads=resident_kv_heads, strategy=strategy,
                          attention_backend=attention_backend, decode_graphs=False)
    elem_bytes = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
    layers, hidden = model.num_hidden_layers, model.hidden_size
    chunks = _chunk_lengths(context_tokens, rank_plan.chunk_size)
    chunk_reduce_s = [2 * layers * allreduce_s(hardware, gpus, c * hidden * elem_bytes)[0] for c in chunks]
    token_reduce_s, measured = allreduce_s(hardware, gpus, hidden * elem_bytes)
    token_reduce_s *= 2 * layers
    p = rank_plan.predicted
    chunk_s = [a + b for a, b in zip(p.chunk_s, chunk_reduce_s)] if len(p.chunk_s) == len(chunks) else p.chunk_s
    prefill_s = p.prefill_s + sum(chunk_reduce_s)
    decode_s = p.decode_s_per_token + token_reduce_s
    pin_s = p.pin_s * gpus
    terms = dict(p.terms, prefill_allreduce_s=sum(chunk_reduce_s), decode_allreduce_s_per_token=token_reduce_s)
    predicted = Prediction(prefill_s=prefill_s, decode_s_per_token=decode_s, pin_s=pin_s,
                           total_s=pin_s + prefill_s + decode_tokens * decode_s, prefill_bound=p.prefill_bound,
                           decode_bound=p.decode_bound, chunk_s=chunk_s, terms=terms)
    memory = MemoryPrediction(**{**rank_plan.memory.model_dump(), "host_kv_bytes": rank_plan.memory.host_kv_bytes
                                 * gpus, "host_budget_bytes": host_total})
    notes = list(rank_plan.notes) + _tensor_notes(model, gpus, rank_plan, sum(chunk_reduce_s), token_reduce_s,
                                                  measured)
    return rank_plan.model_copy(update={
        "model": model, "memory": memory, "predicted": predicted, "notes": notes, "gpus": gpus,
        "parallel": "heads", "decode_graphs": False, "stages": []})


def _tensor_notes(model: ModelSpec, gpus: int, rank_plan: Plan, prefill_reduce_s: float, token_reduce_s: float,
                  measured: bool) -> list[str]:
    notes = [
        f"by heads over {gpus} GPUs: each holds query heads of {model.num_attention_heads // gpus} and KV heads of "
        f"{model.num_key_value_heads // gpus} per layer, 1/{gpus} of the layers' weights and MLP; embeddings and "
        "lm_head replicated on every GPU; memory is one GPU's, resident_kv_heads and heads_per_group are per GPU "
        f"(of its {model.num_hidden_layers * model.num_key_value_heads // gpus} slots)",
        f"2 all-reduces per layer: {format_seconds(prefill_reduce_s)} over the prefill, "
        f"{format_seconds(token_reduce_s)} per decode token (in the predicted times; the alternatives are ranked on "
        "one GPU's share without them)",
    ]
    if not measured:
        notes.append(f"the profile has no all-reduce measurement: assumed {ASSUMED_BUS_BYTES_PER_S / 1e9:.0f} GB/s "
                     f"bus bandwidth and {ASSUMED_LATENCY_S * 1e6:.0f} us per all-reduce (run headplan profile "
                     "with several GPUs visible to measure them)")
    return notes


def choose_parallel(layers: Optional[Plan], heads: Optional[Plan], layers_error: Optional[str],
                    heads_error: Optional[str]) -> Plan:
    """``--parallel auto``: the plan of least predicted total time (pin + prefill + decode), its notes saying
    why the other lost (slower by how much, or why it could not be planned). PlanError when neither plans."""
    if layers is None and heads is None:
        raise PlanError(f"neither split plans: by layers: {layers_error}; by heads: {heads_error}")
    if heads is None or (layers is not None and layers.predicted.total_s <= heads.predicted.total_s):
        chosen, other, other_name, other_error = layers, heads, "heads", heads_error
    else:
        chosen, other, other_name, other_error = heads, layers, "layers", layers_error
    name = "heads" if other_name == "layers" else "layers"
    if other is None:
        why = f"parallel auto: by {name}; by {other_name} does not plan: {other_error}"
    else:
        c, o = chosen.predicted, other.predicted
        why = (f"parallel auto: by {name}, predicted total {format_seconds(c.total_s)} (prefill "
               f"{format_seconds(c.prefill_s)}, decode {c.decode_s_per_token * 1000:.1f} ms/token) against by "
               f"{other_name} {format_seconds(o.total_s)} (prefill {format_seconds(o.prefill_s)}, decode "
               f"{o.decode_s_per_token * 1000:.1f} ms/token): {o.total_s / c.total_s:.2f}x slower")
    return chosen.model_copy(update={"notes": list(chosen.notes) + [why]})
