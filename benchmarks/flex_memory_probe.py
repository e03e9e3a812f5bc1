"""GPU memory outside PyTorch's allocator added by each kind of compiled FlexAttention call the engine makes for
Gemma-2-9B's layers (attention/flex.py attend_flex), one kind after another in one process: a global layer's
prefill chunk (past part + causal chunk part), a sliding layer's windowed chunk, and a decode step.

    PYTHONPATH=. python benchmarks/flex_memory_probe.py --out $OUT/flex-memory-probe.json

Outside the allocator = the device's used bytes (total - free) less torch.cuda.memory_reserved(), after
empty_cache. Prints one line per step and writes them with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.attention.flex import attend_flex  # noqa: E402


def outside_bytes() -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return int(total - free - torch.cuda.memory_reserved())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.zeros(1, device="cuda")
    rows, base = [], outside_bytes()
    scale, cap, chunk, past = 256 ** -0.5, 50.0, 1024, 65536
    q = torch.randn(1, 2, chunk, 256, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 1, past + chunk, 256, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    steps = [("global chunk (past + causal part)", lambda: attend_flex(q, k, v, scale=scale, softcap=cap, window=None)),
             ("sliding chunk (window 4096)", lambda: attend_flex(q, k[:, :, :4095 + chunk], v[:, :, :4095 + chunk],
                                                                 scale=scale, softcap=cap, window=4096)),
             ("decode step", lambda: attend_flex(q[:, :, :1], k, v, scale=scale, softcap=cap, window=None)),
             ("sliding decode step", lambda: attend_flex(q[:, :, :1], k[:, :, :4096], v[:, :, :4096], scale=scale,
                                                         softcap=cap, window=4096))]
    for name, call in steps:
        start = time.perf_counter()
        call()
        call()
        now = outside_bytes()
        rows.append({"step": name, "outside_allocator_bytes_added": now - base, "seconds": time.perf_counter() - start})
        print(f"{name}: +{(now - base) / 2**20:.0f} MiB outside the allocator since the start")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                "date": time.strftime("%Y-%m-%d")}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
