"""Where the planner's choice lands among measured configurations of one workload (a grid of fixed knobs).

    python benchmarks/grid_summary.py RESULTS.jsonl [MORE.jsonl ...] --choice llama-3-8b:512K:24GB \
        --name grid-512k-24gb --dir benchmarks/results/2026-11-22-h100

Rows are the validate.py cells (JSON lines; the last row of a cell wins) of the files whose cell is ``--choice``
(the planner's own cell: no knobs fixed) or starts with it followed by fixed knobs (``--choice``:c=8K:G=2...). For each row, predicted (the plan
the cell ran) and measured:

    workload = prefill_s + new_tokens x decode_s_per_token        (the planner's objective, pinning left out)

A timing probe's row (a cell with ``tail=K``, headplan run --tail-chunks: the last chunks over a synthetic past)
stands for its configuration (the cell without ``tail=``) with its whole prefill estimated as

    prefill_s ~ predicted whole prefill x (measured / predicted of the timed chunks)

Writes NAME.md (the table, ranked by measured workload, with the choice marked and its distance from the best)
and NAME.json. Leaves out: running the cells (validate.py run) and re-predicting them (repredict.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from validation_summary import load_rows

TARGET = 0.03
"""the planner's choice within 3% of the best configuration measured"""


def base_cell(cell: str) -> str:
    """The cell without its timing-probe knob (``tail=K``): the configuration it measures."""
    return ":".join(part for part in cell.split(":") if not part.startswith("tail="))


def _row_figures(row: dict) -> dict | None:
    report = row.get("report") or {}
    predicted, measured, settings = report.get("predicted") or {}, report.get("measured") or {}, report.get(
        "settings") or {}
    if "error_text" in row or measured.get("prefill_s") is None or measured.get("decode_s_per_token") is None:
        return None
    tokens = report.get("new_tokens", 16)
    tail = report.get("tail")
    if tail:  # a timing probe: the whole prefill's prediction, scaled by its timed chunks' measured / predicted
        scale = measured["prefill_s"] / predicted["prefill_s"]
        predicted = dict(predicted, prefill_s=tail["predicted_full_prefill_s"])
        measured = dict(measured, prefill_s=tail["predicted_full_prefill_s"] * scale)

    def workload(block: dict) -> float:
        return block["prefill_s"] + tokens * block["decode_s_per_token"]

    return {"cell": base_cell(row["cell"]), "date": row.get("date"), "probe_chunks": tail["chunks"] if tail else None, "knobs": f"c={settings['chunk_size'] // 1024}K "
            f"G={settings['heads_per_group']} R={settings['resident_kv_heads']}",
            "new_tokens": tokens, "predicted_prefill_s": predicted["prefill_s"],
            "measured_prefill_s": measured["prefill_s"], "predicted_decode_s": predicted["decode_s_per_token"],
            "measured_decode_s": measured["decode_s_per_token"], "predicted_workload_s": workload(predicted),
            "measured_workload_s": workload(measured)}


def summarize_grid(paths: list[Path], choice: str, title: str) -> tuple[dict, str]:
    """(summary dict, markdown) of the rows in ``paths``; ``choice`` is the planner's own cell."""
    ours = [r for r in load_rows(paths) if base_cell(r["cell"]) == choice or base_cell(r["cell"]).startswith(choice + ":")]
    rows = [f for f in (_row_figures(r) for r in ours) if f is not None]
    rows.sort(key=lambda f: f["measured_workload_s"])
    chosen = next((f for f in rows if f["cell"] == choice), None)
    if chosen is None:
        raise SystemExit(f"the planner's cell {choice} is not among the measured rows")
    best = rows[0]
    gap = chosen["measured_workload_s"] / best["measured_workload_s"] - 1.0
    lines = [f"# {title}", "", "Workload = prefill + new tokens x decode per token (the planner's objective, "
             "pinning left out), predicted (the plan each cell ran) and measured, ranked by measured workload. "
             "A timing probe's row (est.) measured its last chunks only (headplan run --tail-chunks): its whole "
             "prefill is the plan's predicted one times those chunks' measured / predicted.", "",
             "| rank | knobs | chosen by | prefill pred → meas | decode pred → meas | workload pred → meas | cell date |",
             "|---|---|---|---|---|---|---|"]
    for rank, f in enumerate(rows, 1):
        lines.append(f"| {rank} | {f['knobs']} | {'planner' if f is chosen else 'fixed'} | "
                     f"{f['predicted_prefill_s']:.1f} → {f['measured_prefill_s']:.1f} s"
                     f"{' (est.)' if f['probe_chunks'] else ''} | "
                     f"{f['predicted_decode_s'] * 1e3:.0f} → {f['measured_decode_s'] * 1e3:.0f} ms | "
                     f"{f['predicted_workload_s']:.1f} → {f['measured_workload_s']:.1f} s | {f['date']} |")
    lines += ["", f"The planner's choice ({chosen['knobs']}) ranks {rows.index(chosen) + 1} of {len(rows)}: "
              f"{gap * 100:.1f}% over the best measured ({best['knobs']}); target ≤ {TARGET:.0%}: "
              f"{'met' if gap <= TARGET else 'missed'}."]
    summary = {"choice": choice, "rows": rows, "choice_rank": rows.index(chosen) + 1,
               "choice_over_best": gap, "target": TARGET, "met": gap <= TARGET}
    return summary, "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--choice", required=True, help="the planner's own cell, e.g. llama-3-8b:512K:24GB")
    parser.add_argument("--name", required=True)
    parser.add_argument("--title", default=None)
    parser.add_argument("--dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    summary, text = summarize_grid(args.results, args.choice, args.title or args.name)
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / f"{args.name}.md").write_text(text)
    (args.dir / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
