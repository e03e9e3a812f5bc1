"""The prefill's attention and matmuls sustained for seconds against their short bursts, with the GPU's clock: the
profiler's sustained section (executor/profiler/sustained.py) run three ways, each for ``--seconds``:

    randn     random normal K and V, as the profiler measures (and as a real model's KV reads to the kernel)
    copies    the same with 64 MiB pinned host-to-device copies on a side stream throughout (a streamed prefill's
              fetches): tells the power limit's clock from HBM or DMA contention
    zeros     zero K and V, as a prefill of the last chunks over a zero-filled past (``--tail-chunks``) attends

each at every head dim the section measures (128 and 64). ``nvidia-smi`` samples SM clock, power and temperature
every 200 ms (benchmarks/prefill_attention_probe.py's sampler); each row carries the median SM clock and power of
its window. (The rows of 2026-12-01's sustained-probe.json predate the head-dim rows: head dim 128 only, the
ratios named prefill_attention_sustained_ratio and prefill_matmul_sustained_ratio.) Prints one line per row and writes
$OUT/sustained-probe.json (or ``--out``).

    python3 benchmarks/sustained_probe.py --out $OUT/sustained-probe.json [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefill_attention_probe import clock_sampler, read_samples  # noqa: E402

COPY_BYTES = 64 * 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    import torch

    from executor.profiler.config import choose_preset
    from executor.profiler.context import ProfileContext
    from executor.profiler.sustained import measure_sustained

    if not torch.cuda.is_available():
        print("sustained_probe: needs a GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    ctx = ProfileContext(device=device, preset=choose_preset(quick=False, sizes="default", on_gpu=True))
    samples_path = args.out.with_suffix(".smi.csv")
    sampler = clock_sampler(samples_path)
    rows = []
    for name, fill, copy_bytes in (("randn", "randn", 0), ("copies", "randn", COPY_BYTES), ("zeros", "zeros", 0)):
        for row in measure_sustained(ctx, fill=fill, sustain_s=args.seconds, copy_bytes=copy_bytes)["rows"]:
            rows.append({"run": name, **row})
    if sampler is not None:
        sampler.terminate()
        sampler.wait()
        samples = read_samples(samples_path)
        for row in rows:  # the loop's second half, the window the ratios come from (rows end in order)
            end = row["wall_end"]
            window = [s for s in samples if end - row["seconds"] / 2 - 1 <= s[0] <= end + 1]
            if window:
                row["sm_clock_mhz_median"] = statistics.median(s[1] for s in window)
                row["power_w_median"] = statistics.median(s[2] for s in window)
                row["temperature_c_max"] = max(s[3] for s in window)
    for row in rows:
        print(f"{row['run']:<7} d{row['head_dim']:<4} attention {row['attention_burst_flops_per_s'] / 1e12:5.0f} -> "
              f"{row['attention_flops_per_s'] / 1e12:5.0f} TFLOP/s (x{row['attention_ratio']:.3f})  matmul "
              f"{row['matmul_burst_flops_per_s'] / 1e12:5.0f} -> {row['matmul_flops_per_s'] / 1e12:5.0f} "
              f"(x{row['matmul_ratio']:.3f})  clock {row.get('sm_clock_mhz_median', '-')} MHz  "
              f"power {row.get('power_w_median', '-')} W", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                                    "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
