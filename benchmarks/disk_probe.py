"""Disk bandwidth by folder and parallelism: 4 GiB in 1, 4 and 8 files written at once (fsync'ed), then read back at
once after posix_fadvise(DONTNEED); with df -T of each folder. Writes $OUT/disk-probe.json.

    python3 benchmarks/disk_probe.py $PWD/.dp /tmp/dp      # ~1 minute per folder on the H200 machine
"""
import json, os, subprocess, sys, time, threading
import numpy as np
GIB = 1 << 30
BLOCK = 64 << 20
def write(path, buf):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    mv = memoryview(buf)
    for i in range(0, len(mv), BLOCK):
        v = mv[i:i + BLOCK]
        while len(v): v = v[os.write(fd, v):]
    os.fsync(fd); os.close(fd)
def drop(path):
    fd = os.open(path, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
def read(path, buf):
    mv = memoryview(buf); pos = 0
    with open(path, "rb", buffering=0) as f:
        while pos < len(mv):
            got = f.readinto(mv[pos:])
            if not got: break
            pos += got
def par(fn, paths, bufs):
    ts = [threading.Thread(target=fn, args=(p, b)) for p, b in zip(paths, bufs)]
    t = time.perf_counter(); [x.start() for x in ts]; [x.join() for x in ts]; return time.perf_counter() - t
out = {}
total = 4 * GIB
for folder in sys.argv[1:]:
    os.makedirs(folder, exist_ok=True)
    df = subprocess.run(["df", "-T", folder], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    for n in (1, 4, 8):
        size = total // n
        bufs = [np.random.default_rng(i).integers(0, 256, size=size, dtype=np.uint8) for i in range(n)]
        paths = [os.path.join(folder, f".probe-{i}.bin") for i in range(n)]
        try:
            w = par(write, paths, bufs)
            for p in paths: drop(p)
            r = par(read, paths, bufs)
        finally:
            for p in paths:
                if os.path.exists(p): os.unlink(p)
        out[f"{folder} x{n}"] = {"df": df, "write_GBps": total / w / 1e9, "read_GBps": total / r / 1e9}
        print(folder, n, df, f"write {total / w / 1e9:.2f} GB/s read {total / r / 1e9:.2f} GB/s", flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "disk-probe.json"), "w"), indent=1)
