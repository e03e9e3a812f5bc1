"""Candidates of the solver: one point (strategy, c, G, R) with its memory, and its time once timed.

``make_setup`` validates the workload and budgets once; ``enumerate_candidates`` lists, per strategy, the
points the fixed knobs allow (memory only: cheap); ``time_candidate`` adds the time with the faster attention
backend the profile supports ("flash" always; "cudnn-split" where the attention table has cuDNN points and it
predicts a faster prefill — flash stays the fallback).
Leaves out: the choice among candidates (solver) and the formulas (memory_model, time_model).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from hwprofiles.schema import HardwareProfile
from planner.errors import PlanError
from planner.host_share import choose_share, host_share_rates
from planner.attention_time import layer_chunk_backend
from planner.host_time import PAST_CUTS, decode_runs_as_graph
from planner.hw_lookup import RateLookup
from planner.memory_model import (dtype_bytes, max_resident_heads, min_resident_for_host, overhead_bytes,
                                  predict_memory)
from planner.model_spec import ModelSpec
from planner.plan import MemoryPrediction
from planner.strategies import Knobs, allowed, check_knobs, chunk_candidates, group_candidates
from planner.time_model import SHARE_HAND_OFFS, TimePrediction, Workload, predict_prefill, predict_time
from planner.units import format_bytes

_LOOKUPS: dict[int, tuple[HardwareProfile, RateLookup]] = {}


def rate_lookup(profile: HardwareProfile) -> RateLookup:
    """One RateLookup per profile object (its caches survive across the plans of a sweep)."""
    entry = _LOOKUPS.get(id(profile))
    if entry is None or entry[0] is not profile:
        if len(_LOOKUPS) > 16:
            _LOOKUPS.clear()
        entry = (profile, RateLookup(profile))
        _LOOKUPS[id(profile)] = entry
    return entry[1]


@dataclass
class Setup:
    model: ModelSpec
    profile: HardwareProfile
    lookup: RateLookup
    context_tokens: int
    decode_tokens: int
    dtype: str
    elem_bytes: int
    gpu_budget_bytes: int
    host_budget_bytes: int
    overhead_bytes: int
    backends: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    decode_graphs: bool = True
    """CUDA-graph decode where it applies (host_time.decode_runs_as_graph); False: every decode step eager"""
    cpu_share: Optional[float] = None
    """F of decode attention on the CPU (planner/host_share.py); None: chosen per candidate"""
    past_cut: Optional[str] = None
    """"cudnn-split"'s cut of the past (planner/host_time.py PAST_CUTS); None: the faster predicted prefill"""
    compile_layers: Optional[bool] = None
    """torch.compile'd norms and MLPs in prefill; None: on where the profile measured the compiled elementwise
    rate above the eager one (the only term it changes, so that is the faster predicted prefill)"""
    share_hand_off: str = "stream"
    """how the CPU share's result reaches the GPU (time_model.Workload.share_hand_off)"""

    @property
    def compile_chosen(self) -> bool:
        """compile_layers as planned (None resolved by the profile's measured rates)."""
        if self.compile_layers is not None:
            return self.compile_layers
        compiled, eager = self.profile.compiled_elementwise_bytes_per_s, self.profile.elementwise_bytes_per_s
        return bool(compiled and compiled > (eager or self.profile.hbm_bytes_per_s))

    def past_cuts(self, backend: str) -> tuple[str, ...]:
        """The past cuts timed for ``backend``: both for "cudnn-split" unless fixed, else the default."""
        if backend != "cudnn-split":
            return ("binary",)
        return (self.past_cut,) if self.past_cut is not None else PAST_CUTS

    @property
    def capacity_tokens(self) -> int:
        """Tokens the KV stores are allocated for: context + decode tokens."""
        return self.context_tokens + self.decode_tokens

    def graphs_decode(self, resident_kv_heads: int) -> bool:
        """Whether a single-GPU plan with ``resident_kv_heads`` resident decodes through CUDA graphs."""
        return decode_runs_as_graph(resident_kv_heads, self.model.kv_head_slots, self.elem_bytes,
                                    enabled=self.decode_graphs, windows_or_softcap=needs_flex(self.model))

    @property
    def split_context_tokens(self) -> Optional[int]:
        """The prompt length when the prefill may run "cudnn-split" (its attention parts then count in the GPU
        memory: memory_model.split_parts_bytes), else None."""
        return self.context_tokens if "cudnn-split" in self.backends else None


