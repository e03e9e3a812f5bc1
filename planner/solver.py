"""The solver: choose strategy, chunk size, heads per group, resident heads and attention backend — the
fastest predicted workload (pinning + prefill + decode_tokens * decode per token) among what fits the GPU
budget and host RAM, ties to the coarser grouping (fewer launches), then to the smaller GPU peak.

Public API (used by the CLI, the executor and the validation scripts):
    make_plan(model, hardware, *, context_tokens, decode_tokens, gpu_mem_bytes, host_mem_bytes=None,
              dtype="bfloat16", chunk_size, heads_per_group, resident_kv_heads, strategy=None) -> Plan
    evaluate(model, hardware, *, context_tokens, decode_tokens, gpu_mem_bytes, host_mem_bytes, dtype,
             chunk_size, heads_per_group, resident_kv_heads, attention_backend=None)
        -> (fits, MemoryPrediction, Prediction, reason)          one fixed configuration
    max_context(model, hardware, *, gpu_mem_bytes, host_mem_bytes, decode_tokens, dtype, chunk_size,
                heads_per_group, resident_kv_heads, strategy=None) -> {strategy: tokens}
None means auto (the card's memory for gpu_mem_bytes, the profile's host RAM for host_mem_bytes).
Guarantees (tests/unit/test_solver.py): never over either budget; fixed knobs honoured; more GPU memory never
makes the chosen plan slower (the candidate grid does not depend on the budget except through R's maximum).
Leaves out: the cost formulas (memory_model, time_model) and the text output (render).
"""

from __future__ import annotations

from typing import Optional

from hwprofiles.schema import HardwareProfile, profile_hash
from planner.candidates import Candidate, Setup, enumerate_candidates, make_setup, time_candidate
from planner.coverage import plan_fidelity_notes
from planner.errors import PlanError
from planner.host_share import scaled_cpu_rates
from planner.memory_model import weights_bytes
from planner.model_spec import ModelSpec
from planner.plan import STRATEGIES, Alternative, MemoryPrediction, Plan, Prediction
from planner.strategies import Knobs, allowed, chunk_candidates, describe_knobs, group_candidates
from planner.units import format_bytes, format_seconds, format_tokens

TIE_RELATIVE = 1e-9


def _rank_key(cand: Candidate) -> tuple[float, int, int]:
    return (cand.total_s, -cand.heads_per_group, cand.memory.gpu_peak_bytes)


def _best(cands: list[Candidate]) -> Optional[Candidate]:
    """Fastest total; within TIE_RELATIVE of it, the coarser grouping, then the smaller GPU peak."""
    if not cands:
        return None
    fastest = min(c.total_s for c in cands)
    tied = [c for c in cands if c.total_s <= fastest * (1 + TIE_RELATIVE)]
    return min(tied, key=lambda c: (-c.heads_per_group, c.memory.gpu_peak_bytes, c.total_s))


def _closest_miss(cands: list[Candidate]) -> Optional[Candidate]:
    """The non-fitting candidate that misses by the least (GPU bytes over, then host bytes over)."""
    if not cands:
        return None
    return min(cands, key=lambda c: (c.gpu_over_bytes, c.host_over_bytes))


def _miss_reason(cand: Candidate) -> str:
    mem = cand.memory
    if cand.gpu_over_bytes > 0:
        return (f"does not fit: needs {format_bytes(mem.gpu_peak_bytes)} of GPU memory, "
                f"{format_bytes(cand.gpu_over_bytes)} over the {format_bytes(mem.gpu_budget_bytes)} budget")
    return (f"does not fit: offloaded KV needs {format_bytes(mem.host_kv_bytes)} of host RAM, "
            f"{format_bytes(cand.host_over_bytes)} over the {format_bytes(mem.host_budget_bytes)} available")


def _slower_reason(cand: Candidate, chosen: Candidate) -> str:
    ratio = cand.total_s / chosen.total_s if chosen.total_s > 0 else float("inf")
    return (f"slower: {format_seconds(cand.total_s)} for the workload vs {format_seconds(chosen.total_s)} "
            f"(+{(ratio - 1) * 100:.1f}%; prefill {format_seconds(cand.time.prefill_s)}, "
            f"decode {format_seconds(cand.time.decode_s_per_token)}/token)")


def _alternative(cand: Candidate, chosen: Candidate) -> Alternative:
    fits = cand.fits
    return Alternative(
        strategy=cand.strategy, fits=fits, gpu_peak_bytes=cand.memory.gpu_peak_bytes,
        prefill_s=cand.time.prefill_s if cand.time else None,
        decode_s_per_token=cand.time.decode_s_per_token if cand.time else None,
        reason=_slower_reason(cand, chosen) if fits else _miss_reason(cand),
        chunk_size=cand.chunk_size, heads_per_group=cand.heads_per_group, resident_kv_heads=cand.resident_kv_heads,
    )


