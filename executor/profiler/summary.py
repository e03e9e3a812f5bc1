"""The summary table printed after a profile: measured figures beside the datasheet profile of the same GPU.

One row per scalar the planner uses: measured value, datasheet value (the catalog's profile for this GPU,
where there is one) and measured / datasheet. Plain text, fixed-width columns.
Leaves out: the tables (the profile file holds them).
"""

from __future__ import annotations

from typing import Callable, Optional

from hwprofiles.schema import HardwareProfile
from planner.units import format_bytes, format_rate, format_seconds

# (label, field, formatter)
ROWS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("matmul (large shapes)", "matmul_flops_per_s", lambda v: format_rate(v, "FLOP")),
    ("attention (prefill, fallback)", "attention_flops_per_s", lambda v: format_rate(v, "FLOP")),
    ("memory read bandwidth", "hbm_bytes_per_s", lambda v: format_rate(v, "B")),
    ("host->device pinned", "pcie_h2d_bytes_per_s", lambda v: format_rate(v, "B")),
    ("device->host pinned", "pcie_d2h_bytes_per_s", lambda v: format_rate(v, "B")),
    ("both directions (total)", "pcie_bidir_total_bytes_per_s", lambda v: format_rate(v, "B")),
    ("host->device pageable", "pcie_h2d_pageable_bytes_per_s", lambda v: format_rate(v, "B")),
    ("pinning rate", "pin_bytes_per_s", lambda v: format_rate(v, "B")),
    ("host memcpy", "host_memcpy_bytes_per_s", lambda v: format_rate(v, "B")),
    ("host RAM (available)", "host_mem_bytes", format_bytes),
    ("runtime GPU overhead", "runtime_overhead_bytes", format_bytes),
    ("kernel launch", "launch_overhead_s", lambda v: f"{v * 1e6:.1f} us"),
    ("small attention call", "attention_call_overhead_s", lambda v: f"{v * 1e6:.1f} us"),
    ("cuDNN graph build", "cudnn_graph_build_s", format_seconds),
    ("cuDNN causal graph build", "cudnn_causal_graph_build_s", format_seconds),
    ("layer elementwise ops", "elementwise_bytes_per_s", lambda v: format_rate(v, "B")),
    ("  compiled (--compile-layers)", "compiled_elementwise_bytes_per_s", lambda v: format_rate(v, "B")),
    ("executor host / forward", "executor_model_host_s", lambda v: f"{v * 1e6:.1f} us"),
    ("executor host / decode layer", "executor_decode_layer_host_s", lambda v: f"{v * 1e6:.1f} us"),
    ("executor host / group / layer", "executor_group_host_s", lambda v: f"{v * 1e6:.1f} us"),
    ("executor host / prefill layer", "executor_prefill_layer_host_s", lambda v: f"{v * 1e6:.1f} us"),
    ("executor host / split part", "executor_split_part_host_s", lambda v: f"{v * 1e6:.1f} us"),
)


def _cell(value: Optional[float], formatter: Callable[[float], str]) -> str:
    return "-" if value is None else formatter(value)


def summary_table(measured: HardwareProfile, datasheet: Optional[HardwareProfile]) -> str:
    """Rows of measured | datasheet | ratio, headed by the two profiles' names."""
    other = datasheet.name if datasheet else "(no datasheet profile)"
    lines = [f"{'':32} {measured.name:>22} {other:>22} {'ratio':>7}"]
    for label, field, formatter in ROWS:
        value = getattr(measured, field)
        reference = getattr(datasheet, field) if datasheet else None
        ratio = f"{value / reference:.2f}" if value and reference else "-"
        lines.append(f"{label:32} {_cell(value, formatter):>22} {_cell(reference, formatter):>22} {ratio:>7}")
    tables = (f"tables: {len(measured.matmul_table)} matmul, {len(measured.attention_table)} attention, "
              f"{len(measured.transfer_table)} transfer, {len(measured.pinning_table)} pinning points")
    lines.append(tables)
    best = _best_attention(measured)
    if best:
        lines.append(best)
    return "\n".join(lines)


def _best_attention(profile: HardwareProfile) -> str:
    """One line per backend: best measured prefill attention rate and its shape."""
    parts = []
    for backend in sorted({p.backend for p in profile.attention_table}):
        prefill = [p for p in profile.attention_table if p.backend == backend and p.q_len > 1]
        if prefill:
            top = max(prefill, key=lambda p: p.flops_per_s)
            parts.append(f"{backend} {format_rate(top.flops_per_s, 'FLOP')} (d{top.head_dim} {top.q_heads}q/"
                         f"{top.kv_heads}kv heads, q {top.q_len}, k {top.k_len})")
    return ("best attention: " + "; ".join(parts)) if parts else ""
