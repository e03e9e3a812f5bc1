"""Python API: run a plan on a transformers model and get the generated ids and the report.

    from executor.api import run_plan
    result = run_plan(model, plan, input_ids, new_tokens=16, device="cuda")
    result.generated_ids        # list[int], greedy
    result.report               # executor.report.RunReport (predicted, measured, error, ...)

``plan`` is a planner Plan (its settings and predictions are used) or an ExecutionSettings (no predictions).
``model`` is a Llama / Mistral / Qwen2 ``*ForCausalLM`` already on ``device`` (executor.model_loader builds one);
for a plan over N GPUs, already placed on its stages (``build_random(..., stages=stages_from_plan(plan,
devices_for(N, "cuda")))``); the report then has a per-GPU block.
``input_ids`` is [1, n] int64. The model is not modified; its attention implementation is switched for the
run and restored after. Faults raise executor.faults.RunFault with ``.report`` set to a partial report.
``tail_chunks=K`` (with a Plan) is a timing probe: only the prompt's last K prefill chunks run, at their real
positions, over a zero-filled KV past standing in for the earlier chunks (runner.execute's
``synthetic_past_tokens``); the report's prefill figures, predicted and measured, are those K chunks' and its
``tail`` block says so; the outputs are not the model's, so ``verify`` is refused.
Leaves out: batches, sampling, the CLI (headplan/cmd_run.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from executor.faults import RunFault
from executor.kv_store import ExecutionSettings
from executor.report import (AttentionFigures, GpuFigures, HostFigures, MemoryFigures, RunReport, TailFigures,
                             TimesAndPeak, Transfers, errors_of, relative_error)
from executor.measurement import Measurement
from executor.runner import execute
from executor.stages import DeviceStage, devices_for, stages_from_plan


@dataclass
class RunResult:
    generated_ids: list[int]
    report: RunReport
    measurement: Measurement
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TailSplit:
    """A timing probe's share of the prefill: the last ``chunks`` of ``total_chunks`` chunks are timed, after
    ``lead_in`` (0 or 1) untimed chunk before them; the K, V of tokens [0, skipped_tokens) (the start of the first
    chunk run, a multiple of the chunk size) are zero-filled.

    The lead-in chunk pays what a whole prefill pays gradually as each shape first appears (cuDNN's graph builds
    for the past blocks of that context: measured on the H100, 1B at 2M tokens, the first chunk run took 1.20 s
    against 0.58 s for the next five) and the planner prices at the chunks where those shapes appear."""

    chunks: int
    total_chunks: int
    skipped_tokens: int
    lead_in: int = 0

    @property
    def run_chunks(self) -> int:
        """Chunks the probe runs: the lead-in and the timed ones."""
        return self.chunks + self.lead_in


def tail_split(prompt_tokens: int, chunk_size: int, tail_chunks: Optional[int]) -> Optional[TailSplit]:
    """The last ``tail_chunks`` of the chunks starting at range(0, prompt_tokens, chunk_size), with one untimed
    lead-in chunk before them; None when ``tail_chunks`` is None or covers every chunk (then the run is a whole
    one). ValueError when it is below 1."""
    if tail_chunks is None:
        return None
    if tail_chunks < 1:
        raise ValueError(f"tail_chunks must be at least 1, got {tail_chunks}")
    starts = range(0, prompt_tokens, chunk_size)
    if tail_chunks >= len(starts):
        return None
    return TailSplit(chunks=tail_chunks, total_chunks=len(starts), skipped_tokens=starts[-tail_chunks - 1],
                     lead_in=1)


def check_tail_request(tail_chunks: Optional[int], verify: bool) -> None:
    """ValueError unless ``tail_chunks`` is None or >= 1 and not asked together with ``verify`` (the zero-filled
    past makes the outputs not the model's). The CLI calls it before loading anything."""
    if tail_chunks is None:
        return
    if tail_chunks < 1:
        raise ValueError(f"--tail-chunks must be at least 1, got {tail_chunks}")
    if verify:
        raise ValueError("--verify needs the whole prefill: --tail-chunks zero-fills the earlier chunks' KV, so the "
                         "outputs are not the model's")


def _check_tail(plan: Any, tail_chunks: Optional[int], verify: bool, prompt_tokens: int) -> Optional[TailSplit]:
    """run_plan's ``tail_chunks`` checked against its other arguments, as a TailSplit (or None)."""
    check_tail_request(tail_chunks, verify)
    if tail_chunks is None:
        return None
    if isinstance(plan, ExecutionSettings):
        raise ValueError("tail_chunks needs a Plan (its per-chunk predictions), not bare ExecutionSettings")
    return tail_split(prompt_tokens, plan.chunk_size, tail_chunks)


def settings_from_plan(plan: Any, new_tokens: int, prompt_tokens: Optional[int] = None) -> ExecutionSettings:
    """ExecutionSettings of a Plan; capacity = prompt + new tokens (at least the plan's context + decode)."""
    prompt = prompt_tokens if prompt_tokens is not None else plan.context_tokens
    capacity = max(prompt + new_tokens, plan.context_tokens + plan.decode_tokens)
    return ExecutionSettings(chunk_size=plan.chunk_size, heads_per_group=plan.heads_per_group,
                             resident_kv_heads=plan.resident_kv_heads, capacity_tokens=capacity,
                             attention_backend=plan.attention_backend,
                             decode_graphs=getattr(plan, "decode_graphs", False))


def run_plan(model, plan: Union[Any, ExecutionSettings], input_ids: torch.Tensor, *, new_tokens: int,
             device: Union[str, torch.device], trace: bool = False, verify: bool = False,
             on_chunk: Optional[Callable[[int], None]] = None, model_name: str = "model",
             memory_extra: Optional[dict] = None, warnings: Optional[list[str]] = None,
             stages: Optional[list[DeviceStage]] = None, host_available_bytes: Optional[int] = None,
             tail_chunks: Optional[int] = None) -> RunResult:
    """Head-offloaded prefill of ``input_ids`` [1, n] and ``new_tokens`` greedy tokens; see the module doc.

    ``stages``: the layers split over devices (executor/stages.py), the model already placed on them (model_loader
    does both); default: a plan for several GPUs runs its plan.stages on cuda:0 .. cuda:N-1, else one stage on
    ``device``. ``host_available_bytes``: host RAM the stores may take (default: MemAvailable). ``tail_chunks``
    K >= 1 (a Plan only; not with ``verify``): run only the last K of the prompt's prefill chunks over a zero-filled
    past (module doc); K at least the chunk count runs the whole prompt as usual (``report.tail`` None).
    ``on_chunk`` then counts the chunks run (0 .. K - 1)."""
    tail = _check_tail(plan, tail_chunks, verify, input_ids.shape[1])
    if isinstance(plan, ExecutionSettings):
        settings, plan_obj = plan, None
    else:
        settings, plan_obj = settings_from_plan(plan, new_tokens, input_ids.shape[1]), plan
        if stages is None and plan.gpus > 1:
            stages = stages_from_plan(plan, devices_for(plan.gpus, torch.device(device).type))
    common = dict(model=model, plan=plan_obj, settings=settings, input_ids=input_ids, new_tokens=new_tokens,
                  device=device, model_name=model_name, memory_extra=memory_extra or {}, warnings=warnings or [],
                  tail=tail)
    past = tail.skipped_tokens if tail is not None else 0
    try:
        measurement = execute(model, input_ids[:, past:], settings, new_tokens=new_tokens, device=device, trace=trace,
                              keep_logits=verify, on_chunk=on_chunk, stages=stages,
                              host_available_bytes=host_available_bytes, synthetic_past_tokens=past)
    except RunFault as fault:
        fault.report = build_report(measurement=fault.partial, status=fault.kind, fault=str(fault), **common)
        raise
    verify_block = verify_against_standard(model, input_ids, measurement, device) if verify else None
    report = build_report(measurement=measurement, verify=verify_block, **common)
    return RunResult(generated_ids=measurement.generated_token_ids, report=report, measurement=measurement)


def standard_step_logits(model, input_ids: torch.Tensor, generated_ids: list[int],
                         device: Union[str, torch.device]) -> torch.Tensor:
    """The standard transformers forward (the model's own attention, one prefill, DynamicCache), fed the
    same generated tokens: [len(generated_ids), vocab] float32 logits of each step's last position."""
    from transformers import DynamicCache

    steps = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        steps.append(out.logits[0, -1].float())
        for token in generated_ids[:-1]:
            ids = torch.tensor([[token]], device=device)
            out = model(ids, past_key_values=cache, use_cache=True)
            steps.append(out.logits[0, -1].float())
    return torch.stack(steps).cpu()


def verify_against_standard(model, input_ids, measurement: Measurement, device) -> dict:
    """Largest logit difference against the standard forward and whether greedy tokens agree."""
    try:
        reference = standard_step_logits(model, input_ids, measurement.generated_token_ids, device)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"skipped": "the standard forward does not fit on this GPU"}
    ours = measurement.step_logits
    greedy = reference.argmax(-1).tolist()
    return {"max_abs_logit_diff": float((ours - reference).abs().max()),
            "reference_max_abs_logit": float(reference.abs().max()),
            "greedy_tokens_agree": greedy == measurement.generated_token_ids,
            "first_disagreement": next((i for i, (a, b) in enumerate(zip(greedy, measurement.generated_token_ids))
                                        if a != b), None)}


