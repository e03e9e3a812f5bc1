"""Prefill variants of the cudnn-split backend: 128K prefill of a Llama-3-8B-shaped model through the real
executor, per variant CHUNK:G:R:CHUNK_BACKEND[:FLAG...] (chunk size, heads per group, resident KV heads, the kernel of
the [tail, chunk] causal part: flash, cudnn, or auto = executor.settings.SplitOptions.chunk_backend_for). Flags:
"eager" merges the parts with the eager float32 accumulator instead of the one-pass Triton merge; "group" computes
the chunk part inside every head set's call (SplitOptions.chunk_part "group") where the default computes it once
per layer; "whole" cuts the past whole (SplitOptions.past_cut); "compiled" compiles the layers' norms and MLPs
(ExecutionSettings.compile_layers). No GPU cap (prefill time only). Prints one JSON line per variant and a table; writes $OUT/split_variants.json.

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

from planner.builtin_models import BUILTIN_MODELS  # noqa: E402
from planner.units import parse_tokens  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", default="128K")
    parser.add_argument("--variants", default="4K:2:64:flash,4K:2:64:cudnn,8K:2:64:flash,8K:2:64:cudnn")
    parser.add_argument("--name", default=None, help="file name under $OUT (default split_variants.json)")
    args = parser.parse_args()
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    from executor.attention import merge_triton
    from executor.generation.runner import execute
    from executor.inputs.model_loader import build_random
    from executor.inputs.prompt import random_prompt_ids
    from executor.settings import ExecutionSettings, SplitOptions

    spec = BUILTIN_MODELS["llama-3-8b"]
    context = parse_tokens(args.context)
    loaded = build_random(spec, dtype=torch.bfloat16, device="cuda", seed=0)
    ids = random_prompt_ids(context, spec.vocab_size, 0)
    rows = []
    for variant in args.variants.split(","):
        chunk_text, group, resident, chunk_backend, *flags = variant.split(":")
        unknown = set(flags) - {"eager", "group", "whole", "compiled"}
        if unknown:
            parser.error(f"variant {variant}: unknown flags {sorted(unknown)}")
        split = SplitOptions(chunk_backend=None if chunk_backend == "auto" else chunk_backend,
                             fused_merge="eager" not in flags, chunk_part="group" if "group" in flags else "layer",
                             past_cut="whole" if "whole" in flags else "binary")
        settings = ExecutionSettings(chunk_size=parse_tokens(chunk_text), heads_per_group=int(group),
                                     resident_kv_heads=int(resident), capacity_tokens=context + 2,
                                     attention_backend="cudnn-split", split=split,
                                     compile_layers="compiled" in flags)
        start_s = time.perf_counter()
        m = execute(loaded.model, ids, settings, new_tokens=2, device="cuda")
        row = {"variant": variant, "context": context, "chunk": settings.chunk_size,
               "heads_per_group": settings.heads_per_group, "chunk_part": split.chunk_part,
               "past_cut": split.past_cut, "compile_layers": settings.compile_layers,
               "resident_kv_heads": settings.resident_kv_heads,
               "chunk_backend": split.chunk_backend_for(settings.chunk_size),
               "merge": "fused" if split.fused_merge and merge_triton.available() else "eager",
               "prefill_s": round(m.prefill_s, 3), "warmup_s": round(m.warmup_s or 0, 3),
               "attention_prefill_s": round(m.attention_s.get("prefill", 0.0), 3),
               "first_token": m.generated_token_ids[:1], "wall_s": round(time.perf_counter() - start_s, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    same = len({tuple(r["first_token"]) for r in rows}) == 1
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}; first generated token equal across "
          f"variants: {same}")
    print(f"{'variant':>28} {'chunk part':>10} {'merge':>6} {'prefill s':>10} {'attention s':>12}")
    for r in rows:
        print(f"{r['variant']:>28} {r['chunk_backend']:>10} {r['merge']:>6} {r['prefill_s']:>10} "
              f"{r['attention_prefill_s']:>12}")
    out = Path(os.environ.get("OUT", "/tmp")) / (args.name or "split_variants.json")
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
