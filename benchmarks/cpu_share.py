"""Decode with the CPU attending a share of the offloaded KV, against streaming it all: one command on the GPU machine.

    python benchmarks/cpu_share.py --out $OUT/h200 --profile hwprofiles/catalog/h200-sxm-measured.json
                                                                   # ~3-3.5 min of an H200

Steps (each prints as it goes; everything lands in --out):
  1. the profiler's host-attention section (host read, the CPU kernel by key length and threads, the kernel on a
     worker thread beside group-sized H2D fetches issued as decode issues them, at 1/2, cores - 1 and all
     threads, the per-layer hand-off, the job's fixed cost per call as a decode step calls it,
     host_attention_call_s) added to --profile: ``profile.json`` (benchmarks/profile_section.py);
  2. Llama-3-8B shape (random weights), 24 GB, at 128K and 512K: ``headplan run --tail-chunks 1`` timing probes (the
     last prefill chunk over a zero-filled past, then --new-tokens decode steps) with the planner's F and with
     F = 0; when the planner chooses F = 0 at 512K, one more cell with --forced-share so the path is measured
     anyway: ``cells.jsonl`` (benchmarks/validate.py run_cell, one process per cell);
  3. the planner's prediction for the HeadInfer paper's desktop (hwprofiles/catalog/rtx-4090-ddr5-desktop.json:
     RTX 4090, PCIe 4.0, a DDR5 host; its assumptions are in the profile's source) at 1M, beside the paper's
     6.4 s per token; ``summary.json`` and ``summary.md``.
``--plan-only`` skips steps 1-2 (any machine: the desktop prediction and the H200 plans from --profile as is).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(1, str(ROOT))

PAPER_4090_1M_S_PER_TOKEN = 6.4  # HeadInfer (arXiv 2502.12574), Llama-3-8B at 1M tokens on an RTX 4090
CONTEXTS = ("128K", "512K")


def profile_step(profile: str, out: Path) -> Path:
    target = out / "profile.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_section.py"), "--section", "host-attention",
                    "--update", profile, "--out", str(target)], check=True, cwd=ROOT)
    return target


def plan_for(hw: str, context: str, gpu_mem: str, share=None) -> dict:
    """The planner's plan (as JSON) for Llama-3-8B at ``context`` under ``gpu_mem``."""
    from hwprofiles.catalog import load_profile
    from planner.model_spec import load_model_spec
    from planner.solver import make_plan
    from planner.units import parse_bytes, parse_tokens

    plan = make_plan(load_model_spec("llama-3-8b"), load_profile(hw), context_tokens=parse_tokens(context),
                     decode_tokens=8, gpu_mem_bytes=parse_bytes(gpu_mem), cpu_share=share)
    return plan.model_dump(mode="json")


def _plan_row(plan: dict) -> dict:
    terms = plan["predicted"]["terms"]
    return {"cpu_share": plan["cpu_share"], "decode_s_per_token": plan["predicted"]["decode_s_per_token"],
            "decode_bound": plan["predicted"]["decode_bound"], "cpu_bytes": terms.get("decode_host_share_bytes"),
            "pcie_bytes": terms.get("decode_h2d_bytes"), "knobs": [plan["chunk_size"], plan["heads_per_group"],
                                                                     plan["resident_kv_heads"]],
            "notes": [n for n in plan["notes"] if "CPU share" in n]}


def run_cells(hw: Path, out: Path, new_tokens: int, forced_share: float, deadline_s: float) -> list[dict]:
    """The cells in order; a cell is skipped (and said so) once ``deadline_s`` (perf_counter) is passed, so the
    whole command stays under the device's per-call limit."""
    from validate import run_cell

    rows = []
    cells = []
    for context in CONTEXTS:
        cells += [f"llama-3-8b:{context}:24GB:tail=1", f"llama-3-8b:{context}:24GB:tail=1:F=0"]
    if plan_for(str(hw), "512K", "24GB")["cpu_share"] == 0:
        cells.append(f"llama-3-8b:512K:24GB:tail=1:F={forced_share:g}")
    for cell in cells:
        left_s = deadline_s - time.perf_counter()
        if left_s < 60:
            print(f"cell {cell}: skipped, {left_s:.0f} s left of the budget", flush=True)
            continue
        print(f"cell {cell}: running", flush=True)
        row = run_cell(cell, str(hw), new_tokens, min(300, left_s), [])
        rows.append(row)
        with (out / "cells.jsonl").open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        report = row.get("report") or {}
        measured, predicted = (report.get("measured", {}).get("decode_s_per_token"),
                               report.get("predicted", {}).get("decode_s_per_token"))
        error = f"{measured / predicted - 1:+.1%}" if measured and predicted else "-"
        share = report.get("host_share") or {}
        kernel = (f"; CPU kernel {share['measured_cpu_kernel_s_per_token'] * 1e3:.0f} ms/token measured vs "
                  f"{share['predicted_cpu_s_per_token'] * 1e3:.0f} predicted (with call cost and hand-off), "
                  f"{share['measured_cpu_bytes_per_s'] / 1e9:.1f} GB/s; {_timeline(share)}"
                  if share.get("measured_cpu_kernel_s_per_token") else "")
        print(f"    exit {row['exit_code']} in {row['wall_s']} s: F {report.get('settings', {}).get('cpu_share')}, "
              f"decode {measured} s/token, predicted {predicted}, measured/predicted - 1 = {error}{kernel}" +
              (f"\n    {row['error_text'][-600:]}" if "error_text" in row else ""), flush=True)
    return rows