def make_setup(model: ModelSpec, profile: HardwareProfile, *, context_tokens: int, decode_tokens: int,
               gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int], dtype: str,
               attention_backend: Optional[str] = None, decode_graphs: bool = True,
               cpu_share: Optional[float] = None, past_cut: Optional[str] = None,
               compile_layers: Optional[bool] = None, share_hand_off: str = "stream") -> Setup:
    """Validate the workload, budgets and backend; None budgets default to the profile's card memory and host RAM.
    ``attention_backend`` (None: auto) "flash" leaves "cudnn-split" out of the backends considered;
    ``decode_graphs`` False plans every decode step eager. ``past_cut`` / ``compile_layers`` / ``share_hand_off``:
    Setup's fields."""
    if share_hand_off not in SHARE_HAND_OFFS:
        raise PlanError(f"unknown CPU-share hand-off {share_hand_off!r}; use one of {', '.join(SHARE_HAND_OFFS)}")
    if past_cut is not None and past_cut not in PAST_CUTS:
        raise PlanError(f"unknown past cut {past_cut!r}; use one of {', '.join(PAST_CUTS)}")
    if attention_backend not in (None, "flash", "cudnn-split", "flex"):
        raise PlanError(f"unknown attention backend {attention_backend!r}; use auto, flash, cudnn-split or flex")
    if context_tokens <= 0:
        raise PlanError(f"context must be positive, got {context_tokens} tokens")
    if decode_tokens < 0:
        raise PlanError(f"decode tokens must be zero or more, got {decode_tokens}")
    if cpu_share is not None and not 0.0 <= cpu_share <= 1.0:
        raise PlanError(f"--cpu-share must be between 0 and 1, got {cpu_share}")
    try:
        elem_bytes = dtype_bytes(dtype)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    gpu_budget = profile.gpu_mem_bytes if gpu_mem_bytes is None else gpu_mem_bytes
    host_budget = profile.host_mem_bytes if host_mem_bytes is None else host_mem_bytes
    if gpu_budget <= 0 or host_budget < 0:
        raise PlanError("GPU and host memory budgets must be positive")
    notes = []
    if gpu_budget > profile.gpu_mem_bytes:
        notes.append(f"GPU budget {format_bytes(gpu_budget)} exceeds the {profile.gpu_name}'s "
                     f"{format_bytes(profile.gpu_mem_bytes)}")
    lookup = rate_lookup(profile)
    backends = ("flash", "cudnn-split") if lookup.has_backend("cudnn") else ("flash",)
    if attention_backend == "flash":
        backends = ("flash",)
    if attention_backend == "flex":
        backends = ("flex",)
    if needs_flex(model):
        if attention_backend not in (None, "flex"):
            raise PlanError(f"{model.name} has {_flex_reason(model)}: only the flex attention backend runs it "
                            f"(not {attention_backend})")
        backends = ("flex",)
        if not lookup.has_backend("flex"):
            notes.append(f"{model.name} attends through FlexAttention ({_flex_reason(model)}), which the "
                         f"{profile.gpu_name} profile did not measure: priced at its flash attention rates")
    runtime_bytes = profile.runtime_overhead_bytes
    if "flex" in backends:
        runtime_bytes += flex_runtime_bytes(profile, notes)
    return Setup(model, profile, lookup, context_tokens, decode_tokens, dtype, elem_bytes, gpu_budget, host_budget,
                 overhead_bytes(runtime_bytes), backends, notes, decode_graphs, cpu_share, past_cut, compile_layers,
                 share_hand_off)


def flex_runtime_bytes(profile: HardwareProfile, notes: list[str]) -> int:
    """GPU bytes outside the allocator that the compiled flex kernels add (the profile's
    flex_runtime_overhead_bytes; 0 with a note when the profile did not measure it)."""
    if profile.flex_runtime_overhead_bytes is None:
        notes.append(f"the {profile.gpu_name} profile did not measure the GPU memory the compiled FlexAttention "
                     "kernels take outside the allocator (99 MB on an H200, 2026-12-01): the predicted peak may be "
                     "that much low (headplan profile, or benchmarks/profile_section.py --section flex, measures it)")
        return 0
    return profile.flex_runtime_overhead_bytes


def needs_flex(model: ModelSpec) -> bool:
    """Whether the model's attention needs the flex backend: soft-capped scores or sliding windows."""
    return model.attn_logit_softcapping is not None or model.sliding_layers > 0


def _flex_reason(model: ModelSpec) -> str:
    parts = []
    if model.attn_logit_softcapping is not None:
        parts.append(f"attention logits soft-capped at {model.attn_logit_softcapping:g}")
    if model.sliding_layers:
        parts.append(f"{model.sliding_layers} sliding-window layers")
    return " and ".join(parts)