def _predicted_block(plan, tail: Optional[TailSplit] = None) -> TimesAndPeak:
    """The plan's figures; for a timing probe, prefill (chunk_s, prefill_s and time to first token) restricted to
    the chunks run: the last K of the plan's chunk_s, summed (None where the plan's chunk list does not match the
    prompt's chunks: a prompt of another length than the plan's context)."""
    if plan is None:
        return TimesAndPeak()
    predicted, memory = plan.predicted, plan.memory
    chunk_s, prefill_s = list(predicted.chunk_s), predicted.prefill_s
    if tail is not None:
        matches = len(chunk_s) == tail.total_chunks
        chunk_s = chunk_s[-tail.chunks:] if matches else []
        prefill_s = sum(chunk_s) if matches else None
    return TimesAndPeak(prefill_s=prefill_s, decode_s_per_token=predicted.decode_s_per_token,
                        gpu_peak_bytes=memory.gpu_peak_bytes, chunk_s=chunk_s, time_to_first_token_s=prefill_s,
                        gpu_breakdown=memory.gpu_breakdown.model_dump(), host_kv_bytes=memory.host_kv_bytes)


def _tail_figures(plan, tail: Optional[TailSplit]) -> Optional[TailFigures]:
    if tail is None:
        return None
    full = plan.predicted.prefill_s if plan is not None else None
    return TailFigures(chunks=tail.chunks, total_chunks=tail.total_chunks, skipped_tokens=tail.skipped_tokens,
                       lead_in=tail.lead_in,
                       predicted_full_prefill_s=full,
                       description=f"timing probe: only the last {tail.chunks} of {tail.total_chunks} prefill chunks "
                       f"were timed (after {tail.lead_in} untimed lead-in chunk), at their real positions; the KV of "
                       f"the first {tail.skipped_tokens} tokens was "
                       "zero-filled instead of computed, so generated tokens are not the model's. Prefill and time "
                       "to first token (predicted and measured) cover those chunks only; decode and GPU peak are at "
                       "the full context.")


