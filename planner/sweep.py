"""One plan per context (`headplan plan --sweep 32K,128K,1M`): the chosen plan of each, or why none fits,
and the GPU peak of every strategy's best (or least-over-budget) point for the plot.

Leaves out: rendering (render.render_sweep) and plotting (plots.plot_sweep).
"""

from __future__ import annotations

from typing import Any, Optional

from hwprofiles.schema import HardwareProfile
from planner.errors import PlanError
from planner.model_spec import ModelSpec
from planner.plan import Plan
from planner.solver import make_plan


def sweep(model: ModelSpec, hardware: HardwareProfile, contexts: list[int], *, decode_tokens: int,
          gpu_mem_bytes: Optional[int], host_mem_bytes: Optional[int], dtype: str, chunk_size: Optional[int],
          heads_per_group: Optional[int], resident_kv_heads: Optional[int],
          strategy: Optional[str], attention_backend: Optional[str] = None,
          ) -> tuple[list[dict[str, Any]], list[Plan]]:
    """Rows (plain dicts, JSON-ready) and the plans that were made, one row per context."""
    rows, plans = [], []
    for context in contexts:
        row: dict[str, Any] = {"context_tokens": context}
        try:
            plan = make_plan(model, hardware, context_tokens=context, decode_tokens=decode_tokens,
                             gpu_mem_bytes=gpu_mem_bytes, host_mem_bytes=host_mem_bytes, dtype=dtype,
                             chunk_size=chunk_size, heads_per_group=heads_per_group,
                             resident_kv_heads=resident_kv_heads, strategy=strategy,
                             attention_backend=attention_backend)
        except PlanError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        plans.append(plan)
        strategy_peaks = {alt.strategy: alt.gpu_peak_bytes for alt in plan.alternatives}
        strategy_peaks[plan.strategy] = plan.memory.gpu_peak_bytes
        row.update(
            strategy=plan.strategy, chunk_size=plan.chunk_size, heads_per_group=plan.heads_per_group,
            resident_kv_heads=plan.resident_kv_heads, attention_backend=plan.attention_backend,
            gpu_peak_bytes=plan.memory.gpu_peak_bytes, gpu_budget_bytes=plan.memory.gpu_budget_bytes,
            host_kv_bytes=plan.memory.host_kv_bytes,
            prefill_s=plan.predicted.prefill_s, decode_s_per_token=plan.predicted.decode_s_per_token,
            total_s=plan.predicted.total_s,
            bounds=f"{plan.predicted.prefill_bound}/{plan.predicted.decode_bound}",
            strategy_gpu_peak_bytes=strategy_peaks,
            strategy_fits={alt.strategy: alt.fits for alt in plan.alternatives} | {plan.strategy: True},
        )
        rows.append(row)
    return rows, plans
