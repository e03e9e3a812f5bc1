"""Several GPUs: the decoder layers split into N contiguous stages, one per GPU of the profile, each stage
offloading its own layers' KV head-wise over its own PCIe link into its own host store (``headplan run --gpus N``
executes it).

Model, for N GPUs, L layers, capacity T tokens, chunk c, hidden D, dtype bytes b:
    split           stage i gets L // N layers, + 1 for the first L % N stages (earlier stages first, as
                    planner/layout.py spreads resident heads); embeddings on stage 0, final norm + lm_head on
                    the last stage (a tied lm_head is copied there: stage 0 and the last both hold V x D)
    stage weights   n_i * layer params (+ V D on stage 0) (+ V D + D on the last) * b
    stage GPU peak  stage weights + its layers' KV terms (memory_model.kv_terms on its n_i layers and R_i
                    resident slots) + chunk activations (logits on the last stage only) + runtime overhead;
                    every stage <= --gpu-mem (a per-GPU budget)
    host            sum over stages of (n_i H_kv - R_i) 2 d T b <= --host-mem (host RAM is shared)
    knobs           one c, G and attention backend for all stages; R_i chosen per stage: the most that fit
                    that stage's GPU (decode only gets faster with more), or a fixed total R spread over the
                    layers as layout.py does, each stage taking its layers' share
    time            a single sequence flows through the stages one after another (what a device map does):
                    chunk_s = sum over stages of the stage's chunk time (time_model on its n_i layers)
                              + (N - 1) hand-offs of c D b bytes
                    decode per token = sum over stages + (N - 1) hand-offs of D b bytes
                    Each link moves only its own layers' offloaded KV, so per-link bytes fall as 1/N, but the
                    links work one after another: at the same total offloaded KV, decode per token does not
                    fall with N. More GPUs help decode by holding more resident heads (N x the memory for
                    1/N of the weights each), and help prefill not at all (same FLOPs, in series).
    hand-off        no inter-GPU bandwidth in the profile: taken at pcie_h2d_bytes_per_s (the activation
                    crosses PCIe GPU to GPU; NVLink would be faster, and the hand-off is tiny next to a chunk)
    idle            GPU i is busy prefill_i + decode_tokens * decode_i of the workload's prefill + decode
                    time; idle_fraction_i = 1 - busy / total, about (N - 1) / N with even stages
    pinning         pin_s of the summed host store (the stores pinned one after another: conservative)
    compute-bound   per stage, the smallest chunk of the ladder at which its prefill is compute-bound (not
                    PCIe-bound), at the plan's G, R_i and backend
Leaves out: chunk-level pipelining of prefill (stage i on chunk k + 1 while stage i + 1 runs chunk k; it
would divide prefill by up to N but needs a schedule the executor does not have), hiding a stage's first
prefetch behind earlier stages, hand-off latency, NUMA placement of the host stores, and NVLink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hwprofiles.schema import HardwareProfile, profile_hash
from planner.candidates import FitsByMemory, Setup, make_setup
from planner.coverage import plan_fidelity_notes
from planner.errors import PlanError
from planner.layout import resident_heads_per_layer
from planner.memory_model import (chunk_activation_bytes, host_kv_bytes, kv_terms, largest_call_kv_heads,
                                  max_resident_heads, split_parts_bytes, weights_bytes)
from planner.model_spec import ModelSpec
from planner.plan import GpuBreakdown, MemoryPrediction, Plan, Stage
from planner.solver import _alternatives, _best, _closest_miss, _miss_reason, _prediction, make_plan
from planner.strategies import Knobs, allowed, check_knobs, chunk_candidates, group_candidates
from planner.time_model import TimePrediction, Workload, predict_prefill, predict_time
from planner.units import format_bytes, format_tokens

def split_layers(num_layers: int, gpus: int) -> list[tuple[int, int]]:
    """(first_layer, num_layers) of each stage: contiguous, L // N or L // N + 1 layers (earlier stages first)."""
    if gpus < 1:
        raise PlanError(f"--gpus must be at least 1, got {gpus}")
    if gpus > num_layers:
        raise PlanError(f"--gpus {gpus} is more than the model's {num_layers} layers (one stage per GPU needs "
                        "at least one layer)")
    base, extra = divmod(num_layers, gpus)
    stages, first = [], 0
    for index in range(gpus):
        count = base + (1 if index < extra else 0)
        stages.append((first, count))
        first += count
    return stages


