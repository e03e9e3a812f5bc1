"""report.md: the RunReport as Markdown (headline table of predicted, measured and error, transfers, attention,
memory, per-GPU rows, plots)."""

from __future__ import annotations

from typing import Optional

from executor.report.schema import AttentionFigures, RunReport, TailFigures, Transfers
from planner.units import GIB


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _gb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def _gb_per_s(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value / 1e9:.{digits}f} GB/s"


def _gpu_lines(report: RunReport) -> list[str]:
    """Per-GPU table (runs over several stages only)."""
    if len(report.gpus) < 2:
        return []
    how = (" - by heads: every GPU runs all layers with 1/N of the heads" if report.parallel == "heads" else "")
    lines = [f"Per GPU (predicted / measured, error){how}:", "",
             "| GPU | layers | resident | peak | prefill busy | decode busy per token | idle | H2D prefill / decode "
             "| NUMA |", "|---|---|---|---|---|---|---|---|---|"]
    for g in report.gpus:
        pre, dec = g.transfers.get("prefill", Transfers()), g.transfers.get("decode", Transfers())
        idle = "-" if g.measured_idle_fraction is None else f"{g.measured_idle_fraction:.0%}"
        idle_p = "-" if g.predicted_idle_fraction is None else f"{g.predicted_idle_fraction:.0%}"
        numa = "-" if g.numa_node is None else f"node {g.numa_node}" + (" (bound)" if g.numa_bound else "")
        lines.append(
            f"| {g.device} | {g.first_layer}-{g.first_layer + g.num_layers - 1} | {g.resident_kv_heads} | "
            f"{_gib(g.predicted_gpu_peak_bytes)} / {_gib(g.measured_gpu_peak_bytes)} "
            f"({_pct(g.error.get('gpu_peak_bytes'))}) | {_seconds(g.predicted_prefill_busy_s)} / "
            f"{_seconds(g.measured_prefill_busy_s)} ({_pct(g.error.get('prefill_busy_s'))}) | "
            f"{_seconds(g.predicted_decode_busy_s_per_token)} / {_seconds(g.measured_decode_busy_s_per_token)} "
            f"({_pct(g.error.get('decode_busy_s_per_token'))}) | {idle_p} / {idle} | "
            f"{_gib(pre.h2d_bytes)} / {_gib(dec.h2d_bytes)} | {numa} |")
    return lines + [""]


def _tail_lines(tail: Optional[TailFigures]) -> list[str]:
    """The one line that says a timing probe's prefill figures are not the whole prefill's."""
    if tail is None:
        return []
    return [f"**Timing probe:** prefill figures are for the last {tail.chunks} of {tail.total_chunks} chunks (after "
            f"{tail.lead_in} untimed lead-in chunk), over a synthetic KV past (a fixed random pattern) of {tail.skipped_tokens} tokens (generated tokens are not the model's; whole "
            f"prefill predicted {_seconds(tail.predicted_full_prefill_s)}).", ""]


def _answer_lines(report: RunReport) -> list[str]:
    """The answer as text (quoted), how it stopped and how it was sampled; the token ids."""
    lines = []
    if report.generated_text is not None:
        quoted = "\n".join("> " + line for line in (report.generated_text or "(empty)").splitlines())
        lines += ["## Answer", "", quoted or "> (empty)", ""]
    if report.stop_reason is not None:
        sampling = ", ".join(f"{k}={v}" for k, v in report.sampling.items())
        lines += [f"{report.prompt_tokens} prompt tokens, {len(report.generated_token_ids)} generated, stopped by "
                  f"{report.stop_reason}" + (f"; {sampling}" if sampling else "") + ".", ""]
    return lines + [f"Generated token ids: {report.generated_token_ids}", ""]


def _kv_lines(report: RunReport) -> list[str]:
    """The saved-context lines (--load-kv / --save-kv): bytes, seconds, rates, prediction."""
    kv = report.kv
    if kv is None:
        return []
    rate = lambda r: _gb_per_s(r, 2)  # noqa: E731
    lines = []
    if kv.path:
        lines.append(f"**Loaded context** {kv.path}: {kv.reused_tokens} tokens ({_gib(kv.loaded_bytes)}) in "
                     f"{_seconds(kv.load_s)} ({rate(kv.load_bytes_per_s)}; predicted {_seconds(kv.predicted_load_s)} "
                     f"at the profile's {rate(kv.disk_read_bytes_per_s)}), replacing a predicted "
                     f"{_seconds(kv.predicted_replaced_prefill_s)} of prefill; {kv.prefilled_tokens} tokens "
                     f"prefilled (prefill predicted for those only).")
    if kv.save_path:
        lines.append(f"**Saved context** {kv.save_path}: {_gib(kv.saved_bytes)} in {_seconds(kv.save_s)} "
                     f"({rate(kv.save_bytes_per_s)}; predicted {_seconds(kv.predicted_save_s)} at the profile's "
                     f"{rate(kv.disk_write_bytes_per_s)}).")
    return lines + [""]


