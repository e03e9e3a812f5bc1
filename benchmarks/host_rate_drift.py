"""Does this machine's host memory rate hold still? The CPU share's decode kernel (attention/host_attention.py)
and a plain sum, over one store, again and again for ``--seconds``, with a fresh store every ``--fresh-s``.

The CPU share's decode time is planned from one profile's kernel rate; if the host's rate drifts between minutes
(other tenants of a virtual machine's host, memory placement of each allocation), no plan made beforehand holds.
This records the rate over time in one process so that drift can be told from a fault of the run.

    PYTHONPATH=. python benchmarks/host_rate_drift.py --gib 16 --seconds 120 --out $OUT/host-rate-drift.json

Writes {"machine", "rows": [{"t_s", "store", "kind", "bytes_per_s"}]}; prints one line per 10 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.attention.host_attention import host_partial_attention  # noqa: E402
from executor.engine.host_share import default_host_threads  # noqa: E402
from host_kv import HEAD_DIM, KV_HEADS, RATIO, advised_kv  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=16.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--fresh-s", type=float, default=30.0, help="a new store this often")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    threads = default_host_threads()
    torch.set_num_threads(threads)
    nbytes = int(args.gib * (1 << 30)) // (1 << 21) * (1 << 21)
    query = torch.randn(KV_HEADS, RATIO, HEAD_DIM, dtype=torch.bfloat16)
    rows, start, store, kv, fresh_at, printed = [], time.perf_counter(), 0, advised_kv(nbytes), 0.0, -10.0
    while (now := time.perf_counter() - start) < args.seconds:
        if now - fresh_at >= args.fresh_s:
            del kv
            kv, store, fresh_at = advised_kv(nbytes), store + 1, time.perf_counter() - start
        t0 = time.perf_counter()
        host_partial_attention(query, kv[0], kv[1], scale=HEAD_DIM ** -0.5, threads=threads)
        t1 = time.perf_counter()
        kv.reshape(-1).view(torch.int64).sum()  # kv is a contiguous view: no copy
        t2 = time.perf_counter()
        rows.append({"t_s": round(now, 2), "store": store, "kind": "kernel", "bytes_per_s": kv.numel() * 2 / (t1 - t0)})
        rows.append({"t_s": round(now, 2), "store": store, "kind": "sum", "bytes_per_s": kv.numel() * 2 / (t2 - t1)})
        if now - printed >= 10:
            printed = now
            print(f"[{now:6.1f} s] store {store}: kernel {rows[-2]['bytes_per_s'] / 1e9:.1f} GB/s, "
                  f"sum {rows[-1]['bytes_per_s'] / 1e9:.1f} GB/s at {threads} threads", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                                "threads": threads, "bytes": nbytes}, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