def _prediction(cand: Candidate) -> Prediction:
    t = cand.time
    return Prediction(
        prefill_s=t.prefill_s, decode_s_per_token=t.decode_s_per_token, pin_s=cand.pin_s, total_s=cand.total_s,
        prefill_bound=t.prefill_bound, decode_bound=t.decode_bound, chunk_s=t.chunk_s, terms=t.terms,
    )


def _no_fit_error(setup: Setup, knobs: Knobs, all_cands: list[Candidate]) -> PlanError:
    """The one-line reason nothing fits: GPU below the minimum, or host RAM too small (with the longest
    context that fits)."""
    model = setup.model
    fixed = f" with {describe_knobs(knobs)}" if describe_knobs(knobs) else ""
    weights = weights_bytes(model, setup.elem_bytes)
    if weights + setup.overhead_bytes >= setup.gpu_budget_bytes:
        smallest = min(c.memory.gpu_peak_bytes for c in all_cands) if all_cands else weights
        return PlanError(
            f"GPU budget {format_bytes(setup.gpu_budget_bytes)} is below the model weights "
            f"{format_bytes(weights)} + runtime overhead {format_bytes(setup.overhead_bytes)}; "
            f"the minimum for {model.name} at {format_tokens(setup.context_tokens)} tokens is "
            f"{format_bytes(smallest)}")
    host_free = make_setup(model, setup.profile, context_tokens=setup.context_tokens,
                           decode_tokens=setup.decode_tokens, gpu_mem_bytes=setup.gpu_budget_bytes,
                           host_mem_bytes=1 << 62, dtype=setup.dtype, attention_backend=knobs.attention_backend)
    gpu_only = [c for cands in enumerate_candidates(host_free, knobs).values() for c in cands]
    gpu_ok = [c for c in gpu_only if c.gpu_over_bytes <= 0]
    if not gpu_ok:
        smallest = min(c.memory.gpu_peak_bytes for c in gpu_only)
        return PlanError(f"no plan{fixed} fits the GPU budget {format_bytes(setup.gpu_budget_bytes)}: the "
                         f"smallest needs {format_bytes(smallest)} at {format_tokens(setup.context_tokens)} tokens")
    least_host = min(gpu_ok, key=lambda c: c.memory.host_kv_bytes)
    longest = max(max_context_for_setup(setup, knobs).values(), default=0)
    longest_text = f"{format_tokens(longest)} tokens" if longest else "none"
    return PlanError(
        f"offloaded KV needs {format_bytes(least_host.memory.host_kv_bytes)} of host RAM at "
        f"{format_tokens(setup.context_tokens)} tokens{fixed} but {format_bytes(setup.host_budget_bytes)} is "
        f"available (--host-mem); the longest context that fits is {longest_text}")


def solve(setup: Setup, knobs: Knobs) -> tuple[Candidate, dict[str, list[Candidate]]]:
    """Chosen candidate and all candidates by strategy (fitting ones timed)."""
    by_strategy = enumerate_candidates(setup, knobs)
    every = [c for cands in by_strategy.values() for c in cands]
    fitting = [c for c in every if c.fits]
    if not fitting:
        raise _no_fit_error(setup, knobs, every)
    for cand in fitting:
        time_candidate(setup, cand, backend=knobs.attention_backend)
    return _best(fitting), by_strategy


def _alternatives(chosen: Candidate, by_strategy: dict[str, list[Candidate]]) -> list[Alternative]:
    """Best of every other strategy (or its closest miss), and within the chosen strategy the best of every
    other heads-per-group value."""
    alts = []
    for strategy in STRATEGIES:
        cands = by_strategy.get(strategy, [])
        if strategy == chosen.strategy:
            for group in sorted({c.heads_per_group for c in cands} - {chosen.heads_per_group}):
                best = _best([c for c in cands if c.heads_per_group == group and c.fits])
                if best is not None:
                    alts.append(_alternative(best, chosen))
            continue
        best = _best([c for c in cands if c.fits]) or _closest_miss(cands)
        if best is not None:
            alts.append(_alternative(best, chosen))
    return alts


