"""Probe: does the GPU memory cap change decode time? The same all-resident plan of the 8B shape at 32K
(c = 16K, G = 8, R = 256) measured 30-32 ms per token under a 24 GB cap and 40 ms under 80 GB, in the same lease.
Each (cap, repeat) runs in its own process, alternating caps; per token it records the run's decode time (CUDA
events) and the host's own time per token (perf_counter over the same loop with a sync only at the end).

    python benchmarks/decode_cap_probe.py [--caps 24GB,80GB] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
import torch
from executor.settings import ExecutionSettings
from executor.inputs.model_loader import build_random
from executor.inputs.prompt import random_prompt_ids
from executor.generation.runner import execute
from executor.runtime.gpu_memory import apply_gpu_budget
from planner.builtin_models import BUILTIN_MODELS
from planner.units import parse_bytes
cap = sys.argv[1]
fraction = apply_gpu_budget(parse_bytes(cap), 884_000_000, "cuda")
spec = BUILTIN_MODELS["llama-3-8b"]
model = build_random(spec, dtype=torch.bfloat16, device="cuda", seed=0).model
ids = random_prompt_ids(32768, spec.vocab_size, 0)
settings = ExecutionSettings(chunk_size=16384, heads_per_group=8, resident_kv_heads=256, capacity_tokens=32768 + 32,
                             attention_backend="cudnn-split")
rows = []
for attempt in range(2):
    start = time.perf_counter()
    m = execute(model, ids, settings, new_tokens=17, device="cuda")
    rows.append({"decode_ms": m.decode_s_per_token * 1000, "prefill_s": m.prefill_s,
                 "wall_s": time.perf_counter() - start})
print(json.dumps({"cap": cap, "fraction": fraction, "runs": rows,
                  "reserved_gib": torch.cuda.max_memory_reserved() / 2**30}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="24GB,80GB")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    results = []
    for _ in range(args.repeats):
        for cap in args.caps.split(","):
            proc = subprocess.run([sys.executable, "-c", CHILD, cap], capture_output=True, text=True, env=env,
                                  timeout=300)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("{")), None)
            row = json.loads(line) if line else {"cap": cap, "error": (proc.stdout + proc.stderr)[-1500:]}
            results.append(row)
            print(json.dumps(row), flush=True)
    out = Path(os.environ.get("OUT", "/tmp")) / "decode_cap_probe.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