@dataclass(frozen=True)
class StageShape:
    """A stage's place in the pipeline and the ModelSpec its costs are computed on: the model's layer shapes,
    ``num_hidden_layers`` = the stage's layers, ``vocab_size`` = 0 except on the last stage (no lm_head, no
    logits elsewhere). Its weights come from stage_weights_bytes, not from that spec's param_count."""

    first_layer: int
    num_layers: int
    is_first: bool
    is_last: bool
    spec: ModelSpec

    @property
    def kv_slots(self) -> int:
        return self.spec.kv_head_slots


def stage_shapes(model: ModelSpec, gpus: int) -> list[StageShape]:
    if model.sliding_layers and gpus > 1:
        raise PlanError(f"{model.name} has sliding-window layers, which run on one GPU only: a pipeline over "
                        f"--gpus {gpus} is not supported for it")
    split = split_layers(model.num_hidden_layers, gpus)
    shapes = []
    for index, (first, count) in enumerate(split):
        last = index == gpus - 1
        spec = model.model_copy(update={"num_hidden_layers": count, "vocab_size": model.vocab_size if last else 0})
        shapes.append(StageShape(first, count, index == 0, last, spec))
    return shapes


def stage_weights_bytes(model: ModelSpec, shape: StageShape, elem_bytes: int) -> int:
    """n_i * layer params + V D (embedding, stage 0) + V D + D (lm_head and final norm, last stage), times b."""
    if shape.is_first and shape.is_last:
        return weights_bytes(model, elem_bytes)
    params = shape.num_layers * model.layer_param_count
    vocab_matrix = model.vocab_size * model.hidden_size
    params += vocab_matrix if shape.is_first else 0
    params += vocab_matrix + model.hidden_size if shape.is_last else 0
    return params * elem_bytes


def handoff_seconds(model: ModelSpec, profile: HardwareProfile, tokens: float, elem_bytes: int) -> float:
    """One stage boundary: the hidden states of ``tokens`` rows, tokens * D * b bytes, at pcie_h2d_bytes_per_s
    (the profile has no GPU-to-GPU bandwidth)."""
    return tokens * model.hidden_size * elem_bytes / profile.pcie_h2d_bytes_per_s


@dataclass
class StagePoint:
    shape: StageShape
    resident_kv_heads: int
    memory: MemoryPrediction
    time: Optional[TimePrediction] = None


@dataclass
class PipelineCandidate(FitsByMemory):
    """One (strategy, c, G, R_0..R_{N-1}) point; ``memory`` is the fullest stage's with host bytes summed, so
    the single-GPU solver's ranking and reasons apply unchanged."""

    strategy: str
    chunk_size: int
    heads_per_group: int
    stages: list[StagePoint]
    memory: MemoryPrediction
    time: Optional[TimePrediction] = None
    backend: str = "flash"
    pin_s: float = 0.0
    total_s: float = float("inf")
    other_backend_s: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    @property
    def resident_kv_heads(self) -> int:
        return sum(stage.resident_kv_heads for stage in self.stages)

    @property
    def fullest_stage(self) -> int:
        return max(range(len(self.stages)), key=lambda i: self.stages[i].memory.gpu_peak_bytes)


def stage_memory(setup: Setup, shape: StageShape, chunk: int, group: int, resident: int) -> MemoryPrediction:
    """The stage's GPU peak (its weights, its layers' KV terms, its activations, overhead) and host store."""
    spec, elem = shape.spec, setup.elem_bytes
    kv_detail = kv_terms(spec, chunk_tokens=chunk, heads_per_group=group, resident_kv_heads=resident,
                         capacity_tokens=setup.capacity_tokens, elem_bytes=elem)
    breakdown = GpuBreakdown(weights=stage_weights_bytes(setup.model, shape, elem), kv=sum(kv_detail.values()),
                             activations=stage_activation_bytes(setup, spec, chunk, group, resident),
                             overhead=setup.overhead_bytes)
    return MemoryPrediction(
        gpu_peak_bytes=breakdown.weights + breakdown.kv + breakdown.activations + breakdown.overhead,
        gpu_budget_bytes=setup.gpu_budget_bytes, gpu_breakdown=breakdown, kv_detail=kv_detail,
        host_kv_bytes=host_kv_bytes(spec, resident, setup.capacity_tokens, elem),
        host_budget_bytes=setup.host_budget_bytes)


def stage_activation_bytes(setup: Setup, spec, chunk: int, group: int, resident: int) -> int:
    """memory_model.chunk_activation_bytes of the stage, with the cudnn-split parts of its widest call."""
    split = 0
    if setup.split_context_tokens is not None:
        split = split_parts_bytes(spec, chunk_tokens=chunk, context_tokens=setup.split_context_tokens,
                                  call_kv_heads=largest_call_kv_heads(spec, resident, group),
                                  elem_bytes=setup.elem_bytes)
    return chunk_activation_bytes(spec, chunk, setup.elem_bytes, split)


