"""Where a run's GPU time goes: `headplan run` under torch.profiler, kernels summed by kind.

    python benchmarks/kernel_profile.py --name prefill-128k -- --model llama-3-8b --context 128K --gpu-mem 24GB \
        --new-tokens 1
    python benchmarks/kernel_profile.py --name decode-32k --from-chunk last -- --model llama-3-8b --context 32K \
        --gpu-mem 24GB --new-tokens 17

Runs ``headplan run`` in this process (arguments after ``--``, plus --device cuda --no-progress and an --out
under $OUT) with torch.profiler recording CUDA activity: from the start of the run, or (``--from-chunk last``)
from the moment the last prefill chunk was queued, which leaves the decode loop plus that chunk's tail. Writes
$OUT/<name>.json:

    kinds: {kind: {"ms": total kernel ms, "count": n}}   kinds by kernel name (cudnn_attention, flash_attention,
           gemm, triton, elementwise, copy_h2d, copy_d2h, copy_d2d, other)
    streams: {stream: {"busy_ms": union of its kernels' intervals, "span_ms": first start to last end}}
    top: the 40 kernel names of most total time
    report: the run's report.json (predicted and measured)

Profiling adds a little launch overhead: read the kernel sums, not the wall times, from a profiled run.
Leaves out: CPU op tracing (host time is the span minus the busy time of the compute stream).
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import os
import pstats
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KIND_PATTERNS = [  # first match wins; names of the H100 / torch 2.11 kernels
    ("cudnn_attention", re.compile(r"cudnn|sdpa|fmha_cudnn|fort_native", re.I)),
    ("flash_attention", re.compile(r"flash", re.I)),
    ("triton", re.compile(r"^triton", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|sm90_.*tn|splitk|Kernel2", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|reduce|softmax|cat|index|copy_kernel|fill|norm|unrolled",
                               re.I)),
]


def kernel_kind(event: dict) -> str:
    """Kind of one trace event: copies by direction, kernels by name (KIND_PATTERNS)."""
    name = event.get("name", "")
    if event.get("cat") == "gpu_memcpy" or name.startswith("Memcpy"):
        for direction, kind in (("HtoD", "copy_h2d"), ("DtoH", "copy_d2h"), ("DtoD", "copy_d2d")):
            if direction in name:
                return kind
        return "copy_other"
    if event.get("cat") == "gpu_memset":
        return "memset"
    for kind, pattern in KIND_PATTERNS:
        if pattern.search(name):
            return kind
    return "other"


def union_ms(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals given in microseconds, in milliseconds."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total / 1000.0


def summarize_trace(trace: dict) -> dict:
    """Kernel and copy time by kind, per-stream busy and span, and the top kernel names of a Chrome trace."""
    kinds: dict = defaultdict(lambda: {"ms": 0.0, "count": 0})
    names: dict = defaultdict(lambda: {"ms": 0.0, "count": 0})
    by_stream: dict = defaultdict(list)
    for event in trace.get("traceEvents", []):
        if event.get("ph") != "X" or event.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        start, duration = float(event["ts"]), float(event.get("dur", 0.0))
        kind = kernel_kind(event)
        kinds[kind]["ms"] += duration / 1000.0
        kinds[kind]["count"] += 1
        names[event["name"][:160]]["ms"] += duration / 1000.0
        names[event["name"][:160]]["count"] += 1
        by_stream[str((event.get("args") or {}).get("stream", "?"))].append((start, start + duration))
    streams = {stream: {"busy_ms": round(union_ms(spans), 3),
                        "span_ms": round((max(e for _, e in spans) - min(s for s, _ in spans)) / 1000.0, 3),
                        "events": len(spans)}
               for stream, spans in by_stream.items()}
    top = sorted(names.items(), key=lambda item: -item[1]["ms"])[:40]
    return {"kinds": {k: {"ms": round(v["ms"], 3), "count": v["count"]} for k, v in sorted(kinds.items())},
            "streams": streams,
            "top": [{"name": name, "ms": round(v["ms"], 3), "count": v["count"]} for name, v in top]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="base name of the result file under $OUT")
    parser.add_argument("--from-chunk", choices=("start", "last"), default="start",
                        help="start recording at the run's start or once the last prefill chunk is queued")
    parser.add_argument("--keep-trace", action="store_true", help="also write the gzipped Chrome trace")
    parser.add_argument("--cprofile", action="store_true",
                        help="also run Python's cProfile over the same window; top functions to <name>.cprofile.txt")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then headplan run's arguments")
    args = parser.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    import torch
    from torch.profiler import ProfilerActivity, profile

    import executor.api as api
    from headplan import cli

    # CUDA activity only (kernels and copies); CPU activity where there is no GPU (a dry run of this script)
    profiler = profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU])
    host_profiler = cProfile.Profile() if args.cprofile else None

    def start():
        profiler.start()
        if host_profiler is not None:
            host_profiler.enable()
    original = api.run_plan

    def profiled_run_plan(*a, **kw):
        import dataclasses

        from executor.settings import RunOptions

        options = kw.get("options", RunOptions())
        on_chunk = options.on_chunk
        chunks = {"seen": 0}

        def on_chunk_wrapper(index):
            chunks["seen"] += 1
            if on_chunk is not None:
                on_chunk(index)

        total_chunks = -(-a[2].shape[1] // (a[1].chunk_size))

        def start_at_last(index):
            on_chunk_wrapper(index)
            if index == total_chunks - 1 and not chunks.get("started"):
                chunks["started"] = True
                start()

        if args.from_chunk == "start":
            start()
            kw["options"] = dataclasses.replace(options, on_chunk=on_chunk_wrapper)
        else:
            kw["options"] = dataclasses.replace(options, on_chunk=start_at_last)
        try:
            return original(*a, **kw)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if host_profiler is not None:
                host_profiler.disable()
            profiler.stop()

    api.run_plan = profiled_run_plan
    with tempfile.TemporaryDirectory() as folder:
        device_flags = [] if "--device" in run_args else ["--device", "cuda"]
        code = cli.main(["run", *run_args, *device_flags, "--no-progress", "--out", folder])
        report_path = Path(folder) / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if profiler.profiler is None:
            print("kernel_profile: the run ended before the profiler started", file=sys.stderr)
            return code or 1
        trace_path = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace_path))
        trace = json.loads(trace_path.read_text())
        if args.keep_trace:
            with gzip.open(out_dir / f"{args.name}.trace.json.gz", "wt") as sink:
                json.dump(trace, sink)
    if host_profiler is not None:
        text = io.StringIO()
        pstats.Stats(host_profiler, stream=text).sort_stats("tottime").print_stats(40)
        pstats.Stats(host_profiler, stream=text).sort_stats("cumulative").print_stats(40)
        (out_dir / f"{args.name}.cprofile.txt").write_text(text.getvalue())
    summary = summarize_trace(trace)
    summary.update({"name": args.name, "run_args": run_args, "exit_code": code, "from_chunk": args.from_chunk,
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__, "report": report})
    (out_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({"name": args.name, "kinds": summary["kinds"], "streams": summary["streams"]}, indent=1))
    for row in summary["top"][:15]:
        print(f"{row['ms']:10.1f} ms {row['count']:7d}  {row['name'][:110]}")
    return code


if __name__ == "__main__":
    sys.exit(main())
