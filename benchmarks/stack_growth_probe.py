"""Which step of a run grows the CUDA per-thread stack, the local memory the driver reserves outside PyTorch's
allocator for every thread the GPU can hold (cudaLimitStackSize; runtime/gpu_memory.py cuda_stack_limit_bytes).

A Gemma-2-9B run on the H200 (2026-12-01) held 2.68 GB outside the allocator against Llama's 0.79: the stack
grew from 1024 to 8032 bytes per thread during the warm-up, i.e. about (8032 - 1024) x 132 SMs x 2048 threads
= 1.9 GB. This runs the executor's path (a 96-token prompt in 32-token chunks and 2 decode steps, as the warm-up
does) on the model's shape cut to ``--layers`` layers, with a forward hook on every module and a wrapper on the
engine's Triton entry points that synchronise and read the limit; it prints the first step after which the
limit rose, and every rise.

    PYTHONPATH=. python benchmarks/stack_growth_probe.py --model gemma-2-9b --out $OUT/stack-growth.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.runtime.gpu_memory import cuda_stack_limit_bytes, outside_allocator_snapshot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-2-9b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--backend", default="auto",
                        help="attention backend (auto: flex where the model caps its logits, else cudnn-split)")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the path (no stack to read)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from executor.attention import flex, merge_triton
    from executor.generation.runner import execute
    from executor.inputs.model_loader import build_random
    from executor.settings import ExecutionSettings, RunOptions
    from planner.builtin_models import BUILTIN_MODELS

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.zeros(1, device=device)
    rises: list[dict] = []
    state = {"limit": cuda_stack_limit_bytes() if cuda else None, "last": "start"}

    def check(step: str) -> None:
        if cuda:
            torch.cuda.synchronize()
        limit = cuda_stack_limit_bytes() if cuda else None
        if limit != state["limit"]:
            rises.append({"after": step, "previous_step": state["last"], "from_bytes": state["limit"],
                          "to_bytes": limit, **(outside_allocator_snapshot(device) if cuda else {})})
            print(f"stack {state['limit']} -> {limit} B after {step}", flush=True)
            state["limit"] = limit
        state["last"] = step

    def wrap(module, name):
        original = getattr(module, name)

        def wrapped(*a, **k):
            check(f"before {module.__name__}.{name}")
            result = original(*a, **k)
            check(f"{module.__name__}.{name}")
            return result
        setattr(module, name, wrapped)

    wrap(merge_triton, "merge_into")
    wrap(flex, "attend_flex")
    spec = BUILTIN_MODELS[args.model]
    update = {"num_hidden_layers": args.layers}
    if spec.layer_types:
        update["layer_types"] = spec.layer_types[: args.layers]
    spec = spec.model_copy(update=update)
    loaded = build_random(spec, dtype=torch.bfloat16, device=device, seed=0)
    model = loaded.model if hasattr(loaded, "model") else loaded
    check("model built")
    for name, module in model.named_modules():
        module.register_forward_hook(lambda m, i, o, name=name: check(f"module {name or 'model'}"))
    ids = torch.randint(0, spec.vocab_size, (1, 96))
    backend = args.backend if args.backend != "auto" else (
        "flex" if spec.attn_logit_softcapping else "cudnn-split")
    settings = ExecutionSettings(chunk_size=32, heads_per_group=1, resident_kv_heads=1, capacity_tokens=98,
                                 attention_backend=backend)
    start = time.perf_counter()
    execute(model, ids, settings, new_tokens=2, device=device, options=RunOptions(warmup=False))
    check("run end")
    result = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name() if cuda else None,
              "torch": torch.__version__,
              "model": args.model, "layers": args.layers, "seconds": time.perf_counter() - start,
              "final_stack_bytes": cuda_stack_limit_bytes() if cuda else None, "rises": rises}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
