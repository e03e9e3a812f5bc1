"""The RunReport assembled from the plan (predicted) and the Measurement (measured, possibly partial): the headline
times and peaks, per-phase transfers and attention rates, per-GPU rows, the decode host time, a timing probe's
block."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from executor.generation.measurement import Measurement
from executor.generation.tail import TailSplit
from executor.report.kv_block import kv_figures, predicted_after_load
from executor.report.schema import (AttentionFigures, GpuFigures, HostFigures, HostShareFigures, MemoryFigures,
                                    RunReport, TailFigures, TimesAndPeak, Transfers, errors_of, relative_error)
from executor.runtime.cpu_steal import StealFigures
from executor.settings import ExecutionSettings
from planner.plan import Plan


@dataclass(frozen=True, kw_only=True)
class ReportContext:
    """What the report says about the run beyond what was measured."""

    model_name: str = "model"
    """the model as the user named it (built-in name, checkpoint path)"""
    memory_extra: dict = field(default_factory=dict)
    """extra MemoryFigures fields (e.g. the GPU budget the CLI set)"""
    parallel: Optional[str] = None
    """'heads' for a tensor-parallel run (executor/launch/rank.py sets it); default: 'layers' with several stages"""
    warnings: list[str] = field(default_factory=list)
    """warnings shown in report.md and report.json"""


def _predicted_block(plan: Optional[Plan], tail: Optional[TailSplit] = None) -> TimesAndPeak:
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


def _tail_figures(plan: Optional[Plan], tail: Optional[TailSplit]) -> Optional[TailFigures]:
    if tail is None:
        return None
    full = plan.predicted.prefill_s if plan is not None else None
    return TailFigures(chunks=tail.chunks, total_chunks=tail.total_chunks, skipped_tokens=tail.skipped_tokens,
                       lead_in=tail.lead_in,
                       predicted_full_prefill_s=full,
                       description=f"timing probe: only the last {tail.chunks} of {tail.total_chunks} prefill chunks "
                       f"were timed (after {tail.lead_in} untimed lead-in chunk), at their real positions; the KV of "
                       f"the first {tail.skipped_tokens} tokens was "
                       "filled with a fixed random pattern instead of computed, so generated tokens are not the model's. Prefill and time "
                       "to first token (predicted and measured) cover those chunks only; decode and GPU peak are at "
                       "the full context.")


def weights_by_device(model) -> dict[str, int]:
    """Parameter bytes on each device (shared parameters counted once; a tensor-parallel DTensor by its local
    shard, what this process holds)."""
    out: dict[str, int] = {}
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        out[str(local.device)] = out.get(str(local.device), 0) + local.numel() * local.element_size()
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
                               d2h_bytes_per_s=rate(c.d2h_bytes), group_fetches=c.group_fetches,
                               host_attention_bytes=c.host_attention_bytes,
                               host_attention_bytes_per_s=(c.host_attention_bytes / c.host_attention_s
                                                           if c.host_attention_s else None))
    return out


@dataclass(frozen=True)
class _RankPrediction:
    """What a tensor-parallel plan predicts for each of its identical ranks (the fields of a pipeline Stage that
    gpu_figures reads): every rank busy for the whole run, idle 0."""

    gpu_peak_bytes: int
    prefill_s: float
    decode_s_per_token: float
    idle_fraction: float


def gpu_figures(plan: Optional[Plan], m: Measurement, tail: Optional[TailSplit] = None) -> list[GpuFigures]:
    """Per-GPU predicted (plan.stages) beside measured (m.stages); empty for a single stage. For a timing probe
    (``tail``) the predicted prefill busy time and idle share are None: the plan gives them for the whole prefill
    only, and the measured ones cover the chunks run."""
    if len(m.stages) < 2:
        return []
    planned = list(plan.stages or []) if plan is not None else []
    if plan is not None and plan.parallel == "heads":  # every rank: the same share (planner/tensor_parallel.py)
        planned = [_RankPrediction(plan.memory.gpu_peak_bytes, plan.predicted.prefill_s,
                                   plan.predicted.decode_s_per_token, 0.0)] * len(m.stages)
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


def host_figures(plan: Optional[Plan], m: Measurement) -> HostFigures:
    """The plan's decode host and GPU terms beside the measured host time per token (median)."""
    terms = plan.predicted.terms if plan is not None else {}
    host = sorted(m.decode_host_s)
    return HostFigures(predicted_decode_host_s_per_token=terms.get("decode_host_s"),
                       predicted_decode_gpu_s_per_token=terms.get("decode_gpu_s"),
                       measured_decode_host_s_per_token=host[len(host) // 2] if host else None,
                       planned_decode_graphs=plan.decode_graphs if plan is not None else None,
                       decode_step=m.decode_step,
                       decode_graph_setup_s=m.decode_graph_setup_s, decode_graph_fallback=m.decode_graph_fallback,
                       prefill_cpu_steal_fraction=m.prefill_cpu_steal.fraction if m.prefill_cpu_steal else None,
                       decode_cpu_steal_fraction=m.decode_cpu_steal.fraction if m.decode_cpu_steal else None,
                       decode_busiest_cpu_steal_fraction=(m.decode_cpu_steal.busiest_cpu_fraction
                                                          if m.decode_cpu_steal else None))


def host_share_figures(plan: Optional[Plan], settings: ExecutionSettings,
                       m: Measurement) -> Optional[HostShareFigures]:
    """Decode's CPU share, predicted beside measured, per token (None when the run's share is 0)."""
    if settings.cpu_share <= 0:
        return None
    terms = plan.predicted.terms if plan is not None else {}
    decode = m.counters.get("decode")
    figures = dict(cpu_share=settings.cpu_share, predicted_cpu_bytes_per_token=terms.get("decode_host_share_bytes"),
                   predicted_pcie_bytes_per_token=terms.get("decode_h2d_bytes"),
                   predicted_cpu_s_per_token=terms.get("decode_host_share_s"), hand_off=m.host_share_hand_off,
                   rebalance=m.share_rebalance)
    if decode is not None:
        # the counters cover every decode forward: per token over all of them
        steps = max(len(m.decode_host_s) or m.decode_tokens_timed, 1)
        figures.update(measured_cpu_bytes_per_token=decode.host_attention_bytes / steps,
                       measured_pcie_bytes_per_token=decode.h2d_bytes / steps,
                       measured_cpu_kernel_s_per_token=decode.host_attention_s / steps,
                       measured_cpu_calls_per_token=decode.host_attention_calls / steps,
                       measured_cpu_start_delay_s_per_token=decode.host_attention_start_delay_s / steps,
                       measured_join_wait_s_per_token=decode.host_join_wait_s / steps,
                       measured_cpu_bytes_per_s=(decode.host_attention_bytes / decode.host_attention_s
                                                 if decode.host_attention_s else None))
        if m.decode_s_per_token:
            figures["measured_pcie_bytes_per_s"] = decode.h2d_bytes / steps / m.decode_s_per_token
    return HostShareFigures(**figures)


DECODE_SHORTFALL = 0.10
"""decode this much over its prediction, with a CPU share, while the host's memory served the CPU share's jobs or
the PCIe stream under 1 - this of the planned rate, earns a report warning naming the rates
(decode_shortfall_warning)"""


def decode_shortfall_warning(plan: Optional[Plan], host_share: Optional[HostShareFigures],
                             predicted_decode_s: Optional[float], error: Optional[float],
                             steal: Optional[StealFigures] = None) -> Optional[str]:
    """A warning when decode ran more than DECODE_SHORTFALL over its prediction with a CPU share and the host's
    memory served either reader under its planned rate by as much: the CPU share's jobs' (bytes over the jobs'
    seconds, against planner/share_rebalance.PricedJob.job_bytes_per_s: the kernel at the table's rate plus each
    call's fixed cost) or PCIe's (the plan's streamed bytes per token over its decode time). Both rates and their
    sum, measured against planned, and where ``steal`` is known the CPU time the hypervisor took during decode
    (runtime/cpu_steal.py). None otherwise."""
    from planner.share_rebalance import planned_job

    if plan is None or host_share is None or error is None or error <= DECODE_SHORTFALL:
        return None
    job = planned_job(plan)
    cpu, cpu_plan = host_share.measured_cpu_bytes_per_s, (job.job_bytes_per_s if job else None)
    pcie = host_share.measured_pcie_bytes_per_s
    pcie_plan = (host_share.predicted_pcie_bytes_per_token / predicted_decode_s
                 if host_share.predicted_pcie_bytes_per_token and predicted_decode_s else None)
    slow = 1 - DECODE_SHORTFALL
    cpu_slow = bool(cpu and cpu_plan and cpu < slow * cpu_plan)
    pcie_slow = bool(pcie and pcie_plan and pcie < slow * pcie_plan)
    if not (cpu_slow or pcie_slow):
        return None
    gb = lambda rate: "-" if not rate else f"{rate / 1e9:.1f}"
    line = (f"decode {error:+.0%} against its prediction: the host's memory served the PCIe stream at {gb(pcie)} "
            f"GB/s (planned {gb(pcie_plan)}) and the CPU share's jobs (F {host_share.cpu_share:g}) at {gb(cpu)} "
            f"GB/s (planned {gb(cpu_plan)})")
    if cpu and pcie:
        line += f", {(cpu + pcie) / 1e9:.1f} GB/s together"
    line += "; what it serves varies from process to process"
    if steal is not None:
        line += (f"; the hypervisor took {steal.fraction:.1%} of the CPUs' time during decode (the busiest CPU "
                 f"{steal.busiest_cpu_fraction:.1%})")
    if host_share.rebalance:
        line += f" (re-balanced after {host_share.rebalance['at_token']} tokens to F {host_share.rebalance['share']:g})"
    return line


def build_report(*, model, plan: Optional[Plan], settings: ExecutionSettings, input_ids: torch.Tensor,
                 new_tokens: int, device, measurement: Optional[Measurement], context: ReportContext = ReportContext(),
                 status: str = "complete", fault: Optional[str] = None, verify: Optional[dict] = None,
                 tail: Optional[TailSplit] = None) -> RunReport:
    """Assemble the RunReport from the plan (predicted) and the Measurement (possibly partial); ``input_ids`` the
    whole prompt [1, n]; ``tail`` a timing probe's chunks (prefill predicted over those only, the ``tail`` block)."""
    import transformers

    m = measurement or Measurement(prompt_tokens=input_ids.shape[1])
    predicted = predicted_after_load(_predicted_block(plan, tail), plan, m.loaded_past_tokens)
    measured = _measured_block(model, m, tail)
    transfers, attention = _phase_figures(m)
    memory = MemoryFigures(gpu_peak_allocated_bytes=m.gpu_peak_allocated_bytes,
                           gpu_peak_reserved_bytes=m.gpu_peak_reserved_bytes,
                           gpu_process_used_bytes=m.gpu_process_used_bytes, host_store_bytes=m.host_store_bytes,
                           host_pin_s=m.host_pin_s, host_touch_s=m.host_touch_s,
                           host_huge_page_bytes=m.host_huge_page_bytes, gpu_store_bytes=m.gpu_store_bytes,
                           gpu_outside_allocator_by_phase=m.gpu_outside_allocator_by_phase,
                           cuda_stack_released_bytes_per_thread=m.stack_released_bytes_per_thread,
                           **context.memory_extra)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    error = errors_of(predicted, measured)
    host_share = host_share_figures(plan, settings, m)
    warnings = list(context.warnings)
    shortfall = decode_shortfall_warning(plan, host_share, predicted.decode_s_per_token, error.decode_s_per_token,
                                         steal=m.decode_cpu_steal)
    if shortfall:
        warnings.append(shortfall)
    return RunReport(status=status, fault=fault, model=context.model_name, device=str(device), dtype=dtype,
                     context_tokens=int(input_ids.shape[1]), new_tokens=new_tokens,
                     settings=dataclasses.asdict(settings),
                     predicted=predicted, measured=measured, error=error,
                     generated_token_ids=m.generated_token_ids, prompt_tokens=int(input_ids.shape[1]),
                     stop_reason=m.stop_reason, transfers=transfers, attention=attention,
                     memory=memory, verify=verify, warnings=warnings,
                     plan_hardware=plan.hardware.name if plan is not None else None,
                     gpus=gpu_figures(plan, m, tail), host=host_figures(plan, m), tail=_tail_figures(plan, tail),
                     host_share=host_share,
                     parallel=context.parallel if context.parallel else (
                         "layers" if len(m.stages) > 1 else None),
                     kv=kv_figures(plan, m, int(input_ids.shape[1])),
                     versions={"torch": torch.__version__, "transformers": transformers.__version__})