def _timeline(share: dict) -> str:
    """The host share's per-token timeline sums (report.json host_share) and their means per layer."""
    calls = share.get("measured_cpu_calls_per_token")
    delay, join = share.get("measured_cpu_start_delay_s_per_token"), share.get("measured_join_wait_s_per_token")
    if not calls or delay is None or join is None:
        return "no timeline in the report"
    kernel = share["measured_cpu_kernel_s_per_token"]
    return (f"per token submit->start {delay * 1e3:.1f} ms, job {kernel * 1e3:.1f} ms, join wait {join * 1e3:.1f} ms "
            f"over {calls:g} layers (per layer {delay / calls * 1e3:.2f} / {kernel / calls * 1e3:.2f} / "
            f"{join / calls * 1e3:.2f} ms)")


def _cell_row(row: dict) -> dict:
    report = row.get("report") or {}
    share = report.get("host_share") or {}
    return {"cell": row["cell"], "exit_code": row["exit_code"], "cpu_share": report.get("settings", {}).get("cpu_share"),
            "measured_decode_s": report.get("measured", {}).get("decode_s_per_token"),
            "predicted_decode_s": report.get("predicted", {}).get("decode_s_per_token"),
            "decode_error": report.get("error", {}).get("decode_s_per_token"),
            "cpu_bytes_per_token": share.get("measured_cpu_bytes_per_token"),
            "cpu_kernel_bytes_per_s": share.get("measured_cpu_bytes_per_s"),
            "pcie_bytes_per_token": share.get("measured_pcie_bytes_per_token"),
            "pcie_bytes_per_s": share.get("measured_pcie_bytes_per_s"),
            "cpu_kernel_s_per_token": share.get("measured_cpu_kernel_s_per_token"),
            "cpu_calls_per_token": share.get("measured_cpu_calls_per_token"),
            "cpu_start_delay_s_per_token": share.get("measured_cpu_start_delay_s_per_token"),
            "join_wait_s_per_token": share.get("measured_join_wait_s_per_token"),
            "predicted_cpu_s_per_token": share.get("predicted_cpu_s_per_token"),
            "threads": report.get("settings", {}).get("host_attention_threads")}


def _host_figures(hw: Path) -> dict:
    from hwprofiles.catalog import load_profile

    profile = load_profile(str(hw))
    best = max(profile.cpu_attention_table, key=lambda p: p.bytes_per_s, default=None)
    return {"host_read_bytes_per_s": profile.host_read_bytes_per_s, "host_share_handoff_s": profile.host_share_handoff_s,
            "host_attention_call_s": profile.host_attention_call_s,
            "best_kernel_bytes_per_s": best.bytes_per_s if best else None,
            "kernel_share_of_read": (best.bytes_per_s / profile.host_read_bytes_per_s
                                     if best and profile.host_read_bytes_per_s else None),
            "kernel_table": [p.model_dump() for p in profile.cpu_attention_table],
            "concurrency": [p.model_dump() for p in profile.host_concurrency_table]}