class FitsByMemory:
    """How far a candidate's ``memory`` (MemoryPrediction) is over its budgets, and whether it fits."""

    memory: MemoryPrediction

    @property
    def gpu_over_bytes(self) -> int:
        return self.memory.gpu_peak_bytes - self.memory.gpu_budget_bytes

    @property
    def host_over_bytes(self) -> int:
        return self.memory.host_kv_bytes - self.memory.host_budget_bytes

    @property
    def fits(self) -> bool:
        return self.gpu_over_bytes <= 0 and self.host_over_bytes <= 0


@dataclass
class Candidate(FitsByMemory):
    strategy: str
    chunk_size: int
    heads_per_group: int
    resident_kv_heads: int
    memory: MemoryPrediction
    time: Optional[TimePrediction] = None
    backend: str = "flash"
    pin_s: float = 0.0
    total_s: float = float("inf")
    other_backend_s: Optional[float] = None
    cpu_share: float = 0.0
    cpu_share_reason: str = ""
    zero_share_decode_s: Optional[float] = None
    """decode per token at F = 0 with the same knobs, as the share's choice timed it (None: no share chosen)"""
    past_cut: str = "binary"
    compile_layers: bool = False
    chunk_backend: Optional[str] = None

    @classmethod
    def build(cls, setup: Setup, strategy: str, chunk: int, group: int, resident: int) -> "Candidate":
        memory = predict_memory(
            setup.model, runtime_overhead_bytes=setup.overhead_bytes, chunk_tokens=chunk, heads_per_group=group,
            resident_kv_heads=resident, capacity_tokens=setup.capacity_tokens, elem_bytes=setup.elem_bytes,
            gpu_budget_bytes=setup.gpu_budget_bytes, host_budget_bytes=setup.host_budget_bytes,
            split_context_tokens=setup.split_context_tokens)
        return cls(strategy, chunk, group, resident, memory)


def time_candidate(setup: Setup, cand: Candidate, backend: Optional[str] = None,
                   chunk_backend: Optional[str] = "auto") -> Candidate:
    """Fill in time, pinning and workload total, with the given backend or the fastest available one.
    ``chunk_backend``: the cudnn-split chunk part's kernel; "auto" the faster in the profile
    (attention_time.layer_chunk_backend), else as given (None: the executor's rule)."""
    backends = (backend,) if backend else setup.backends
    if chunk_backend == "auto":
        chunk_backend = layer_chunk_backend(setup.model, setup.lookup, cand.chunk_size)
    prefills = []
    for name in backends:
        for cut in setup.past_cuts(name):
            work = Workload(context_tokens=setup.context_tokens, decode_tokens=setup.decode_tokens,
                            chunk_size=cand.chunk_size, heads_per_group=cand.heads_per_group,
                            resident_kv_heads=cand.resident_kv_heads, elem_bytes=setup.elem_bytes, backend=name,
                            decode_graphs=setup.graphs_decode(cand.resident_kv_heads), past_cut=cut,
                            compile_layers=setup.compile_chosen,
                            chunk_backend=chunk_backend if name == "cudnn-split" else None,
                            share_hand_off=setup.share_hand_off)
            prefills.append((predict_prefill(setup.model, setup.lookup, work), name, work))
    # faster prefill; flash, then the default cut, on a tie
    prefills.sort(key=lambda item: (item[0][0], item[1] != "flash", item[2].past_cut != "binary"))
    (best, name, work) = prefills[0]
    others = [item[0][0] for item in prefills if item[1] != name]
    cand.time = predict_time(setup.model, setup.profile, setup.lookup, work, prefill=best)
    if cand.strategy in ("head-offload", "layer-offload"):
        _choose_cpu_share(setup, cand, work, best)
    cand.backend = name
    cand.past_cut, cand.compile_layers, cand.chunk_backend = work.past_cut, work.compile_layers, work.chunk_backend
    cand.other_backend_s = min(others) if others else None
    cand.pin_s = setup.lookup.pin_seconds(cand.memory.host_kv_bytes)
    cand.total_s = cand.pin_s + cand.time.prefill_s + setup.decode_tokens * cand.time.decode_s_per_token
    return cand


