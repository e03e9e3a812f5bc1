"""Is all of this machine's host memory equally fast? The read rate of each piece of a large allocation, twice.

On the H200 machine (2026-12-01) the CPU share's kernel read 45.7 GB/s in one run and 25.1 GB/s in a later one,
with the DMA slowing in step (benchmarks/results/2026-12-01-h200/cpu-share-pages-ab.jsonl), while within one
process it held 34-41 GB/s for 100 s (host-rate-drift.json). One explanation is memory of unequal speed under a
virtual machine (guest pages backed on the far socket of the host, say): then each run's store is as fast as the
pages it happened to get. This allocates ``--pieces`` pieces of ``--gib`` GiB (advised to huge pages, filled), reads
each with a sum and with the CPU share's decode kernel at the run's thread count (cores - 1), and then reads every
piece again: a piece that is slow both times says placement; all pieces slow in one pass says time.

    PYTHONPATH=. python benchmarks/host_memory_map.py --gib 8 --pieces 10 --out $OUT/host-memory-map.json

Writes {"machine", "vmstat_before", "vmstat_after", "rows": [{"pass", "piece", "sum_bytes_per_s",
"kernel_bytes_per_s"}]} and prints one line per piece and pass. ``vmstat``: the kernel's compaction and huge-page
counters (/proc/vmstat), to see whether compaction ran between the passes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.attention.host_attention import host_partial_attention  # noqa: E402
from executor.engine.host_share import default_host_threads  # noqa: E402
from executor.runtime.host_memory import host_available_bytes  # noqa: E402
from host_kv import HEAD_DIM, KV_HEADS, RATIO, advised_kv  # noqa: E402

VMSTAT_KEYS = ("compact_stall", "compact_success", "compact_fail", "thp_fault_alloc", "thp_fault_fallback",
               "numa_hit", "numa_miss")


def vmstat() -> dict[str, int]:
    try:
        pairs = (line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        return {k: int(v) for k, v in pairs if k in VMSTAT_KEYS}
    except OSError:
        return {}


def read_rates(kv: torch.Tensor, threads: int, query: torch.Tensor) -> tuple[float, float]:
    """(median of 3 sums, median of 3 kernel calls) in bytes per second over the piece."""
    nbytes = kv.numel() * kv.element_size()
    sums, kernels = [], []
    for _ in range(3):
        start = time.perf_counter()
        kv.reshape(-1).view(torch.int64).sum()
        sums.append(nbytes / (time.perf_counter() - start))
        start = time.perf_counter()
        host_partial_attention(query, kv[0], kv[1], scale=HEAD_DIM ** -0.5, threads=threads)
        kernels.append(nbytes / (time.perf_counter() - start))
    return statistics.median(sums), statistics.median(kernels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=8.0, help="size of each piece")
    parser.add_argument("--pieces", type=int, default=0,
                        help="how many (0: as many as MemAvailable less --margin-gib holds, at most 16)")
    parser.add_argument("--margin-gib", type=float, default=16.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    nbytes = int(args.gib * (1 << 30)) // (1 << 21) * (1 << 21)
    available = host_available_bytes()
    pieces = args.pieces or max(1, min(16, int(((available or 0) - args.margin_gib * (1 << 30)) // nbytes)))
    if available is not None and pieces * nbytes > available:
        parser.error(f"{pieces} pieces of {args.gib} GiB exceed the {available / (1 << 30):.1f} GiB available")
    threads = default_host_threads()
    torch.set_num_threads(threads)
    query = torch.randn(KV_HEADS, RATIO, HEAD_DIM, dtype=torch.bfloat16)
    before = vmstat()
    stores = [advised_kv(nbytes) for _ in range(pieces)]
    rows = []
    for pass_index in (1, 2):
        for index, kv in enumerate(stores):
            sum_rate, kernel_rate = read_rates(kv, threads, query)
            rows.append({"pass": pass_index, "piece": index, "sum_bytes_per_s": sum_rate,
                         "kernel_bytes_per_s": kernel_rate})
            print(f"pass {pass_index} piece {index:2d}: sum {sum_rate / 1e9:5.1f} GB/s, kernel "
                  f"{kernel_rate / 1e9:5.1f} GB/s at {threads} threads", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                                "threads": threads, "piece_bytes": nbytes, "pieces": pieces},
                                    "vmstat_before": before, "vmstat_after": vmstat(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