def most_resident(setup: Setup, shape: StageShape, chunk: int, group: int) -> int:
    """The most resident slots that fit the stage's GPU (-1: none), from memory_model.max_resident_heads on the
    stage spec, its weights' difference from the spec's param_count passed in as extra fixed overhead."""
    spec, elem = shape.spec, setup.elem_bytes
    extra_weights = stage_weights_bytes(setup.model, shape, elem) - weights_bytes(spec, elem)
    return max_resident_heads(spec, runtime_overhead_bytes=setup.overhead_bytes + extra_weights, chunk_tokens=chunk,
                              heads_per_group=group, capacity_tokens=setup.capacity_tokens, elem_bytes=elem,
                              gpu_budget_bytes=setup.gpu_budget_bytes, split_context_tokens=setup.split_context_tokens)


def build_candidate(setup: Setup, shapes: list[StageShape], strategy: str, chunk: int, group: int,
                    residents: list[int]) -> PipelineCandidate:
    stages = [StagePoint(shape, r, stage_memory(setup, shape, chunk, group, r)) for shape, r in zip(shapes, residents)]
    fullest = max(stages, key=lambda s: s.memory.gpu_peak_bytes).memory
    memory = fullest.model_copy(update={"host_kv_bytes": sum(s.memory.host_kv_bytes for s in stages)})
    return PipelineCandidate(strategy, chunk, group, stages, memory)


def _fixed_residents(model: ModelSpec, shapes: list[StageShape], total: int) -> list[int]:
    """A fixed total R spread over all layers as layout.py does; each stage takes its layers' share."""
    per_layer = resident_heads_per_layer(total, model.num_hidden_layers, model.num_key_value_heads)
    return [sum(per_layer[s.first_layer:s.first_layer + s.num_layers]) for s in shapes]


def enumerate_pipeline(setup: Setup, shapes: list[StageShape], knobs: Knobs) -> dict[str, list[PipelineCandidate]]:
    """Every point the knobs allow, per strategy (memory only), as solver's enumerate_candidates does."""
    model, context = setup.model, setup.context_tokens
    check_knobs(model, context, knobs)
    kv_heads = model.num_key_value_heads
    chunks = chunk_candidates(context, knobs)
    all_resident = [s.kv_slots for s in shapes]
    resident_group = knobs.heads_per_group or kv_heads
    out: dict[str, list[PipelineCandidate]] = {}
    if allowed("standard", model, context, knobs):
        out["standard"] = [build_candidate(setup, shapes, "standard", context, resident_group, all_resident)]
    if allowed("chunked", model, context, knobs):
        out["chunked"] = [build_candidate(setup, shapes, "chunked", c, resident_group, all_resident)
                          for c in chunks if c < context]
    if allowed("layer-offload", model, context, knobs):
        out["layer-offload"] = [build_candidate(setup, shapes, "layer-offload", c, kv_heads, [0] * len(shapes))
                                for c in chunks]
    if allowed("head-offload", model, context, knobs):
        heads = []
        for c in chunks:
            for g in group_candidates(model, knobs):
                if knobs.resident_kv_heads is not None:
                    residents = _fixed_residents(model, shapes, knobs.resident_kv_heads)
                else:
                    residents = [max(0, min(most_resident(setup, s, c, g), s.kv_slots)) for s in shapes]
                total = sum(residents)
                if total >= model.kv_head_slots or (total == 0 and g == kv_heads):
                    continue                  # that point is chunked (all resident) or layer-offload
                heads.append(build_candidate(setup, shapes, "head-offload", c, g, residents))
        out["head-offload"] = heads
    return out


def _stage_time(setup: Setup, point: StagePoint, chunk: int, group: int, backend: str,
                cache: dict) -> tuple[float, dict, TimePrediction]:
    """(prefill_s, per-chunk arrays, TimePrediction) of one stage; identical stages share one computation."""
    key = (point.shape.num_layers, point.shape.is_last, point.resident_kv_heads, chunk, group, backend)
    if key not in cache:
        work = Workload(context_tokens=setup.context_tokens, decode_tokens=setup.decode_tokens, chunk_size=chunk,
                        heads_per_group=group, resident_kv_heads=point.resident_kv_heads,
                        elem_bytes=setup.elem_bytes, backend=backend)
        prefill = predict_prefill(point.shape.spec, setup.lookup, work)
        cache[key] = (prefill[0], prefill[1], predict_time(point.shape.spec, setup.profile, setup.lookup, work,
                                                             prefill=prefill))
    return cache[key]


