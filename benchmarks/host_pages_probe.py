"""The host KV store's pages: a store allocated as the executor does (torch.empty, 4 KiB pages under THP's
"madvise" mode) against an anonymous mmap with MADV_HUGEPAGE, on this machine: the first touch of every page, the
cudaHostRegister that pins it, and the CPU share's decode kernel (attention/host_attention.py) over it at the run's
thread count (cores - 1). On the 2-core development VM (2026-12-01, 2 GiB) the first touch took 2039 ms with 4 KiB
pages and 523 ms with huge pages (1 GiB of them granted); the kernel there is compute-bound at 2 threads.

    PYTHONPATH=. python benchmarks/host_pages_probe.py --gib 8 --out $OUT/host-pages-probe.json

Prints one line per allocation kind and writes them with the machine and date; AnonHugePages is read from
/proc/self/smaps_rollup after the touch.
"""

from __future__ import annotations

import argparse
import json
import mmap
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.attention.host_attention import host_partial_attention  # noqa: E402
from executor.engine.host_share import default_host_threads  # noqa: E402
from executor.runtime.host_pages import advise_huge_pages, anon_huge_bytes  # noqa: E402
from host_kv import HEAD_DIM, KV_HEADS, RATIO, kv_over  # noqa: E402


def anon_huge_kib() -> int:
    return (anon_huge_bytes() or 0) // 1024


def allocate(kind: str, nbytes: int):
    """(flat uint8 tensor, the mmap keeping it alive or None)."""
    if kind == "torch.empty":
        return torch.empty(nbytes, dtype=torch.uint8), None
    if kind == "torch.empty+madvise":  # the executor's store (runtime/host_pages.py)
        flat = torch.empty(nbytes, dtype=torch.uint8)
        advise_huge_pages(flat)
        return flat, None
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(region, dtype=torch.uint8), region


def measure(kind: str, nbytes: int, threads: int) -> dict:
    huge_before = anon_huge_kib()
    flat, region = allocate(kind, nbytes)
    start = time.perf_counter()
    flat[::4096].zero_()
    touch_s = time.perf_counter() - start
    row = {"kind": kind, "bytes": nbytes, "touch_s": touch_s, "huge_pages_kib": anon_huge_kib() - huge_before}
    if torch.cuda.is_available():
        start = time.perf_counter()
        code = int(torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), nbytes, 1))
        row["register_s"], row["register_code"] = time.perf_counter() - start, code
    kv = kv_over(flat)
    query = torch.randn(KV_HEADS, RATIO, HEAD_DIM, dtype=torch.bfloat16)
    torch.set_num_threads(threads)
    host_partial_attention(query, kv[0], kv[1], scale=HEAD_DIM ** -0.5, threads=threads)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        host_partial_attention(query, kv[0], kv[1], scale=HEAD_DIM ** -0.5, threads=threads)
        times.append(time.perf_counter() - start)
    times.sort()
    row.update(kernel_threads=threads, kernel_bytes_per_s=kv.numel() * 2 / times[len(times) // 2],
               kernel_bytes_per_s_p10_p90=[kv.numel() * 2 / times[-2], kv.numel() * 2 / times[1]])
    if torch.cuda.is_available() and row.get("register_code") == 0:
        torch.cuda.cudart().cudaHostUnregister(flat.data_ptr())
    del kv, flat
    if region is not None:
        region.close()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=8.0, help="size of each store")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    nbytes = int(args.gib * (1 << 30)) // (1 << 21) * (1 << 21)
    threads = default_host_threads()
    rows = []
    for kind in ("torch.empty", "torch.empty+madvise", "mmap+MADV_HUGEPAGE", "torch.empty"):
        row = measure(kind, nbytes, threads)
        rows.append(row)
        print(f"{kind}: touch {row['touch_s']:.2f} s, register {row.get('register_s', float('nan')):.2f} s, "
              f"huge pages {row['huge_pages_kib'] / 2**20:.2f} GiB, kernel {row['kernel_bytes_per_s'] / 1e9:.1f} GB/s "
              f"at {threads} threads", flush=True)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
                                                else None, "thp": thp.read_text().strip() if thp.exists() else None},
                                    "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