def weights_by_device(model) -> dict[str, int]:
    """Parameter bytes on each device (shared parameters counted once)."""
    out: dict[str, int] = {}
    for param in model.parameters():
        out[str(param.device)] = out.get(str(param.device), 0) + param.numel() * param.element_size()
    return out


def _measured_block(model, m: Measurement, tail: Optional[TailSplit] = None) -> TimesAndPeak:
    by_device = weights_by_device(model)
    weights = by_device.get(m.fullest_device, 0) if m.fullest_device else sum(by_device.values())
    breakdown: dict[str, int] = {}
    peak = None
    if m.gpu_peak_reserved_bytes is not None:
        kv = sum(m.gpu_store_bytes.values())
        peak = m.gpu_peak_reserved_bytes + (m.gpu_outside_allocator_bytes or 0)  # as the driver would see it
        breakdown = {"weights": weights, "kv": kv,
                     "activations": max(0, m.gpu_peak_allocated_bytes - weights - kv),
                     "overhead": peak - m.gpu_peak_allocated_bytes}
    chunk_s, prefill_s, first_token_s = list(m.chunk_s), m.prefill_s, m.time_to_first_token_s
    if tail is not None and tail.lead_in and len(chunk_s) > tail.lead_in:     # the timed chunks only
        chunk_s = chunk_s[tail.lead_in:]
        prefill_s = first_token_s = sum(chunk_s)
    return TimesAndPeak(prefill_s=prefill_s, decode_s_per_token=m.decode_s_per_token, gpu_peak_bytes=peak,
                        chunk_s=chunk_s, time_to_first_token_s=first_token_s,
                        warmup_s=m.warmup_s, gpu_breakdown=breakdown, host_kv_bytes=m.host_store_bytes)


