"""Saved-context benchmark on a GPU: the save and load time of a long context's KV against the prefill they replace,
and the achieved disk rates against the profiler's own disk figures for the same folder.

Per cell (MODEL:CONTEXT:GPU_MEM, random weights, bf16, a random prompt from --seed):
  1. ``headplan run ... --save-kv DIR``   the whole prefill, then the save (report kv.save_s, fsync'ed)
  2. the context's files are dropped from the page cache (fsync + posix_fadvise DONTNEED), so the load reads disk
  3. ``headplan run ... --load-kv DIR``   the same prompt: n - 1 tokens load, the last one is prefilled again
The disk is measured first with the profiler's section (executor/profiler/disk.py, 4 GiB, fsync'ed write, read
after dropping the cache) and written into a copy of --hw, which both runs plan with, so their reports carry the
predicted load and save time beside the measured ones. Each run is its own process (a fresh CUDA context).

    # on the GPU machine (about 3 minutes on an H200; the folder needs 16 GiB free for the 8B cell):
    python benchmarks/kv_reuse_bench.py --out $OUT \
        --hw hwprofiles/catalog/h200-sxm-quick.json --cells llama-3-8b:128K:24GB,llama-3.2-1b:256K:24GB

Writes OUT/kv_reuse.json (machine, date, disk figures, one record per cell) and prints one line per cell.
Leaves out: many questions over one document (headplan run --questions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure_disk(folder: Path) -> dict:
    import torch

    from executor.profiler.config import choose_preset
    from executor.profiler.context import ProfileContext
    from executor.profiler.disk import measure_disk as measure

    preset = choose_preset(quick=False, sizes="default", on_gpu=torch.cuda.is_available())
    ctx = ProfileContext(device=torch.device("cpu"), preset=preset, stream=sys.stderr)
    return measure(ctx, folder)


def profile_with_disk(hw: str, disk: dict, out: Path) -> Path:
    from hwprofiles import load_profile, write_profile

    profile = load_profile(hw)
    profile = profile.model_copy(update={k: disk[k] for k in ("disk_write_bytes_per_s", "disk_read_bytes_per_s",
                                                              "disk_path")})
    path = out / "hw-with-disk.json"
    write_profile(profile, path)
    return path


def drop_page_cache(folder: Path) -> int:
    """fsync + POSIX_FADV_DONTNEED on every file of ``folder``; returns the bytes dropped."""
    total = 0
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def headplan_run(model: str, context: str, gpu_mem: str, hw: Path, out: Path, extra: list[str],
                 timeout_s: int) -> dict:
    command = [sys.executable, "-m", "headplan.cli", "run", "--model", model, "--context", context, "--gpu-mem",
               gpu_mem, "--hw", str(hw), "--new-tokens", "4", "--out", str(out), "--no-progress", *extra]
    started_s = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    wall_s = time.perf_counter() - started_s
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    report["_wall_s"] = wall_s
    return report


def run_cell(cell: str, hw: Path, disk: dict, folder: Path, out: Path, timeout_s: int) -> dict:
    model, context, gpu_mem = cell.split(":")
    name = f"{Path(model).stem if '/' in model else model}-{context}"
    target = folder / f"ctx-{name}"
    shutil.rmtree(target, ignore_errors=True)
    saved = headplan_run(model, context, gpu_mem, hw, out / f"{name}-save",
                         ["--save-kv", str(target)], timeout_s)
    dropped = drop_page_cache(target)
    loaded = headplan_run(model, context, gpu_mem, hw, out / f"{name}-load",
                          ["--load-kv", str(target)], timeout_s)
    shutil.rmtree(target, ignore_errors=True)
    if not any(folder.iterdir()):
        folder.rmdir()
    s, ld = saved["kv"], loaded["kv"]
    prefill_s = saved["measured"]["prefill_s"]
    record = {
        "cell": cell, "context_tokens": saved["context_tokens"], "settings": saved["settings"],
        "prefill_s": prefill_s, "predicted_prefill_s": saved["predicted"]["prefill_s"],
        "save_s": s["save_s"], "saved_bytes": s["saved_bytes"], "save_bytes_per_s": s["save_bytes_per_s"],
        "predicted_save_s": s["predicted_save_s"], "page_cache_dropped_bytes": dropped,
        "load_s": ld["load_s"], "loaded_bytes": ld["loaded_bytes"], "load_bytes_per_s": ld["load_bytes_per_s"],
        "predicted_load_s": ld["predicted_load_s"], "reused_tokens": ld["reused_tokens"],
        "prefill_after_load_s": loaded["measured"]["prefill_s"],
        "host_pin_s": {"save_run": saved["memory"]["host_pin_s"], "load_run": loaded["memory"]["host_pin_s"]},
        "speedup_load_vs_prefill": prefill_s / ld["load_s"] if ld["load_s"] else None,
        "speedup_first_token": (prefill_s / (ld["load_s"] + loaded["measured"]["prefill_s"])
                                if ld["load_s"] else None),
        "save_share_of_disk_write": s["save_bytes_per_s"] / disk["disk_write_bytes_per_s"],
        "load_share_of_disk_read": ld["load_bytes_per_s"] / disk["disk_read_bytes_per_s"],
        "generated_equal": saved["generated_token_ids"] == loaded["generated_token_ids"],
        "wall_s": {"save_run": saved["_wall_s"], "load_run": loaded["_wall_s"]},
    }
    print(f"{cell}: prefill {prefill_s:.2f} s; save {s['save_s']:.2f} s ({s['save_bytes_per_s'] / 1e9:.2f} GB/s, "
          f"{record['save_share_of_disk_write']:.0%} of disk write); load {ld['load_s']:.2f} s "
          f"({ld['load_bytes_per_s'] / 1e9:.2f} GB/s, {record['load_share_of_disk_read']:.0%} of disk read); "
          f"load {record['speedup_load_vs_prefill']:.1f}x faster than the prefill", flush=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "kv-reuse-out")))
    parser.add_argument("--disk", type=Path, default=ROOT / ".kv-bench-contexts",
                        help="folder the contexts go to (default: in the working tree, on its disk; /tmp may be "
                        "tmpfs, i.e. RAM); removed after each cell")
    parser.add_argument("--hw", default=str(ROOT / "hwprofiles/catalog/h200-sxm-quick.json"))
    parser.add_argument("--cells", default="llama-3-8b:128K:24GB,llama-3.2-1b:256K:24GB")
    parser.add_argument("--timeout-s", type=int, default=240, help="per headplan run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.disk.mkdir(parents=True, exist_ok=True)
    disk = measure_disk(args.disk)
    print(f"disk {args.disk}: write {disk['disk_write_bytes_per_s'] / 1e9:.2f} GB/s, read "
          f"{disk['disk_read_bytes_per_s'] / 1e9:.2f} GB/s ({disk['nbytes'] / 2**30:.0f} GiB, cache dropped: "
          f"{disk['cache_dropped']})", flush=True)
    hw = profile_with_disk(args.hw, disk, args.out)
    results = {"machine": socket.gethostname(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
               "disk": disk, "hw": args.hw, "cells": []}
    for cell in [c for c in args.cells.split(",") if c]:
        try:
            results["cells"].append(run_cell(cell, hw, disk, args.disk, args.out, args.timeout_s))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            results["cells"].append({"cell": cell, "error": str(exc)[-3000:]})
            print(f"{cell}: failed: {str(exc)[-500:]}", flush=True)
        (args.out / "kv_reuse.json").write_text(json.dumps(results, indent=1) + "\n")
    try:
        import torch

        if torch.cuda.is_available():
            results["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    (args.out / "kv_reuse.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out / 'kv_reuse.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
