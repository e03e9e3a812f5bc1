"""Which processes hold GPU memory while a command runs: nvidia-smi's per-process figures, sampled.

A run's report takes the process's own GPU memory from NVML (pynvml) and, where pynvml is missing, the whole
device's used memory (total - free), which also counts any other process on the GPU: a compile worker that
opened a CUDA context, say. This samples ``nvidia-smi --query-compute-apps`` every ``--every-s`` while the command
runs and records each process's peak with its parent and command line, so that the two can be told apart.

    python3 benchmarks/gpu_process_memory.py --out $OUT/gpu-processes.json -- \
        python3 -m headplan.cli run --model gemma-2-9b --context 128K ...

Writes {"command", "exit_code", "wall_s", "samples", "processes": [{"pid", "ppid", "cmd", "peak_mib",
"is_command"}], "device_used_peak_mib"} with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def query_apps() -> dict[int, int]:
    """{pid: used MiB} of the compute processes nvidia-smi lists now."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20).stdout
    apps = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            apps[int(parts[0])] = int(parts[1])
    return apps


def device_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20).stdout.split()
    return int(out[0]) if out and out[0].isdigit() else -1


def describe(pid: int) -> tuple[int, str]:
    """(parent pid, command line) from /proc, (-1, '') where the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return ppid, cmd[:300]
    except (OSError, ValueError, IndexError):
        return -1, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every-s", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    child = subprocess.Popen(command)
    peaks: dict[int, dict] = {}
    samples, device_peak = 0, 0
    while child.poll() is None:
        try:
            apps, used = query_apps(), device_used_mib()
        except (OSError, subprocess.SubprocessError):
            break
        samples += 1
        device_peak = max(device_peak, used)
        for pid, mib in apps.items():
            row = peaks.get(pid)
            if row is None:
                ppid, cmd = describe(pid)
                row = peaks[pid] = {"pid": pid, "ppid": ppid, "cmd": cmd, "peak_mib": 0,
                                    "is_command": pid == child.pid}
            row["peak_mib"] = max(row["peak_mib"], mib)
        time.sleep(args.every_s)
    code = child.wait()
    result = {"date": time.strftime("%Y-%m-%d"), "command": command, "exit_code": code,
              "wall_s": round(time.perf_counter() - start, 1), "samples": samples,
              "device_used_peak_mib": device_peak, "processes": sorted(peaks.values(), key=lambda r: -r["peak_mib"])}
    args.out.write_text(json.dumps(result, indent=1))
    for row in result["processes"]:
        print(f"pid {row['pid']} (parent {row['ppid']}{', the command' if row['is_command'] else ''}): "
              f"peak {row['peak_mib']} MiB  {row['cmd'][:120]}")
    print(f"device used peak {device_peak} MiB over {samples} samples; exit {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