def time_pipeline(setup: Setup, cand: PipelineCandidate, backend: Optional[str], cache: dict) -> PipelineCandidate:
    """Stage times in series plus hand-offs; the backend (one for all stages) with the least summed prefill."""
    backends = (backend,) if backend else setup.backends
    summed = sorted(((sum(_stage_time(setup, p, cand.chunk_size, cand.heads_per_group, name, cache)[0]
                          for p in cand.stages), name != "flash", name) for name in backends))
    cand.backend = summed[0][2]
    cand.other_backend_s = summed[1][0] if len(summed) > 1 else None
    boundaries = len(cand.stages) - 1
    model, profile, elem = setup.model, setup.profile, setup.elem_bytes
    chunk_s, terms, decode_s = None, {}, boundaries * handoff_seconds(model, profile, 1, elem)
    for point in cand.stages:
        _, arrays, point.time = _stage_time(setup, point, cand.chunk_size, cand.heads_per_group, cand.backend, cache)
        chunk_s = arrays["step"] if chunk_s is None else chunk_s + arrays["step"]
        decode_s += point.time.decode_s_per_token
        for name, value in point.time.terms.items():
            terms[name] = terms.get(name, 0.0) + value
    sizes = [min(cand.chunk_size, setup.context_tokens - s) for s in range(0, setup.context_tokens, cand.chunk_size)]
    handoffs = [boundaries * handoff_seconds(model, profile, size, elem) for size in sizes]
    chunk_list = [float(step) + extra for step, extra in zip(chunk_s, handoffs)]
    terms["prefill_handoff_s"] = sum(handoffs)
    terms["decode_handoff_s"] = boundaries * handoff_seconds(model, profile, 1, elem)
    slowest = max(cand.stages, key=lambda p: p.time.prefill_s + setup.decode_tokens * p.time.decode_s_per_token)
    cand.time = TimePrediction(prefill_s=sum(chunk_list), decode_s_per_token=decode_s, chunk_s=chunk_list,
                               prefill_bound=slowest.time.prefill_bound, decode_bound=slowest.time.decode_bound,
                               terms=terms)
    cand.pin_s = setup.lookup.pin_seconds(cand.memory.host_kv_bytes)
    cand.total_s = cand.pin_s + cand.time.prefill_s + setup.decode_tokens * decode_s
    return cand


def compute_bound_chunk(setup: Setup, cand: PipelineCandidate, point: StagePoint, cache: dict) -> Optional[int]:
    """Smallest ladder chunk at which the stage's prefill is compute-bound, at the plan's G, R_i and backend."""
    for chunk in sorted(chunk_candidates(setup.context_tokens, Knobs())):
        time = _stage_time(setup, point, chunk, cand.heads_per_group, cand.backend, cache)[2]
        if time.prefill_bound == "compute":
            return chunk
    return None


def _no_fit_error(setup: Setup, gpus: int, every: list[PipelineCandidate]) -> PlanError:
    """One line: the closest miss over all candidates (GPU bytes over on its fullest stage, or host bytes over)."""
    miss = _closest_miss(every)
    if miss is None:
        return PlanError(f"no plan for {setup.model.name} over {gpus} GPUs with these knobs")
    where = f" (stage {miss.fullest_stage}, the fullest GPU)" if miss.gpu_over_bytes > 0 else ""
    return PlanError(f"{setup.model.name} at {format_tokens(setup.context_tokens)} tokens over {gpus} GPUs of "
                     f"{format_bytes(setup.gpu_budget_bytes)} each: no plan fits; the closest {_miss_reason(miss)}"
                     f"{where}")


def _stages(setup: Setup, chosen: PipelineCandidate, cache: dict) -> list[Stage]:
    work_s = chosen.time.prefill_s + setup.decode_tokens * chosen.time.decode_s_per_token
    stages = []
    for point in chosen.stages:
        busy_s = point.time.prefill_s + setup.decode_tokens * point.time.decode_s_per_token
        mem = point.memory
        stages.append(Stage(
            first_layer=point.shape.first_layer, num_layers=point.shape.num_layers,
            resident_kv_heads=point.resident_kv_heads, gpu_peak_bytes=mem.gpu_peak_bytes,
            gpu_breakdown=mem.gpu_breakdown, kv_detail=mem.kv_detail, host_kv_bytes=mem.host_kv_bytes,
            prefill_s=point.time.prefill_s, decode_s_per_token=point.time.decode_s_per_token,
            prefill_bound=point.time.prefill_bound, decode_bound=point.time.decode_bound,
            idle_fraction=max(0.0, 1.0 - busy_s / work_s) if work_s > 0 else 0.0,
            compute_bound_chunk_tokens=compute_bound_chunk(setup, chosen, point, cache)))
    return stages


