"""Re-predict validation cells with the current cost model: the same profile and the same knobs the cell ran with
(chunk, group, resident heads, backend, CPU share and its hand-off, past cut, compiled layers, the chunk part's
kernel).

A cell's measurement does not depend on the planner once its knobs are fixed, so after a fix to the cost model the
cells can be predicted again without running them. This writes the JSON lines again with ``report.predicted``
and ``report.error`` recomputed (the as-run prediction kept under ``report.predicted_as_run``), and says for each
cell that let the planner choose whether the fixed model still chooses the same knobs (if not, the cell measures
a plan the model would no longer make: it is marked ``"choice_changed": true``).

``--at-run-cpu-rate`` prices each cell with a CPU share on the profile with its CPU-attention rates scaled to the
kernel rate the run measured (report ``host_share.measured_cpu_bytes_per_s``, the jobs' rate, less each job's fixed
cost, over the rate the knobs are priced at: planner/share_rebalance.py): what the cost model says given the process's own kernel, as the re-balancing assumes.

    python benchmarks/repredict.py RESULTS.jsonl --hw PROFILE --out RESULTS-repredicted.jsonl [--at-run-cpu-rate]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwprofiles import load_profile  # noqa: E402
from planner.model_spec import load_model_spec  # noqa: E402
from planner.pipeline import make_pipeline_plan  # noqa: E402
from planner.host_share import scaled_cpu_rates  # noqa: E402
from planner.share_rebalance import priced_job  # noqa: E402
from planner.solver import evaluate  # noqa: E402
from planner.units import parse_bytes, parse_tokens  # noqa: E402


def hand_off_of(report: dict) -> str:
    """The CPU share's hand-off the run used: its report says so since the stream wait came; earlier runs joined."""
    return (report.get("host_share") or {}).get("hand_off") or "join"


def at_run_cpu_rate(hardware, spec, report: dict, context_tokens: int):
    """(the profile with its CPU rates scaled to the run's kernel rate, the factor): the run's jobs' rate less each
    job's fixed cost, over the rate the knobs are priced at (planner/share_rebalance.py PricedJob); the profile and
    None for a run without a CPU share or without the figures."""
    settings, share = report["settings"], report.get("host_share") or {}
    measured = share.get("measured_cpu_bytes_per_s")
    job = priced_job(spec, hardware, dtype=report["dtype"], context_tokens=context_tokens,
                     decode_tokens=report["new_tokens"], cpu_share=settings.get("cpu_share") or 0.0,
                     resident_kv_heads=settings["resident_kv_heads"])
    if not measured or job is None:
        return hardware, None
    factor = job.kernel_rate_of(measured) / job.kernel_bytes_per_s
    return scaled_cpu_rates(hardware, factor), factor


def repredict(row: dict, hardware, *, run_cpu_rate: bool = False) -> dict:
    report = row["report"]
    model_name, context, gpu_mem, *knobs = row["cell"].split(":")
    spec, settings = load_model_spec(model_name), report["settings"]
    decode_tokens = report["new_tokens"]
    common = dict(context_tokens=parse_tokens(context), decode_tokens=decode_tokens, gpu_mem_bytes=parse_bytes(gpu_mem),
                  host_mem_bytes=None, dtype=report["dtype"])
    factor = None
    if run_cpu_rate:
        hardware, factor = at_run_cpu_rate(hardware, spec, report, common["context_tokens"])
    _, memory, predicted, _ = evaluate(spec, hardware, chunk_size=settings["chunk_size"],
                                       heads_per_group=settings["heads_per_group"],
                                       resident_kv_heads=settings["resident_kv_heads"],
                                       attention_backend=settings["attention_backend"],
                                       cpu_share=settings.get("cpu_share") or 0.0,
                                       past_cut=settings.get("split", {}).get("past_cut", "binary"),
                                       compile_layers=bool(settings.get("compile_layers")),
                                       chunk_backend=settings.get("split", {}).get("chunk_backend"),
                                       share_hand_off=hand_off_of(report), **common)
    fixed = dict(knob.split("=", 1) for knob in knobs)
    chosen = make_pipeline_plan(spec, hardware, gpus=int(fixed.get("n", 1)), **common,
                                chunk_size=parse_tokens(fixed["c"]) if "c" in fixed else None,
                                heads_per_group=int(fixed["G"]) if "G" in fixed else None,
                                resident_kv_heads=int(fixed["R"]) if "R" in fixed else None,
                                attention_backend=fixed.get("b"))
    same = (chosen.chunk_size, chosen.heads_per_group, chosen.resident_kv_heads, chosen.attention_backend) == (
        settings["chunk_size"], settings["heads_per_group"], settings["resident_kv_heads"],
        settings["attention_backend"])
    new = json.loads(json.dumps(row))
    rep = new["report"]
    rep["predicted_as_run"] = report["predicted"]
    chunk_s, prefill_s = list(predicted.chunk_s), predicted.prefill_s
    tail = report.get("tail")
    if tail:  # a timing probe measured its last chunks only: compare with those (executor/report/assemble.py)
        chunk_s = chunk_s[-tail["chunks"]:] if len(chunk_s) == tail["total_chunks"] else []
        prefill_s = sum(chunk_s) if chunk_s else None
        rep["tail"] = dict(tail, predicted_full_prefill_s=predicted.prefill_s)  # the whole prefill, re-predicted
    rep["predicted"] = dict(report["predicted"], prefill_s=prefill_s,
                            decode_s_per_token=predicted.decode_s_per_token, gpu_peak_bytes=memory.gpu_peak_bytes,
                            chunk_s=chunk_s)
    measured = rep["measured"]
    rep["error"] = {key: (measured[key] / rep["predicted"][key] - 1.0
                          if measured.get(key) is not None and rep["predicted"].get(key) else None)
                    for key in ("prefill_s", "decode_s_per_token", "gpu_peak_bytes")}
    rep["error"]["chunk_s"] = [m / p - 1.0 if p else None for m, p in zip(measured["chunk_s"],
                                                                            rep["predicted"]["chunk_s"])]
    new["choice_changed"] = not same and "R" not in fixed
    new["choice_now"] = f"c={chosen.chunk_size} G={chosen.heads_per_group} R={chosen.resident_kv_heads}"
    if factor is not None:
        new["cpu_rate_factor"] = factor
    return new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--hw", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--at-run-cpu-rate", action="store_true",
                        help="price the CPU share at the kernel rate each run measured (module docstring)")
    args = parser.parse_args()
    hardware = load_profile(args.hw)
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    with args.out.open("w") as sink:
        for row in rows:
            if "report" not in row or "error_text" in row:
                continue
            new = repredict(row, hardware, run_cpu_rate=args.at_run_cpu_rate)
            sink.write(json.dumps(new) + "\n")
            old, now = row["report"]["predicted"], new["report"]["predicted"]
            print(f"{row['cell']:38s} prefill {old['prefill_s']:.3g} -> {now['prefill_s']:.3g}, decode "
                  f"{old['decode_s_per_token'] * 1e3:.1f} -> {now['decode_s_per_token'] * 1e3:.1f} ms"
                  + (f"  (CPU rates x{new['cpu_rate_factor']:.2f})" if "cpu_rate_factor" in new else "")
                  + (f"  (planner now chooses {new['choice_now']})" if new["choice_changed"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