def _markdown(summary: dict) -> str:
    lines = [f"# Decode with a CPU share, {summary['date']} ({summary['machine']})", "",
             "| cell | F | decode measured | predicted | error | CPU GB/token | CPU kernel GB/s | CPU kernel ms "
             "measured / predicted | submit->start / join wait ms per token | PCIe GB/token | PCIe GB/s (of the wall) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, scale=1.0, digits=3):
        return "-" if value is None else f"{value / scale:.{digits}f}"
    for row in summary["cells"]:
        lines.append(f"| {row['cell']} | {row['cpu_share']} | {fmt(row['measured_decode_s'])} s | "
                     f"{fmt(row['predicted_decode_s'])} s | {fmt(row['decode_error'], 0.01, 1)}% | "
                     f"{fmt(row['cpu_bytes_per_token'], 1e9, 2)} | {fmt(row['cpu_kernel_bytes_per_s'], 1e9, 1)} | "
                     f"{fmt(row.get('cpu_kernel_s_per_token'), 1e-3, 0)} / {fmt(row.get('predicted_cpu_s_per_token'), 1e-3, 0)} | "
                     f"{fmt(row.get('cpu_start_delay_s_per_token'), 1e-3, 1)} / {fmt(row.get('join_wait_s_per_token'), 1e-3, 1)} | "
                     f"{fmt(row['pcie_bytes_per_token'], 1e9, 2)} | {fmt(row['pcie_bytes_per_s'], 1e9, 1)} |")
    for context, ratio in summary.get("speedup", {}).items():
        lines.append(f"\n{context}: the planner's F decodes {ratio:.2f}x faster than F = 0 (measured)")
    host = summary["host"]
    lines += ["", f"Host: read {fmt(host['host_read_bytes_per_s'], 1e9, 1)} GB/s, best kernel "
              f"{fmt(host['best_kernel_bytes_per_s'], 1e9, 1)} GB/s ({fmt(host['kernel_share_of_read'], 0.01, 0)}% of "
              f"the read; target 60%), hand-off {fmt(host['host_share_handoff_s'], 1e-6, 0)} us per layer, fixed cost "
              f"per CPU call as decode calls it (the intercept over the table) "
              f"{fmt(host.get('host_attention_call_s'), 1e-3, 2)} ms.", ""]
    for name, rows in summary["plans"].items():
        for label, row in rows.items():
            lines.append(f"- plan {name} {label}: F {row['cpu_share']}, decode {row['decode_s_per_token']:.3f} s per "
                         f"token, bound by {row['decode_bound']}; {' '.join(row['notes'])}")
    lines += ["", f"The HeadInfer paper's RTX 4090 at 1M: {PAPER_4090_1M_S_PER_TOKEN} s per token."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", default="hwprofiles/catalog/h200-sxm-quick.json")
    parser.add_argument("--new-tokens", type=int, default=16, help="decode tokens per cell (16: the per-token figure "
                        "is stable to ~2%%)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="no cell starts after this many seconds of "
                        "the command (the device's per-call limit is 600 s)")
    parser.add_argument("--forced-share", type=float, default=0.3)
    parser.add_argument("--plan-only", action="store_true")
    parser.add_argument("--skip-profile", action="store_true", help="plan from --profile as it is (it already holds "
                        "this machine's host-attention figures) instead of step 1")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hw = Path(args.profile) if args.plan_only or args.skip_profile else profile_step(args.profile, args.out)
    cells = [] if args.plan_only else run_cells(hw, args.out, args.new_tokens, args.forced_share,
                                                  started + args.budget_s)
    rows = [_cell_row(row) for row in cells]
    speedup = {}
    for context in CONTEXTS:
        auto = next((r for r in rows if r["cell"] == f"llama-3-8b:{context}:24GB:tail=1"), None)
        zero = next((r for r in rows if r["cell"] == f"llama-3-8b:{context}:24GB:tail=1:F=0"), None)
        if auto and zero and auto["measured_decode_s"] and zero["measured_decode_s"]:
            speedup[context] = zero["measured_decode_s"] / auto["measured_decode_s"]
    plans = {f"{hw.stem} {context} 24GB": {"auto": _plan_row(plan_for(str(hw), context, "24GB")),
                                         "F=0": _plan_row(plan_for(str(hw), context, "24GB", 0.0))}
             for context in CONTEXTS}
    plans["rtx-4090-ddr5-desktop 1M 24GB"] = {
        "auto": _plan_row(plan_for("rtx-4090-ddr5-desktop", "1M", "24GB")),
        "F=0": _plan_row(plan_for("rtx-4090-ddr5-desktop", "1M", "24GB", 0.0))}
    import platform
    summary = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cells": rows, "speedup": speedup,
               "host": _host_figures(hw), "plans": plans, "paper_4090_1m_s_per_token": PAPER_4090_1M_S_PER_TOKEN,
               "wall_s": round(time.perf_counter() - started, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = _markdown(summary)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