def _pipeline_notes(chosen: PipelineCandidate, stages: list[Stage], gpus: int) -> list[str]:
    bound = [format_tokens(s.compute_bound_chunk_tokens) if s.compute_bound_chunk_tokens else "none up to 64K"
             for s in stages]
    idle = sum(s.idle_fraction for s in stages) / len(stages)
    per_stage = (f"{bound[0]} on every stage" if len(set(bound)) == 1
                 else ", ".join(f"stage {i} {b}" for i, b in enumerate(bound)))
    return [
        f"chunk that keeps each stage's prefill compute-bound rather than PCIe-bound (smallest on the ladder, at "
        f"G={chosen.heads_per_group} and each stage's resident heads): {per_stage}; the plan's chunk is "
        f"{format_tokens(chosen.chunk_size)} (chosen by total time)",
        f"single-sequence pipeline: the {gpus} GPUs work one after another, each idle {idle:.0%} of the "
        f"workload on average ((N-1)/N = {(gpus - 1) / gpus:.0%}); chunk-level pipelining is not modelled",
        "stage hand-offs (chunk x hidden x dtype bytes) timed at the profile's pcie_h2d_bytes_per_s: the profile "
        "has no GPU-to-GPU bandwidth",
    ]


def make_pipeline_plan(model: ModelSpec, hardware: HardwareProfile, *, gpus: int, context_tokens: int,
                       decode_tokens: int, gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int] = None,
                       dtype: str = "bfloat16", chunk_size: Optional[int] = None,
                       heads_per_group: Optional[int] = None, resident_kv_heads: Optional[int] = None,
                       strategy: Optional[str] = None, attention_backend: Optional[str] = None,
                       decode_graphs: bool = True) -> Plan:
    """The fastest split over ``gpus`` GPUs that fits (gpu_mem_bytes per GPU, host_mem_bytes shared); with one
    GPU exactly solver.make_plan (``decode_graphs`` applies there only: several stages decode eagerly). Raises
    PlanError when none fits or gpus is not 1 .. L."""
    single = dict(context_tokens=context_tokens, decode_tokens=decode_tokens, gpu_mem_bytes=gpu_mem_bytes,
                  host_mem_bytes=host_mem_bytes, dtype=dtype, chunk_size=chunk_size, heads_per_group=heads_per_group,
                  resident_kv_heads=resident_kv_heads, strategy=strategy, attention_backend=attention_backend)
    shapes = stage_shapes(model, gpus)                     # validates gpus first
    if gpus == 1:
        return make_plan(model, hardware, decode_graphs=decode_graphs, **single)
    setup = make_setup(model, hardware, context_tokens=context_tokens, decode_tokens=decode_tokens,
                       gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_mem_bytes, dtype=dtype,
                       attention_backend=attention_backend)
    knobs = Knobs(chunk_size, heads_per_group, resident_kv_heads, strategy, attention_backend)
    by_strategy = enumerate_pipeline(setup, shapes, knobs)
    every = [c for cands in by_strategy.values() for c in cands]
    fitting = [c for c in every if c.fits]
    if not fitting:
        raise _no_fit_error(setup, gpus, every)
    cache: dict = {}
    for cand in fitting:
        time_pipeline(setup, cand, attention_backend, cache)
    chosen = _best(fitting)
    stages = _stages(setup, chosen, cache)
    notes = list(setup.notes) + _pipeline_notes(chosen, stages, gpus)
    if chunk_size is not None and chunk_size > context_tokens:
        notes.append(f"chunk size {chunk_size} capped at the context ({context_tokens} tokens)")
    notes += plan_fidelity_notes(model, hardware, backend=chosen.backend, chunk_tokens=chosen.chunk_size,
                                 context_tokens=context_tokens)
    return Plan(
        model=model, hardware=hardware, hardware_hash=hardware.content_hash or profile_hash(hardware), dtype=dtype,
        context_tokens=context_tokens, decode_tokens=decode_tokens, strategy=chosen.strategy,
        chunk_size=chosen.chunk_size, heads_per_group=chosen.heads_per_group, resident_kv_heads=chosen.resident_kv_heads,
        attention_backend=chosen.backend, memory=chosen.memory, predicted=_prediction(chosen),
        alternatives=_alternatives(chosen, by_strategy), notes=notes, gpus=gpus, stages=stages)
