"""Prediction against measurement on a GPU: plan, run and compare, cell by cell.

A cell is ``MODEL:CONTEXT:GPU_MEM[:c=CHUNK][:G=HEADS][:R=RESIDENT][:b=BACKEND][:n=GPUS][:p=PARALLEL][:tail=K][:F=SHARE]``
(``p=layers|heads|auto``: how several GPUs split the model), e.g.
``llama-3-8b:128K:24GB`` (the planner chooses the knobs), ``llama-3-8b:128K:24GB:c=8K:G=2:R=64`` (knobs fixed: one
point of a grid), ``llama-3-8b:256K:24GB:n=2`` (the layers split over 2 GPUs, GPU_MEM each) or
``llama-3.2-1b:2M:80GB:tail=6`` (a timing probe, ``headplan run --tail-chunks 6``: only the last 6 prefill chunks
run, over a zero-filled KV past, for contexts whose whole prefill would not fit the cell's time limit). Each
cell runs ``headplan run`` in its own process (a fresh CUDA context, so the memory cap and the peaks are the
cell's own) with a per-cell time limit, and its report.json is appended as one JSON line to ``--out``. A cell
already in ``--out`` or in a ``--resume`` file is skipped, so the matrix can be run in parts.

    # on the GPU machine (one command; resumes from what the results file already holds):
    python benchmarks/validate.py run --hw hwprofiles/catalog/h100-sxm-measured.json \
        --cells preset:matrix-8b --out $OUT/validation.jsonl \
        --resume benchmarks/results/2026-11-22-h100/validation.jsonl
    # anywhere, from the JSON lines: table (.md), summary (.json) and the predicted-vs-measured PNG
    python benchmarks/validate.py summarize $OUT/validation.jsonl --name validation --dir $OUT
    # the same cells predicted from a quick profile of the same machine (no GPU needed once it is taken)
    python benchmarks/repredict.py $OUT/validation.jsonl --hw $OUT/profile-quick.json --out $OUT/validation-quick.jsonl
    python benchmarks/validate.py summarize $OUT/validation-quick.jsonl --name validation-quick --quick-profile --dir $OUT

The campaign drivers in benchmarks/campaigns/ (validation.sh, grids.sh, multi_gpu.sh) call this in parts.

Leaves out: the transformers baselines (benchmarks/transformers_baseline.py) and the profiling itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repo root: planner, hwprofiles
from validation_summary import summarize  # noqa: E402

PRESETS = {
    # Llama-3-8B under 24 GB from 32K to 512K
    "sweep-8b-24gb": "llama-3-8b:32K:24GB,llama-3-8b:128K:24GB,llama-3-8b:256K:24GB,llama-3-8b:512K:24GB",
    # the validation matrix: each model at each context under 24 GB and on the whole 80 GB card
    "matrix-8b": ",".join(f"llama-3-8b:{ctx}:{mem}" for mem in ("24GB", "80GB")
                          for ctx in ("8K", "32K", "128K", "256K", "512K")),
    "matrix-1b": ",".join(f"llama-3.2-1b:{ctx}:{mem}" for mem in ("24GB", "80GB")
                          for ctx in ("32K", "128K", "512K", "1M")),      # 2M: tail-1b-2m (timing probes)
    # 128K / 24 GB with the knobs fixed: chunk x heads per group x resident heads
    "grid-128k": ",".join(f"llama-3-8b:128K:24GB:c={c}:G={g}:R={r}" for c in ("4K", "8K", "16K")
                          for g in (1, 2, 8) for r in (0, 64)),
    # several GPUs (2 H200, --extra "--host-mem 240GiB"): the same 8B work on one GPU and split over two
    "multi-gpu-8b": "llama-3-8b:256K:24GB,llama-3-8b:256K:24GB:n=2",
    # 1B at 2M: the whole prefill (~11 min) is over the cell limit, so its last 6 chunks are timed
    "tail-1b-2m": "llama-3.2-1b:2M:80GB:tail=6,llama-3.2-1b:2M:24GB:tail=6",
}
KNOB_FLAGS = {"c": "--chunk-size", "G": "--heads-per-group", "R": "--resident-heads", "b": "--attention-backend",
              "n": "--gpus", "tail": "--tail-chunks", "F": "--cpu-share", "p": "--parallel"}


def expand_cells(text: str) -> list[str]:
    """Comma-separated cells; ``preset:NAME`` expands to a preset's cells."""
    cells: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item.startswith("preset:"):
            cells.extend(PRESETS[item.removeprefix("preset:")].split(","))
        elif item:
            cells.append(item)
    return cells


def cell_flags(cell: str) -> list[str]:
    """``MODEL:CONTEXT:GPU_MEM[:k=v...]`` -> headplan run flags."""
    model, context, gpu_mem, *knobs = cell.split(":")
    flags = ["--model", model, "--context", context, "--gpu-mem", gpu_mem]
    for knob in knobs:
        key, value = knob.split("=", 1)
        flags += [KNOB_FLAGS[key], value]
    return flags


def done_cells(paths: list[Path]) -> set[str]:
    seen = set()
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if "error_text" not in row:
                        seen.add(row["cell"])
    return seen