def _phase_figures(m: Measurement) -> tuple[dict, dict]:
    phase_s = _phase_seconds(m.prefill_s, m.decode_s_per_token, m.decode_tokens_timed)
    transfers, attention = _transfers(m.counters, phase_s), {}
    for phase, counters in m.counters.items():
        seconds = phase_s.get(phase)
        attn_s = m.attention_s.get(phase, 0.0)
        attention[phase] = AttentionFigures(flops=counters.attention_flops, seconds=attn_s,
                                            flops_per_s=counters.attention_flops / attn_s if attn_s else None,
                                            share_of_phase=attn_s / seconds if seconds else None)
    return transfers, attention


def _phase_seconds(prefill_s: Optional[float], decode_s_per_token: Optional[float], tokens: int) -> dict:
    return {"prefill": prefill_s, "decode": decode_s_per_token * tokens if decode_s_per_token else None}


def _transfers(counters, phase_s: dict) -> dict[str, Transfers]:
    out = {}
    for phase, c in counters.items():
        seconds = phase_s.get(phase)
        rate = (lambda b: b / seconds if seconds else None)  # noqa: E731
        out[phase] = Transfers(h2d_bytes=c.h2d_bytes, d2h_bytes=c.d2h_bytes, h2d_bytes_per_s=rate(c.h2d_bytes),
                               d2h_bytes_per_s=rate(c.d2h_bytes), group_fetches=c.group_fetches)
    return out


def gpu_figures(plan, m: Measurement, tail: Optional[TailSplit] = None) -> list[GpuFigures]:
    """Per-GPU predicted (plan.stages) beside measured (m.stages); empty for a single stage. For a timing probe
    (``tail``) the predicted prefill busy time and idle share are None: the plan gives them for the whole prefill
    only, and the measured ones cover the chunks run."""
    if len(m.stages) < 2:
        return []
    planned = list(getattr(plan, "stages", []) or []) if plan is not None else []
    wall_s = (m.prefill_s or 0.0) + (m.decode_s_per_token or 0.0) * m.decode_tokens_timed
    out = []
    for index, st in enumerate(m.stages):
        p = planned[index] if index < len(planned) else None
        peak = None
        if st.gpu_peak_reserved_bytes is not None:
            peak = st.gpu_peak_reserved_bytes + (st.gpu_outside_allocator_bytes or 0)
        busy = (st.prefill_busy_s or 0.0) + (st.decode_busy_s_per_token or 0.0) * m.decode_tokens_timed
        figures = GpuFigures(
            index=st.index, device=st.device, first_layer=st.first_layer, num_layers=st.num_layers,
            resident_kv_heads=st.resident_kv_heads, numa_node=st.numa_node, numa_bound=st.numa_bound,
            host_store_bytes=st.host_store_bytes, predicted_gpu_peak_bytes=p.gpu_peak_bytes if p else None,
            measured_gpu_peak_bytes=peak, predicted_prefill_busy_s=p.prefill_s if p and not tail else None,
            measured_prefill_busy_s=st.prefill_busy_s,
            predicted_decode_busy_s_per_token=p.decode_s_per_token if p else None,
            measured_decode_busy_s_per_token=st.decode_busy_s_per_token,
            predicted_idle_fraction=p.idle_fraction if p and not tail else None,
            measured_idle_fraction=max(0.0, 1.0 - busy / wall_s) if wall_s > 0 else None,
            transfers=_transfers(st.counters, _phase_seconds(st.prefill_busy_s, st.decode_busy_s_per_token,
                                                             m.decode_tokens_timed)))
        figures.error = {
            "gpu_peak_bytes": relative_error(figures.measured_gpu_peak_bytes, figures.predicted_gpu_peak_bytes),
            "prefill_busy_s": relative_error(figures.measured_prefill_busy_s, figures.predicted_prefill_busy_s),
            "decode_busy_s_per_token": relative_error(figures.measured_decode_busy_s_per_token,
                                                      figures.predicted_decode_busy_s_per_token)}
        out.append(figures)
    return out


