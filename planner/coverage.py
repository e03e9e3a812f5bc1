"""Where a plan leaves what its profile measured, and where its context leaves what the model was trained for.

coverage_notes: the plan's attention shapes against the profile's attention table (hwprofiles.schema
AttentionPoint): backend, head dim, GQA ratio (query heads per KV head), chunk length (q_len) and key length
(k_len). Outside the table planner/hw_lookup.py takes the nearest measured head dim / ratio and clamps along
key length, so the prediction is an extrapolation; each note says by how much. Seen on the H200 (2026-12-01): a
Llama-3.2-1B plan (head dim 64) from a quick profile that had measured the executor's step at head dim 128 only
ran its prefill 44% over the prediction.

trained_length_note: a context longer than the model's trained length (``max_position_embeddings``, or what its
rope scaling extends it to).

Every note starts with a prefix that `headplan run` repeats as a warning (headplan/run_checks.py).
Leaves out: the lookup itself (hw_lookup.py) and the time model.
"""

from __future__ import annotations

from typing import Optional

from hwprofiles.schema import AttentionPoint, HardwareProfile
from planner.model_spec import ModelSpec
from planner.hw_lookup import DECODE_KERNELS
from planner.units import format_tokens

COVERAGE = "profile coverage:"
TRAINED = "trained length:"
# rope scaling types whose factor stretches the original trained length (transformers' rope_type names)
_STRETCHING_ROPE_TYPES = ("linear", "dynamic", "yarn", "longrope")