def make_plan(model: ModelSpec, hardware: HardwareProfile, *, context_tokens: int, decode_tokens: int,
              gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int] = None, dtype: str = "bfloat16",
              chunk_size: Optional[int] = None, heads_per_group: Optional[int] = None,
              resident_kv_heads: Optional[int] = None, strategy: Optional[str] = None,
              attention_backend: Optional[str] = None, decode_graphs: bool = True,
              cpu_share: Optional[float] = None, past_cut: Optional[str] = None,
              compile_layers: Optional[bool] = None) -> Plan:
    """The fastest plan that fits, with every alternative and why it lost. Raises PlanError when none fits.
    ``cpu_share`` fixes F of decode attention on the CPU (planner/host_share.py); None chooses it.

    ``attention_backend`` ('flash' or 'cudnn-split') forces the prefill kernel; None picks the faster one.
    ``decode_graphs`` False keeps every decode step eager (else a CUDA graph where it applies).
    ``past_cut`` ('binary' or 'whole', cudnn-split) and ``compile_layers`` fix those knobs; None chooses them
    (planner/candidates.py Setup)."""
    setup = make_setup(model, hardware, context_tokens=context_tokens, decode_tokens=decode_tokens,
                       gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_mem_bytes, dtype=dtype,
                       attention_backend=attention_backend, decode_graphs=decode_graphs, cpu_share=cpu_share,
                       past_cut=past_cut, compile_layers=compile_layers)
    knobs = Knobs(chunk_size, heads_per_group, resident_kv_heads, strategy, attention_backend)
    chosen, by_strategy = solve(setup, knobs)
    notes = list(setup.notes)
    if chosen.cpu_share_reason:
        notes.append(chosen.cpu_share_reason)
    if chunk_size is not None and chunk_size > context_tokens:
        notes.append(f"chunk size {chunk_size} capped at the context ({context_tokens} tokens)")
    notes += plan_fidelity_notes(model, hardware, backend=chosen.backend, chunk_tokens=chosen.chunk_size,
                                 context_tokens=context_tokens,
                                 decode_graphs=setup.graphs_decode(chosen.resident_kv_heads))
    if chosen.other_backend_s is not None:
        notes.append(f"attention backend {chosen.backend}: predicted prefill {format_seconds(chosen.time.prefill_s)}"
                     f" vs {format_seconds(chosen.other_backend_s)} with the other backend")
    if chosen.cpu_share > 0:
        notes.append(slow_host_note(model, hardware, chosen, context_tokens=context_tokens,
                                    decode_tokens=decode_tokens, gpu_mem_bytes=gpu_mem_bytes,
                                    host_mem_bytes=host_mem_bytes, dtype=dtype))
    return Plan(
        model=model, hardware=hardware, hardware_hash=hardware.content_hash or profile_hash(hardware), dtype=dtype,
        context_tokens=context_tokens, decode_tokens=decode_tokens, strategy=chosen.strategy,
        chunk_size=chosen.chunk_size, heads_per_group=chosen.heads_per_group,
        resident_kv_heads=chosen.resident_kv_heads, attention_backend=chosen.backend, cpu_share=chosen.cpu_share,
        decode_graphs=setup.graphs_decode(chosen.resident_kv_heads), memory=chosen.memory,
        past_cut=chosen.past_cut if chosen.backend == "cudnn-split" else "binary",
        chunk_backend=chosen.chunk_backend if chosen.backend == "cudnn-split" else None,
        compile_layers=chosen.compile_layers,
        predicted=_prediction(chosen), alternatives=_alternatives(chosen, by_strategy), notes=notes,
    )


SLOW_HOST_FACTOR = 0.6
"""A plan with a CPU share is also priced with every CPU-attention rate of its profile times this: the lent H200's
whole runs of 2026-12-01 read 0.60-1.45x of its profile's kernel rate, the host's memory bandwidth moving from one
10 s window to the next (docs/cpu-share.md, "The host's memory rate over an evening")."""


def slow_host_note(model: ModelSpec, hardware: HardwareProfile, chosen: Candidate, *, context_tokens: int,
                   decode_tokens: int, gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int],
                   dtype: str) -> str:
    """The chosen plan's decode at SLOW_HOST_FACTOR x the profile's CPU-attention rates (host_share
    scaled_cpu_rates), beside its decode with everything streamed (F = 0, as the share's choice timed it)."""
    slow = evaluate(model, scaled_cpu_rates(hardware, SLOW_HOST_FACTOR), context_tokens=context_tokens,
                    decode_tokens=decode_tokens, gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_mem_bytes,
                    dtype=dtype, chunk_size=chosen.chunk_size, heads_per_group=chosen.heads_per_group,
                    resident_kv_heads=chosen.resident_kv_heads, attention_backend=chosen.backend,
                    cpu_share=chosen.cpu_share, past_cut=chosen.past_cut,
                    compile_layers=chosen.compile_layers)[2].decode_s_per_token
    planned, streamed = chosen.time.decode_s_per_token, chosen.zero_share_decode_s
    verdict = ("still faster than" if slow < streamed else "slower than")
    return (f"slow host: the CPU share's decode follows the host's memory rate; at {SLOW_HOST_FACTOR:g}x the "
            f"profile's CPU-attention rates this plan decodes in {slow * 1e3:.1f} ms per token "
            f"({slow / planned - 1:+.0%}), {verdict} everything streamed ({streamed * 1e3:.1f} ms); --cpu-share 0 "
            "keeps decode off the CPU")


