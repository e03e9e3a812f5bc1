"""Experiment: 128K prefill of a Llama-3-8B-shaped model through the real executor with the cudnn-split
backend, per variant CHUNK:G:R:CHUNK_PART[:eager] (chunk size, heads per group, resident KV heads, the kernel of the
[tail, chunk] causal part: flash, cudnn, or auto = executor.attention_kernels.split_chunk_backend; ":eager"
merges the parts with the eager float32 accumulator instead of the one-pass Triton merge, the default). No GPU cap
(prefill time only). Prints one JSON line per variant and a table; writes $OUT/split_variants.json.

    python benchmarks/split_variants.py [--context 128K] [--variants 4K:2:64:flash,8K:2:64:cudnn]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.model_spec import BUILTIN_MODELS  # noqa: E402
from planner.units import parse_tokens  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", default="128K")
    parser.add_argument("--variants", default="4K:2:64:flash,4K:2:64:cudnn,8K:2:64:flash,8K:2:64:cudnn")
    args = parser.parse_args()
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    from executor import attention_kernels, attention_split, lse_merge_triton
    from executor.kv_store import ExecutionSettings
    from executor.model_loader import build_random
    from executor.prompt import random_prompt_ids
    from executor.runner import execute

    spec = BUILTIN_MODELS["llama-3-8b"]
    context = parse_tokens(args.context)
    loaded = build_random(spec, dtype=torch.bfloat16, device="cuda", seed=0)
    ids = random_prompt_ids(context, spec.vocab_size, 0)
    rows = []
    for variant in args.variants.split(","):
        chunk_text, group, resident, chunk_backend, *merge = variant.split(":")
        attention_kernels.SPLIT_CHUNK_BACKEND = None if chunk_backend == "auto" else chunk_backend
        attention_split.FUSED_MERGE = merge != ["eager"]
        settings = ExecutionSettings(chunk_size=parse_tokens(chunk_text), heads_per_group=int(group),
                                     resident_kv_heads=int(resident), capacity_tokens=context + 2,
                                     attention_backend="cudnn-split")
        start_s = time.perf_counter()
        m = execute(loaded.model, ids, settings, new_tokens=2, device="cuda")
        row = {"context": context, "chunk": settings.chunk_size, "heads_per_group": settings.heads_per_group,
               "resident_kv_heads": settings.resident_kv_heads,
               "chunk_backend": attention_kernels.split_chunk_backend(settings.chunk_size),
               "merge": "fused" if attention_split.FUSED_MERGE and lse_merge_triton.available() else "eager",
               "prefill_s": round(m.prefill_s, 3), "warmup_s": round(m.warmup_s or 0, 3),
               "attention_prefill_s": round(m.attention_s.get("prefill", 0.0), 3),
               "first_token": m.generated_token_ids[:1], "wall_s": round(time.perf_counter() - start_s, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    attention_kernels.SPLIT_CHUNK_BACKEND = None
    attention_split.FUSED_MERGE = True
    same = len({tuple(r["first_token"]) for r in rows}) == 1
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}; first generated token equal across "
          f"variants: {same}")
    print(f"{'chunk':>6} {'G':>3} {'R':>4} {'chunk part':>10} {'merge':>6} {'prefill s':>10} {'attention s':>12}")
    for r in rows:
        print(f"{r['chunk']:>6} {r['heads_per_group']:>3} {r['resident_kv_heads']:>4} {r['chunk_backend']:>10} "
              f"{r['merge']:>6} {r['prefill_s']:>10} {r['attention_prefill_s']:>12}")
    out = Path(os.environ.get("OUT", "/tmp")) / "split_variants.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