def render_markdown(report: RunReport) -> str:
    """report.md: headline table (predicted, measured, error), transfers, attention, memory, plots."""
    p, m, e = report.predicted, report.measured, report.error
    lines = [f"# headplan run: {report.model}, {report.context_tokens} tokens, {report.new_tokens} new", ""]
    if report.status != "complete":
        lines += [f"**Partial run ({report.status}):** {report.fault}", ""]
    lines += [f"Device {report.device}, dtype {report.dtype}, settings: "
              + ", ".join(f"{k}={v}" for k, v in report.settings.items()), ""]
    lines += [f"- warning: {w}" for w in report.warnings] + ([""] if report.warnings else [])
    lines += _tail_lines(report.tail)
    lines += _kv_lines(report)
    prefill = "prefill" if report.tail is None else f"prefill (last {report.tail.chunks} chunks)"
    first_token = "time to first token" + ("" if report.tail is None else " (last chunks only)")
    lines += ["| | predicted | measured | error |", "|---|---|---|---|",
              f"| {prefill} | {_seconds(p.prefill_s)} | {_seconds(m.prefill_s)} | {_pct(e.prefill_s)} |",
              f"| {first_token} | {_seconds(p.time_to_first_token_s)} | {_seconds(m.time_to_first_token_s)} | |",
              f"| warm-up (once per process, not in prefill) | - | {_seconds(m.warmup_s)} | |",
              f"| decode per token | {_seconds(p.decode_s_per_token)} | {_seconds(m.decode_s_per_token)} | "
              f"{_pct(e.decode_s_per_token)} |",
              f"| GPU peak | {_gib(p.gpu_peak_bytes)} | {_gib(m.gpu_peak_bytes)} | {_pct(e.gpu_peak_bytes)} |", ""]
    h = report.host
    if h.measured_decode_host_s_per_token is not None:
        lines += [f"Decode per token, host (issuing the token) predicted "
                  f"{_seconds(h.predicted_decode_host_s_per_token)}, measured "
                  f"{_seconds(h.measured_decode_host_s_per_token)}; GPU predicted "
                  f"{_seconds(h.predicted_decode_gpu_s_per_token)}. Decode step: {h.decode_step}"
                  + (f" (capture and one untimed step: {_seconds(h.decode_graph_setup_s)})"
                     if h.decode_step == "graph" else "")
                  + (f"; capture failed: {h.decode_graph_fallback}" if h.decode_graph_fallback else "") + ".", ""]
    if h.decode_cpu_steal_fraction:
        lines += [f"The hypervisor took {h.decode_cpu_steal_fraction:.1%} of the CPUs' time during decode (the "
                  f"busiest CPU {h.decode_busiest_cpu_steal_fraction or 0:.1%}; prefill "
                  f"{h.prefill_cpu_steal_fraction or 0:.1%}).", ""]
    lines += ["| phase | host-to-device | device-to-host | achieved H2D | attention TFLOP/s | attention share |",
              "|---|---|---|---|---|---|"]
    for phase, t in report.transfers.items():
        a = report.attention.get(phase, AttentionFigures())
        rate = "-" if t.h2d_bytes_per_s is None else f"{t.h2d_bytes_per_s / 1e9:.1f} GB/s"
        tflops = "-" if a.flops_per_s is None else f"{a.flops_per_s / 1e12:.2f}"
        share = "-" if a.share_of_phase is None else f"{a.share_of_phase * 100:.0f}%"
        lines.append(f"| {phase} | {_gib(t.h2d_bytes)} | {_gib(t.d2h_bytes)} | {rate} | {tflops} | {share} |")
    lines += _host_share_lines(report)
    mem = report.memory
    lines += ["", "Memory: peak allocated " + _gib(mem.gpu_peak_allocated_bytes) + ", peak reserved "
              + _gib(mem.gpu_peak_reserved_bytes) + ", process (driver) " + _gib(mem.gpu_process_used_bytes)
              + ", budget " + _gib(mem.gpu_budget_bytes) + f"; host store {_gib(mem.host_store_bytes)} "
              f"({_gib(mem.host_huge_page_bytes)} in huge pages) touched in {mem.host_touch_s:.2f} s, pinned in "
              f"{mem.host_pin_s:.2f} s." + _outside_allocator_line(mem), ""]
    lines += _gpu_lines(report)
    if report.verify:
        lines += ["Verify against the standard forward: " + ", ".join(f"{k}={v}" for k, v in report.verify.items()),
                  ""]
    lines += _answer_lines(report)
    lines += ["![time per chunk](chunk_time.png)", "", "![memory](memory.png)", ""]
    return "\n".join(lines)