def host_figures(plan, m: Measurement) -> HostFigures:
    """The plan's decode host and GPU terms beside the measured host time per token (median)."""
    terms = getattr(getattr(plan, "predicted", None), "terms", None) or {}
    host = sorted(m.decode_host_s)
    return HostFigures(predicted_decode_host_s_per_token=terms.get("decode_host_s"),
                       predicted_decode_gpu_s_per_token=terms.get("decode_gpu_s"),
                       measured_decode_host_s_per_token=host[len(host) // 2] if host else None,
                       planned_decode_graphs=getattr(plan, "decode_graphs", None), decode_step=m.decode_step,
                       decode_graph_setup_s=m.decode_graph_setup_s, decode_graph_fallback=m.decode_graph_fallback)


def build_report(*, model, plan, settings: ExecutionSettings, input_ids, new_tokens, device, model_name: str,
                 measurement: Optional[Measurement], status: str = "complete", fault: Optional[str] = None,
                 verify: Optional[dict] = None, memory_extra: Optional[dict] = None,
                 warnings: Optional[list[str]] = None, tail: Optional[TailSplit] = None) -> RunReport:
    """Assemble the RunReport from the plan (predicted) and the Measurement (possibly partial); ``input_ids`` the
    whole prompt [1, n]; ``tail`` a timing probe's chunks (prefill predicted over those only, the ``tail`` block)."""
    import transformers

    m = measurement or Measurement(prompt_tokens=input_ids.shape[1])
    predicted, measured = _predicted_block(plan, tail), _measured_block(model, m, tail)
    transfers, attention = _phase_figures(m)
    memory = MemoryFigures(gpu_peak_allocated_bytes=m.gpu_peak_allocated_bytes,
                           gpu_peak_reserved_bytes=m.gpu_peak_reserved_bytes,
                           gpu_process_used_bytes=m.gpu_process_used_bytes, host_store_bytes=m.host_store_bytes,
                           host_pin_s=m.host_pin_s, gpu_store_bytes=m.gpu_store_bytes, **(memory_extra or {}))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return RunReport(status=status, fault=fault, model=model_name, device=str(device), dtype=dtype,
                     context_tokens=int(input_ids.shape[1]), new_tokens=new_tokens,
                     settings={k: getattr(settings, k) for k in settings.__dataclass_fields__},
                     predicted=predicted, measured=measured, error=errors_of(predicted, measured),
                     generated_token_ids=m.generated_token_ids, transfers=transfers, attention=attention,
                     memory=memory, verify=verify, warnings=list(warnings or []),
                     plan_hardware=plan.hardware.name if plan is not None else None,
                     gpus=gpu_figures(plan, m, tail), host=host_figures(plan, m), tail=_tail_figures(plan, tail),
                     versions={"torch": torch.__version__, "transformers": transformers.__version__})
