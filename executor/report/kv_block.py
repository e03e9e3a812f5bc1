"""The report's ``kv`` block (headplan run --load-kv / --save-kv): what was loaded and saved, how fast, against the
plan's prediction from the profile's disk figures (planner/kv_reuse.py), and the prediction of the prefill that
ran: with N tokens loaded, the plan's per-chunk times no longer line up with the chunks run (they start at N), so
the headline predicted prefill becomes the plan's prefill of tokens [N, n) and its chunk list is dropped."""

from __future__ import annotations

from typing import Optional

from executor.generation.measurement import Measurement
from executor.report.schema import KVReuseFigures, TimesAndPeak, relative_error
from planner.kv_reuse import predict_context_load, predict_context_save
from planner.plan import Plan


def kv_figures(plan: Optional[Plan], m: Measurement, prompt_tokens: int) -> Optional[KVReuseFigures]:
    kv = m.kv_reuse
    if not kv:
        return None
    hardware = plan.hardware if plan is not None else None
    read_rate = getattr(hardware, "disk_read_bytes_per_s", None)
    write_rate = getattr(hardware, "disk_write_bytes_per_s", None)
    reused, loaded_bytes, load_s = m.loaded_past_tokens, kv.get("loaded_bytes", 0), kv.get("load_s")
    figures = KVReuseFigures(
        reused_tokens=reused, prefilled_tokens=prompt_tokens - reused, loaded_bytes=loaded_bytes, load_s=load_s,
        load_bytes_per_s=loaded_bytes / load_s if load_s else None, path=kv.get("load_path"),
        save_s=kv.get("save_s"), saved_bytes=kv.get("saved_bytes"), save_path=kv.get("save_path"),
        save_bytes_per_s=kv["saved_bytes"] / kv["save_s"] if kv.get("save_s") else None,
        disk_read_bytes_per_s=read_rate, disk_write_bytes_per_s=write_rate)
    updates = {}
    if plan is not None:
        predicted = predict_context_load(
            reused_tokens=reused, load_bytes=loaded_bytes, disk_read_bytes_per_s=read_rate,
            chunk_s=plan.predicted.chunk_s, chunk_size=plan.chunk_size, context_tokens=plan.context_tokens,
            prefill_s=plan.predicted.prefill_s)
        updates = dict(predicted_load_s=predicted.load_s if figures.path else None,
                       predicted_replaced_prefill_s=predicted.replaced_prefill_s,
                       predicted_full_prefill_s=plan.predicted.prefill_s)
    if figures.saved_bytes:
        updates["predicted_save_s"] = predict_context_save(figures.saved_bytes, write_rate)
    figures = figures.model_copy(update=updates)
    figures.error = {"load_s": relative_error(figures.load_s, figures.predicted_load_s) if reused else None,
                     "save_s": relative_error(figures.save_s, figures.predicted_save_s)}
    return figures


def predicted_after_load(predicted: TimesAndPeak, plan: Optional[Plan], reused_tokens: int) -> TimesAndPeak:
    """The headline prediction of a run whose first ``reused_tokens`` were loaded: prefill of [N, n) only."""
    if plan is None or not reused_tokens or predicted.prefill_s is None:
        return predicted
    load = predict_context_load(reused_tokens=reused_tokens, load_bytes=0, disk_read_bytes_per_s=None,
                                chunk_s=plan.predicted.chunk_s, chunk_size=plan.chunk_size,
                                context_tokens=plan.context_tokens, prefill_s=plan.predicted.prefill_s)
    remaining_s = load.remaining_prefill_s
    return predicted.model_copy(update={"prefill_s": remaining_s, "time_to_first_token_s": remaining_s,
                                        "chunk_s": []})