def _choose_cpu_share(setup: Setup, cand: Candidate, work: Workload, prefill) -> None:
    """F for an offloading candidate (planner/host_share.py choose_share); re-times its decode at that F."""
    model, lookup = setup.model, setup.lookup
    if model.attn_logit_softcapping:  # the host's kernel (attention/host_attention.py) computes plain softmax
        if setup.cpu_share:
            raise PlanError("--cpu-share: the host's attention kernel has no logit soft-capping (Gemma-2); use 0")
        cand.cpu_share = 0.0
        cand.cpu_share_reason = "CPU share 0: the host's attention kernel has no logit soft-capping (Gemma-2)"
        return
    measured_dims = sorted({p.head_dim for p in setup.profile.cpu_attention_table})
    if measured_dims and model.head_dim not in measured_dims and setup.cpu_share is None:
        # another head dim's kernel rate does not carry over: on the H200 (2026-12-01) Llama-3.2-1B (d 64) at 1M
        # with F 0.4 priced from d 128 decoded 0.476 s per token against 0.193 predicted, its kernel at 20 GB/s
        cand.cpu_share = 0.0
        cand.cpu_share_reason = (f"CPU share 0: the profile's CPU-attention table has no head dim {model.head_dim} "
                                 f"(measured: {', '.join(map(str, measured_dims))}); --cpu-share F forces one")
        return
    rates = host_share_rates(setup.profile, head_dim=model.head_dim, element_bytes=setup.elem_bytes)

    def decode_at(share: float) -> TimePrediction:
        return predict_time(model, setup.profile, lookup, replace(work, cpu_share=share), prefill=prefill)

    timed = {0.0: cand.time}

    def decode_seconds(share: float) -> float:
        if share not in timed:
            timed[share] = decode_at(share)
        return timed[share].decode_s_per_token

    balance = 0.0
    if rates is not None:
        past = setup.context_tokens + max(setup.decode_tokens - 1, 0) / 2
        cpu = rates.cpu_bytes_per_s(past / 2)
        dma = lookup.transfer_bytes_per_s("h2d", past / 2 * model.head_dim * setup.elem_bytes) * rates.dma_factor
        balance = float(cpu / (cpu + dma))
    choice = choose_share(decode_seconds, rates, fixed=setup.cpu_share, balance_share=balance)
    cand.cpu_share, cand.cpu_share_reason = choice.share, choice.reason
    cand.zero_share_decode_s = choice.zero_share_decode_s
    cand.time = timed.get(choice.share) or decode_at(choice.share)


def _resident_choices(setup: Setup, chunk: int, group: int, knobs: Knobs) -> list[int]:
    """R values for head-offload at (c, G): the fixed one, or the most that fits the GPU and the multiple of L
    below it; when nothing fits, the fewest that host RAM allows (reported as a miss)."""
    model = setup.model
    if knobs.resident_kv_heads is not None:
        return [knobs.resident_kv_heads]
    most = max_resident_heads(model, runtime_overhead_bytes=setup.overhead_bytes, chunk_tokens=chunk,
                              heads_per_group=group, capacity_tokens=setup.capacity_tokens,
                              elem_bytes=setup.elem_bytes, gpu_budget_bytes=setup.gpu_budget_bytes,
                              split_context_tokens=setup.split_context_tokens)
    most = min(most, model.kv_head_slots - 1)
    fewest = min_resident_for_host(model, capacity_tokens=setup.capacity_tokens, elem_bytes=setup.elem_bytes,
                                   host_budget_bytes=setup.host_budget_bytes)
    if most < fewest:
        return [min(fewest, model.kv_head_slots - 1)]
    layers = max(model.full_attention_layers, 1)
    whole = (most // layers) * layers
    return sorted({most, whole} if whole >= fewest else {most})


def enumerate_candidates(setup: Setup, knobs: Knobs) -> dict[str, list[Candidate]]:
    """Every point the knobs allow, per strategy, with its memory (not yet timed)."""
    model, context = setup.model, setup.context_tokens
    check_knobs(model, context, knobs)
    all_slots, kv_heads = model.kv_head_slots, model.num_key_value_heads
    chunks = chunk_candidates(context, knobs)
    resident_group = knobs.heads_per_group or kv_heads
    out: dict[str, list[Candidate]] = {}
    if allowed("standard", model, context, knobs):
        out["standard"] = [Candidate.build(setup, "standard", context, resident_group, all_slots)]
    if allowed("chunked", model, context, knobs):
        out["chunked"] = [Candidate.build(setup, "chunked", c, resident_group, all_slots)
                          for c in chunks if c < context]
    if allowed("layer-offload", model, context, knobs):
        out["layer-offload"] = [Candidate.build(setup, "layer-offload", c, kv_heads, 0) for c in chunks]
    if allowed("head-offload", model, context, knobs):
        heads = []
        for c in chunks:
            for g in group_candidates(model, knobs):
                for r in _resident_choices(setup, c, g, knobs):
                    if r >= all_slots or (r == 0 and g == kv_heads):
                        continue
                    heads.append(Candidate.build(setup, "head-offload", c, g, r))
        out["head-offload"] = heads
    return out