def _host_share_lines(report: RunReport) -> list[str]:
    """Decode's CPU share: bytes each side read per token and the rates, predicted beside measured."""
    h = report.host_share
    if h is None:
        return []
    return ["", f"Decode CPU share F = {h.cpu_share:g}: per token the CPU read {_gb(h.measured_cpu_bytes_per_token)} "
            f"(predicted {_gb(h.predicted_cpu_bytes_per_token)}) at {_gb_per_s(h.measured_cpu_bytes_per_s)} in its kernel "
            f"({_seconds(h.measured_cpu_kernel_s_per_token)} per token; predicted with hand-offs "
            f"{_seconds(h.predicted_cpu_s_per_token)}); PCIe streamed {_gb(h.measured_pcie_bytes_per_token)} "
            f"(predicted {_gb(h.predicted_pcie_bytes_per_token)}) at {_gb_per_s(h.measured_pcie_bytes_per_s)} over the "
            "decode wall time."] + _rebalance_lines(h) + _host_timeline_lines(h)


def _rebalance_lines(h) -> list[str]:
    """The share chosen again during decode (--rebalance-cpu-share), if asked."""
    r = h.rebalance
    if not r:
        return []
    change = (f"F {r['planned_share']:g} -> {r['share']:g}" if r["share"] != r["planned_share"]
              else f"F {r['share']:g} kept")
    return ["", f"Re-balanced after {r['at_token']} decode tokens: the share's jobs read "
            f"{_gb_per_s(r['measured_cpu_bytes_per_s'])} (planned {_gb_per_s(r['planned_cpu_bytes_per_s'])}); "
            f"{change} ({r['reason']})."]


def _host_timeline_lines(h) -> list[str]:
    """The host share's per-layer timeline: submit -> job start, the job, the main thread's join wait."""
    calls = h.measured_cpu_calls_per_token
    if not calls or h.measured_cpu_start_delay_s_per_token is None:
        return []

    def per_layer(value) -> str:
        return "-" if value is None else f"{value / calls * 1e3:.2f} ms"

    hand_off = {"stream": " (the GPU waited for each job on the stream)",
                "join": " (the main thread joined the worker every layer)"}.get(h.hand_off or "", "")
    return ["", f"CPU share timeline per token over {calls:g} layers{hand_off}: submit (or the previous job's end) to "
            f"the job's start "
            f"{_seconds(h.measured_cpu_start_delay_s_per_token)}, the job {_seconds(h.measured_cpu_kernel_s_per_token)}, "
            f"the main thread's join wait {_seconds(h.measured_join_wait_s_per_token)} (per layer "
            f"{per_layer(h.measured_cpu_start_delay_s_per_token)}, {per_layer(h.measured_cpu_kernel_s_per_token)}, "
            f"{per_layer(h.measured_join_wait_s_per_token)})."]


def _outside_allocator_line(mem) -> str:
    """' Outside the allocator: ... GiB after the warm-up (CUDA stack lowered by N B per thread).' or ''."""
    warmed = mem.gpu_outside_allocator_by_phase.get("warmed-up", {}).get("outside_allocator_bytes")
    if warmed is None:
        return ""
    released = ", ".join(f"{device} {per_thread} B" for device, per_thread in
                         mem.cuda_stack_released_bytes_per_thread.items())
    return (f" Outside the allocator after the warm-up: {_gib(warmed)}"
            + (f" (CUDA stack per thread lowered again by {released})" if released else "") + ".")