def run_cell(cell: str, hw: str, new_tokens: int, timeout_s: float, extra: list[str]) -> dict:
    """Run one cell in a subprocess; returns {cell, wall_s, report (report.json) or error_text}."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "headplan.cli", "run", "--hw", hw, "--new-tokens", str(new_tokens),
                   "--decode-tokens", str(new_tokens), "--device", "cuda", "--out", folder, "--no-progress",
                   *cell_flags(cell), *extra]
        start_s = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
            code, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired as exc:
            code, tail = "timeout", f"cell ran past {timeout_s:.0f} s; {str(exc.stderr or '')[-1000:]}"
        row: dict = {"cell": cell, "wall_s": round(time.perf_counter() - start_s, 1),
                     "date": time.strftime("%Y-%m-%d"), "exit_code": code}
        report_path = Path(folder) / "report.json"
        if report_path.exists():
            row["report"] = json.loads(report_path.read_text())
        if code != 0:
            row["error_text"] = tail
        return row


def command_run(args) -> int:
    cells = expand_cells(args.cells)
    skip = done_cells([args.out, *args.resume])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index, cell in enumerate(cells, 1):
        if cell in skip:
            print(f"[{index}/{len(cells)}] {cell}: already measured, skipped", flush=True)
            continue
        print(f"[{index}/{len(cells)}] {cell}: running", flush=True)
        row = run_cell(cell, args.hw, args.new_tokens, args.timeout_s, args.extra.split() if args.extra else [])
        with args.out.open("a") as sink:
            sink.write(json.dumps(row) + "\n")
        measured = (row.get("report") or {}).get("measured") or {}
        predicted = (row.get("report") or {}).get("predicted") or {}
        print(f"    exit {row['exit_code']} in {row['wall_s']} s; prefill {measured.get('prefill_s')} s "
              f"(pred {predicted.get('prefill_s')}), decode {measured.get('decode_s_per_token')} s/token "
              f"(pred {predicted.get('decode_s_per_token')})" + (f"\n    {row['error_text'][-600:]}"
                                                              if "error_text" in row else ""), flush=True)
    return 0


def command_pick_context(args) -> int:
    """Print the cell of the longest context (of --contexts) whose plan fits and is predicted to finish (pinning
    + prefill + decode) within --budget-s: the longest context that fits host RAM and runs in one 10-minute command."""
    from hwprofiles import load_profile
    from planner.errors import PlanError
    from planner.model_spec import load_model_spec
    from planner.pipeline import make_pipeline_plan
    from planner.units import parse_bytes, parse_tokens

    model, hardware = load_model_spec(args.model), load_profile(args.hw)
    best = None
    for text in args.contexts.split(","):
        try:
            plan = make_pipeline_plan(model, hardware, gpus=args.gpus, context_tokens=parse_tokens(text),
                                      decode_tokens=args.new_tokens, gpu_mem_bytes=parse_bytes(args.gpu_mem),
                                      host_mem_bytes=parse_bytes(args.host_mem))
        except PlanError as exc:
            print(f"{text}: no plan ({exc})", file=sys.stderr)
            continue
        total_s = plan.predicted.total_s
        print(f"{text}: predicted {total_s:.0f} s, host {plan.memory.host_kv_bytes / 2**30:.0f} GiB", file=sys.stderr)
        if total_s <= args.budget_s:
            best = text
    if best is None:
        print("no context fits the budget", file=sys.stderr)
        return 1
    print(f"{args.model}:{best}:{args.gpu_mem}" + (f":n={args.gpus}" if args.gpus > 1 else ""))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run cells on this GPU")
    run.add_argument("--hw", required=True, help="hardware profile (name or file) the plans are made with")
    run.add_argument("--cells", required=True, help="cells or preset:NAME (" + ", ".join(PRESETS) + ")")
    run.add_argument("--new-tokens", type=int, default=16)
    run.add_argument("--timeout-s", type=float, default=600.0, help="per cell")
    run.add_argument("--out", type=Path, required=True, help="JSON lines file appended to")
    run.add_argument("--resume", type=Path, nargs="*", default=[], help="earlier results: their cells are skipped")
    run.add_argument("--extra", default="", help="more flags for headplan run, e.g. '--trace'")
    pick = sub.add_parser("pick-context", help="print the cell of the longest context that fits a time budget")
    pick.add_argument("--model", required=True)
    pick.add_argument("--hw", required=True)
    pick.add_argument("--gpus", type=int, default=1)
    pick.add_argument("--gpu-mem", required=True)
    pick.add_argument("--host-mem", required=True)
    pick.add_argument("--new-tokens", type=int, default=8)
    pick.add_argument("--budget-s", type=float, required=True, help="predicted pin + prefill + decode, seconds")
    pick.add_argument("--contexts", default="64K,128K,192K,256K,320K,384K,448K,512K,640K,768K")
    summ = sub.add_parser("summarize", help="table, summary JSON and PNG from result files")
    summ.add_argument("results", type=Path, nargs="+")
    summ.add_argument("--name", required=True, help="base name, e.g. validation")
    summ.add_argument("--device-name", default=None, help="GPU name for the table (reports record only 'cuda')")
    summ.add_argument("--dir", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    summ.add_argument("--quick-profile", action="store_true",
                      help="the rows were re-predicted from a quick profile (benchmarks/repredict.py --hw QUICK): "
                           "the worst cell is judged against 15%% instead of 10%%")
    summ.add_argument("--whole-only", action="store_true",
                      help="leave out timing probes (cells run with --tail-chunks): whole prefills only")
    args = parser.parse_args()
    if args.command == "run":
        return command_run(args)
    if args.command == "pick-context":
        return command_pick_context(args)
    return summarize(args.results, args.name, args.dir, args.device_name, quick_profile=args.quick_profile,
                     whole_only=args.whole_only)


if __name__ == "__main__":
    sys.exit(main())