def evaluate(model: ModelSpec, hardware: HardwareProfile, *, context_tokens: int, decode_tokens: int,
             gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int], dtype: str, chunk_size: int,
             heads_per_group: int, resident_kv_heads: int, attention_backend: Optional[str] = None,
             cpu_share: Optional[float] = None, past_cut: Optional[str] = None,
             compile_layers: Optional[bool] = None, chunk_backend: Optional[str] = "auto",
             share_hand_off: str = "stream") -> tuple[bool, MemoryPrediction, Prediction, str]:
    """Memory and time of one fixed configuration (timed even when it does not fit), and why it misses. The
    optional knobs fix what the planner would otherwise choose (a run's as-run settings: benchmarks/repredict.py):
    ``cpu_share``, ``past_cut``, ``compile_layers`` as make_plan takes them, ``chunk_backend`` as
    candidates.time_candidate does ("auto": the planner's choice), ``share_hand_off`` as time_model.Workload."""
    setup = make_setup(model, hardware, context_tokens=context_tokens, decode_tokens=decode_tokens,
                       gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_mem_bytes, dtype=dtype,
                       attention_backend=attention_backend, cpu_share=cpu_share, past_cut=past_cut,
                       compile_layers=compile_layers, share_hand_off=share_hand_off)
    knobs = Knobs(chunk_size, heads_per_group, resident_kv_heads)
    from planner.strategies import check_knobs, strategy_of

    check_knobs(model, context_tokens, knobs)
    chunk = min(chunk_size, context_tokens)
    name = strategy_of(model, context_tokens=context_tokens, chunk_size=chunk, heads_per_group=heads_per_group,
                       resident_kv_heads=resident_kv_heads)
    cand = Candidate.build(setup, name, chunk, heads_per_group, resident_kv_heads)
    time_candidate(setup, cand, backend=attention_backend, chunk_backend=chunk_backend)
    reason = "fits" if cand.fits else _miss_reason(cand)
    return cand.fits, cand.memory, _prediction(cand), reason


def _fits_at(model: ModelSpec, hardware: HardwareProfile, strategy: str, context: int, base: Setup,
             knobs: Knobs) -> bool:
    setup = make_setup(model, hardware, context_tokens=context, decode_tokens=base.decode_tokens,
                       gpu_mem_bytes=base.gpu_budget_bytes, host_mem_bytes=base.host_budget_bytes,
                       dtype=base.dtype, attention_backend=knobs.attention_backend)
    if not allowed(strategy, model, context, knobs):
        return False
    # The most permissive point: the smallest chunk and group (least activation and buffer memory).
    small = Knobs(chunk_size=min(chunk_candidates(context, knobs)) if strategy != "standard" else None,
                  heads_per_group=min(group_candidates(model, knobs)) if strategy == "head-offload" else
                  knobs.heads_per_group, resident_kv_heads=knobs.resident_kv_heads, strategy=strategy)
    cands = enumerate_candidates(setup, small).get(strategy, [])
    return any(c.fits for c in cands)


MAX_CONTEXT_SEARCH_TOKENS = 1 << 34
"""The max-context search stops doubling here: a strategy that still fits (every layer sliding, e.g. Mistral
v0.1, whose KV does not grow with the context) reports a context above it, 'no memory limit'."""


def max_context_for_setup(setup: Setup, knobs: Knobs) -> dict[str, int]:
    """Longest context (tokens) each strategy fits with the setup's budgets; 0 when none; above
    MAX_CONTEXT_SEARCH_TOKENS when memory sets no limit."""
    result = {}
    for strategy in STRATEGIES:
        if knobs.strategy is not None and strategy != knobs.strategy:
            continue

        def fits(tokens: int) -> bool:
            return _fits_at(setup.model, setup.profile, strategy, tokens, setup, knobs)

        lo, hi = 0, 4096                        # chunked needs a context above the smallest chunk
        while hi <= MAX_CONTEXT_SEARCH_TOKENS and fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:                      # fits(lo) (or lo == 0), not fits(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        result[strategy] = lo
    return result


def max_context(model: ModelSpec, hardware: HardwareProfile, *, gpu_mem_bytes: Optional[int],
                host_mem_bytes: Optional[int] = None, decode_tokens: int = 0, dtype: str = "bfloat16",
                chunk_size: Optional[int] = None, heads_per_group: Optional[int] = None,
                resident_kv_heads: Optional[int] = None, strategy: Optional[str] = None) -> dict[str, int]:
    """Longest context each strategy supports for the GPU budget and host RAM (memory only)."""
    setup = make_setup(model, hardware, context_tokens=1024, decode_tokens=decode_tokens,
                       gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_mem_bytes, dtype=dtype)
    return max_context_for_setup(setup, Knobs(chunk_size, heads_per_group, resident_kv_heads, strategy))
