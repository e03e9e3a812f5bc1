"""Where a run's GPU memory peak comes from: one ``headplan run`` in this process under PyTorch's allocator history,
then the live blocks at the moment of peak allocation, grouped by the innermost frame of headplan or transformers
code that allocated them.

    # on the GPU machine; the run's own arguments follow --
    PYTHONPATH=. python benchmarks/memory_trace.py --out $OUT/trace.json -- run --device cuda --model gemma-2-9b \
        --context 128K --chunk-size 1K --heads-per-group 1 --resident-heads 2 --gpu-mem 40GB --tail-chunks 1 \
        --new-tokens 2 --no-progress --out /tmp/run

Writes OUT (JSON: the report's predicted and measured memory, the peak allocated bytes of the replayed history and
the 25 largest groups of live blocks at the peak, each with its bytes, block count and sizes) and prints the table.
The history records every allocation (``torch.cuda.memory._record_memory_history``), so the run is slower than
without; its memory, not its time, is what this measures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OWN_CODE = ("headplan", "executor", "planner", "transformers")


def _site(frames: list[dict]) -> str:
    """The innermost frame in our or transformers' code, with the next two outer ones of ours for context."""
    ours = [f for f in frames if any(f"/{name}/" in f.get("filename", "") for name in OWN_CODE)]
    if not ours:
        head = frames[0] if frames else {"filename": "?", "line": 0, "name": "?"}
        return f"{Path(head['filename']).name}:{head['line']} {head['name']}"
    return " < ".join(f"{Path(f['filename']).parent.name}/{Path(f['filename']).name}:{f['line']} {f['name']}"
                      for f in ours[:3])


def peak_live_set(trace: list[dict]) -> tuple[int, dict[int, tuple[int, str]]]:
    """Replay alloc / free events: (peak allocated bytes, {address: (bytes, site)} live at that peak)."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for event in trace:
        action = event.get("action")
        if action == "alloc":
            live[event["addr"]] = (event["size"], _site(event.get("frames", [])))
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action in ("free_requested", "free_completed") and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    return peak, at_peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-entries", type=int, default=2_000_000)
    parser.add_argument("run_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    import torch

    from headplan.cli import main as headplan_main

    torch.cuda.memory._record_memory_history(max_entries=args.max_entries)
    code = headplan_main(run_args)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, at_peak = peak_live_set(snapshot["device_traces"][0])
    groups: dict[str, list[int]] = defaultdict(list)
    for size, site in at_peak.values():
        groups[site].append(size)
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:25]
    report_path = Path(run_args[run_args.index("--out") + 1]) / "report.json" if "--out" in run_args else None
    report = json.loads(report_path.read_text()) if report_path and report_path.exists() else {}
    result = {"exit_code": code, "run_args": run_args, "peak_allocated_bytes": peak,
              "max_memory_allocated": torch.cuda.max_memory_allocated(),
              "predicted": report.get("predicted"), "measured": report.get("measured"), "memory": report.get("memory"),
              "settings": report.get("settings"), "fault": report.get("fault"),
              "groups": [{"site": site, "bytes": sum(sizes), "blocks": len(sizes),
                          "sizes_mib": sorted({round(s / 2**20, 1) for s in sizes}, reverse=True)[:6]}
                         for site, sizes in ranked]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"exit {code}; peak allocated {peak / 2**30:.2f} GiB (max_memory_allocated "
          f"{result['max_memory_allocated'] / 2**30:.2f} GiB)")
    for g in result["groups"]:
        print(f"{g['bytes'] / 2**20:10.1f} MiB {g['blocks']:5d} blocks {g['sizes_mib']}  {g['site']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