def _ratio(point: AttentionPoint) -> int:
    return max(point.q_heads // max(point.kv_heads, 1), 1)


def _nearest(values: set[int], wanted: int) -> int:
    return min(values, key=lambda v: (abs(v - wanted) / max(v, wanted), -v))


def _times(a: float, b: float) -> str:
    return f"{max(a, b) / max(min(a, b), 1):.1f}x"


def _plan_points(hardware: HardwareProfile, backend: str) -> tuple[str, list[AttentionPoint]]:
    """The points a plan's prefill attention is priced from (planner/attention_time.py attention_seconds):
    cudnn-split's from the cuDNN kernel points (its past parts and chunk part are composed from them: the chunk
    part computed once per layer, the executor's default), flash's and flex's from the executor-step points of
    the backend where the profile has them, else from the kernel points."""
    step = backend + "-step"
    points = [p for p in hardware.attention_table if p.backend == step]
    if points and backend != "cudnn-split":
        return step, points
    kernel = "cudnn" if backend.startswith("cudnn") else ("flex" if backend == "flex" else "flash")
    return kernel, [p for p in hardware.attention_table
                    if p.q_len >= 64 and (p.backend == kernel or (kernel == "flash" and p.backend == "flash_attn"))]


def coverage_notes(model: ModelSpec, hardware: HardwareProfile, *, backend: str, chunk_tokens: int,
                   context_tokens: int) -> list[str]:
    """Notes for every shape of the plan outside the profile's tables (empty: all inside)."""
    table, points = _plan_points(hardware, backend)
    if not points:
        return [f"{COVERAGE} profile {hardware.name} has no measured attention points for backend {backend}: "
                f"attention time comes from its scalar rate ({hardware.attention_flops_per_s / 1e12:.0f} TFLOP/s, "
                f"{hardware.origin})"]
    notes = []
    dims = {p.head_dim for p in points}
    dim = model.head_dim if model.head_dim in dims else _nearest(dims, model.head_dim)
    if dim != model.head_dim:
        notes.append(f"{COVERAGE} head dim {model.head_dim} not measured ({table} points have "
                     f"{', '.join(map(str, sorted(dims)))}): rates of head dim {dim} used, "
                     f"{_times(dim, model.head_dim)} away")
    at_dim = [p for p in points if p.head_dim == dim]
    ratios = {_ratio(p) for p in at_dim}
    ratio = model.query_heads_per_kv_head
    if ratio not in ratios:
        near = _nearest(ratios, ratio)
        notes.append(f"{COVERAGE} GQA ratio {ratio} (query heads per KV head) not measured at head dim {dim} "
                     f"(measured {', '.join(map(str, sorted(ratios)))}): rates of ratio {near} used, "
                     f"{_times(near, ratio)} away")
    chunk = min(chunk_tokens, context_tokens)
    longest_q, shortest_q = max(p.q_len for p in at_dim), min(p.q_len for p in at_dim)
    if chunk > longest_q:
        notes.append(f"{COVERAGE} chunk {format_tokens(chunk)} tokens is {_times(chunk, longest_q)} the longest "
                     f"chunk measured ({format_tokens(longest_q)}): attention time extrapolated")
    elif chunk < shortest_q:
        notes.append(f"{COVERAGE} chunk {format_tokens(chunk)} tokens is {_times(chunk, shortest_q)} below the "
                     f"shortest chunk measured ({format_tokens(shortest_q)}): attention time extrapolated")
    longest_k = max(p.k_len for p in at_dim)
    if context_tokens > longest_k:
        notes.append(f"{COVERAGE} key length {format_tokens(context_tokens)} is {_times(context_tokens, longest_k)} "
                     f"the longest measured ({format_tokens(longest_k)}): attention time extrapolated")
    decode_kernel = "flex" if backend == "flex" else "flash"
    decode_dims = {p.head_dim for p in hardware.attention_table
                   if p.q_len == 1 and DECODE_KERNELS.get(p.backend) == decode_kernel}
    if not decode_dims and decode_kernel == "flex":
        notes.append(f"{COVERAGE} decode attention of the flex kernel not measured: priced from the flash "
                     "kernel's decode points")
    elif decode_dims and model.head_dim not in decode_dims:
        notes.append(f"{COVERAGE} {decode_kernel} decode attention not measured at head dim {model.head_dim} (measured "
                     f"{', '.join(map(str, sorted(decode_dims)))}): decode attention extrapolated")
    return notes


def trained_length_tokens(model: ModelSpec) -> tuple[int, str]:
    """(trained length in tokens, how it was read): max_position_embeddings, or the original length times a
    stretching rope scaling's factor where that is longer (llama3-type scaling already states its extended
    length in max_position_embeddings)."""
    limit, how = model.max_position_embeddings, f"max_position_embeddings {model.max_position_embeddings}"
    scaling = model.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type"))
    factor = scaling.get("factor")
    if rope_type in _STRETCHING_ROPE_TYPES and isinstance(factor, (int, float)) and factor > 1:
        original = int(scaling.get("original_max_position_embeddings") or model.max_position_embeddings)
        stretched = int(original * factor)
        if stretched > limit:
            limit, how = stretched, f"{rope_type} rope scaling: {original} x {factor:g}"
    elif rope_type:
        how += f", rope scaling {rope_type}"
    return limit, how


def trained_length_note(model: ModelSpec, context_tokens: int) -> Optional[str]:
    """A note when the context (prompt + nothing else: the plan's context) exceeds the trained length."""
    limit, how = trained_length_tokens(model)
    if context_tokens <= limit:
        return None
    return (f"{TRAINED} context {context_tokens} tokens ({format_tokens(context_tokens)}) exceeds {model.name}'s "
            f"trained length {limit} tokens ({how}): the run is exact, but the model was not trained for positions "
            "past it")


def graph_decode_note(model: ModelSpec, hardware: HardwareProfile) -> Optional[str]:
    """A note when a profile that measured replayed decode steps (graph_decode_table) has none of this model's
    layer shape: its replayed decode token is then priced from the kernel tables (7-10% long on the H200)."""
    table = hardware.graph_decode_table
    if not table or any(p.layer_shape == model.layer_shape for p in table):
        return None
    return (f"{COVERAGE} the replayed decode step was measured for {len(table)} other layer shape(s), not "
            f"{model.name}'s (hidden {model.hidden_size}, intermediate {model.intermediate_size}, heads "
            f"{model.num_attention_heads}/{model.num_key_value_heads}, head dim {model.head_dim}): its CUDA-graph "
            f"decode is priced from the kernel tables; `headplan profile --model {model.name}` measures it")


def sustained_note(model: ModelSpec, hardware: HardwareProfile) -> Optional[str]:
    """A note when the profile's sustained prefill rates (sustained_table) lack the model's head dim: the nearest
    measured head dim's ratios are used (planner/hw_lookup.py sustained_ratios)."""
    dims = sorted({p.head_dim for p in hardware.sustained_table})
    if not dims or model.head_dim in dims:
        return None
    nearest = _nearest(set(dims), model.head_dim)
    return (f"{COVERAGE} sustained prefill rates measured at head dim {', '.join(map(str, dims))}, not "
            f"{model.head_dim}: head dim {nearest}'s used ({_times(nearest, model.head_dim)} away)")


def plan_fidelity_notes(model: ModelSpec, hardware: HardwareProfile, *, backend: str, chunk_tokens: int,
                        context_tokens: int, decode_graphs: bool = False) -> list[str]:
    """coverage_notes, trained_length_note, sustained_note and (``decode_graphs``: the plan replays its decode)
    graph_decode_note together (what make_plan and make_pipeline_plan add)."""
    notes = coverage_notes(model, hardware, backend=backend, chunk_tokens=chunk_tokens,
                           context_tokens=context_tokens)
    extra = [trained_length_note(model, context_tokens), sustained_note(model, hardware),
             graph_decode_note(model, hardware) if decode_graphs else None]
    return notes + [note for note in extra if note]
