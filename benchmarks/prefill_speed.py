"""Prefill speed knobs on one GPU: the cudnn-split past cut ("binary" / "whole") and --compile-layers, measured
against the planner's prediction, with the kernel breakdown before and after and a 512K tail probe.

    python benchmarks/prefill_speed.py --out benchmarks/results/DATE-h200 \
        --hw hwprofiles/catalog/h200-sxm-measured.json

Runs, each its own subprocess of ``headplan run`` (random Llama-3-8B-shaped weights, --new-tokens 1), planned
from ``--hw`` at the knobs of the measured plan (128K, 24 GB, c 8K, G 2, R 64, cudnn-split) so that only the
knob under test changes:

    a  today's path        --past-cut binary --no-compile-layers   (under benchmarks/kernel_profile.py)
    b  compiled layers     --past-cut binary --compile-layers
    c  whole past cut      --past-cut whole  --no-compile-layers
    d  both                --past-cut whole  --compile-layers      (under benchmarks/kernel_profile.py)
    p  the planner's own choice at 128K / 24 GB (--past-cut auto, --compile-layers as the profile says)
    512K / 24 GB --tail-chunks 2 with the planner's knobs: today's path and the best of b, c, d

a and d run under the torch profiler (its kernel sums are the breakdown; profiling adds ~1.5% to their wall
time: 11.51 against 11.33 s on the H200, 2026-12-01). Writes <out>/prefill-speed.json (every row: variant, flags,
measured and predicted prefill, warm-up, exit code) and <out>/prefill-speed.md, and prints a short table.
--skip-512k leaves the tail probes out. Expected on the H200: ~4-5 minutes (the first compile ~30-60 s of the
warm-up of b; later processes reuse inductor's on-disk cache); ~3 minutes with --skip-512k.
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

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--model", "llama-3-8b", "--gpu-mem", "24GB", "--new-tokens", "1", "--decode-tokens", "1"]
FIXED = ["--chunk-size", "8K", "--heads-per-group", "2", "--resident-heads", "64", "--attention-backend",
         "cudnn-split"]
VARIANTS = {  # name: (what, flags, kernel-profiled)
    "a": ("today's path", ["--past-cut", "binary", "--no-compile-layers"], True),
    "b": ("compiled layers", ["--past-cut", "binary", "--compile-layers"], False),
    "c": ("whole past cut", ["--past-cut", "whole", "--no-compile-layers"], False),
    "d": ("both", ["--past-cut", "whole", "--compile-layers"], True),
}


def _row(name: str, what: str, flags: list[str], code, wall_s: float, report: dict | None, tail: str,
         kernels: dict | None = None) -> dict:
    measured = (report or {}).get("measured") or {}
    predicted = (report or {}).get("predicted") or {}
    row = {"variant": name, "what": what, "flags": flags, "exit_code": code, "wall_s": round(wall_s, 1),
           "prefill_s": measured.get("prefill_s"), "predicted_prefill_s": predicted.get("prefill_s"),
           "warmup_s": measured.get("warmup_s"), "plan": (report or {}).get("plan", {}).get("knobs")
           or {k: (report or {}).get("plan", {}).get(k) for k in ("chunk_size", "heads_per_group",
                                                                  "resident_kv_heads", "past_cut", "compile_layers")},
           "report": report}
    if kernels is not None:
        row["kernels"] = {"kinds": kernels.get("kinds"), "streams": kernels.get("streams"),
                          "top": (kernels.get("top") or [])[:20]}
    if code != 0:
        row["error_text"] = tail[-2000:]
    return row


def run_variant(name: str, what: str, flags: list[str], hw: str, profiled: bool, out: Path, timeout_s: float,
                env: dict) -> dict:
    """One ``headplan run`` in a subprocess (under kernel_profile.py when ``profiled``); its row."""
    with tempfile.TemporaryDirectory() as folder:
        if profiled:
            command = [sys.executable, str(ROOT / "benchmarks" / "kernel_profile.py"), "--name", f"kernels-{name}",
                       "--", "--hw", hw, *flags]
            run_env = dict(env, OUT=str(out))
        else:
            command = [sys.executable, "-m", "headplan.cli", "run", "--hw", hw, "--device", "cuda", "--no-progress",
                       "--out", folder, *flags]
            run_env = env
        start_s = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=run_env,
                                  cwd=ROOT)
            code, tail = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, tail = "timeout", f"ran past {timeout_s:.0f} s; {str(exc.stderr or '')[-1500:]}"
        wall_s = time.perf_counter() - start_s
        kernels, report = None, None
        if profiled:
            path = out / f"kernels-{name}.json"
            if path.exists():
                kernels = json.loads(path.read_text())
                report = kernels.get("report")
        elif (Path(folder) / "report.json").exists():
            report = json.loads((Path(folder) / "report.json").read_text())
    row = _row(name, what, flags, code, wall_s, report, tail, kernels)
    print(f"  {name:>8} {what:<22} exit {code}  prefill {_s(row['prefill_s'])} (pred "
          f"{_s(row['predicted_prefill_s'])}) warm-up {_s(row['warmup_s'])}  [{row['wall_s']} s]", flush=True)
    return row


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Prefill speed knobs ({meta['date']}, {meta['device']})", "",
             f"Profile: `{meta['hw']}`. Llama-3-8B shape, random weights, 24 GB. Command: `{meta['command']}`.", "",
             "| variant | what | prefill | predicted | error | warm-up | flags |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        measured, predicted = row["prefill_s"], row["predicted_prefill_s"]
        error = f"{(measured / predicted - 1) * 100:+.1f}%" if measured and predicted else "-"  # measured / predicted - 1
        lines.append(f"| {row['variant']} | {row['what']} | {_s(measured)} | {_s(predicted)} | {error} | "
                     f"{_s(row['warmup_s'])} | `{' '.join(row['flags'])}` |")
    for row in rows:
        kinds = (row.get("kernels") or {}).get("kinds")
        if kinds:
            lines += ["", f"## Kernels of {row['variant']} ({row['what']})", "", "| kind | ms | count |",
                      "|---|---|---|"]
            lines += [f"| {kind} | {v['ms']:.0f} | {v['count']} |" for kind, v in
                      sorted(kinds.items(), key=lambda item: -item[1]["ms"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results/prefill-speed")))
    parser.add_argument("--hw", default="hwprofiles/catalog/h200-sxm-measured.json")
    parser.add_argument("--skip-512k", action="store_true", help="leave out the 512K tail probes")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="per run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    rows = []
    print("128K / 24 GB, c 8K G 2 R 64 cudnn-split:", flush=True)
    for name, (what, flags, profiled) in VARIANTS.items():
        rows.append(run_variant(name, what, [*BASE, "--context", "128K", *FIXED, *flags], args.hw, profiled,
                                args.out, args.timeout_s, env))
    rows.append(run_variant("p", "planner's choice", [*BASE, "--context", "128K"], args.hw, False, args.out,
                            args.timeout_s, env))
    timed = [r for r in rows if r["variant"] in VARIANTS and r["prefill_s"] and r["exit_code"] == 0]
    best = min((r for r in timed if r["variant"] != "a"), key=lambda r: r["prefill_s"], default=None)
    if not args.skip_512k:
        print("512K / 24 GB, --tail-chunks 2, the planner's knobs:", flush=True)
        tail = ["--context", "512K", "--tail-chunks", "2"]
        rows.append(run_variant("512k-a", "today's path", [*BASE, *tail, *VARIANTS["a"][1]], args.hw, False,
                                args.out, args.timeout_s, env))
        if best is not None:
            knob = best["variant"]
            rows.append(run_variant(f"512k-{knob}", VARIANTS[knob][0], [*BASE, *tail, *VARIANTS[knob][1]],
                                    args.hw, False, args.out, args.timeout_s, env))
    import torch

    meta = {"date": time.strftime("%Y-%m-%d"), "hw": args.hw, "command": " ".join(sys.argv),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "best_128k": best["variant"] if best else None}
    (args.out / "prefill-speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "prefill-speed.md").write_text(_markdown(rows, meta))
    print(_markdown([dict(r, kernels=None) for r in rows], meta))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
