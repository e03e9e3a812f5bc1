"""Gemma-2-9B on one GPU under 24 GB: the paper's Table 3 row beside the planner, and the longest context that
fits this machine's host RAM, predicted against measured (a ``--tail-chunks`` timing probe).

    # on the GPU machine (about 3-4 minutes of GPU time): writes $OUT/gemma2-9b.json and prints a summary
    PYTHONPATH=. python benchmarks/gemma2_bench.py --out $OUT
    # anywhere, the planner part alone (no GPU): the Table 3 comparison
    PYTHONPATH=. python benchmarks/gemma2_bench.py --out /tmp/g2 --plan-only

Steps (each one's result goes into the JSON file, with the machine and the date):
1. table3: ``headplan plan --model gemma-2-9b --max-context --gpu-mem 24GB --hw rtx-4090 --host-mem 1TiB``
   beside the HeadInfer paper's Table 3 row for Gemma-2-9B on a 24 GB RTX 4090 (head offload 1300K tokens,
   standard 10K).
2. flex: the FlexAttention points at Gemma-2's shapes (executor/profiler/attention_flex.py, the quick preset)
   added to a copy of ``--hw`` (benchmarks/profile_section.py --section flex), so the plan prices the kernel
   it runs with measured rates.
3. exact: a tiny random Gemma-2 (windows of 5 tokens, soft-caps) run on the GPU in bf16 with ``--verify``:
   the FlexAttention path against transformers' eager forward (greedy tokens agree, logits within bf16).
4. longest: host RAM for the KV store = MemAvailable - ``--host-margin`` (default 14 GiB for the process, the CUDA
   context and the pages the pinning needs); the longest head-offload context the planner fits in it and
   24 GB, rounded down to the plan's chunk; then ``headplan run --tail-chunks K`` at that context (the last K
   chunks over a zero-filled past: the full prefill would take far longer than one command may run) with
   4 decode tokens; measured prefill (of those chunks) and decode per token against predicted.
Leaves out: a full prefill at that context (its time is the planner's prediction; the probe checks the
per-chunk rate where it is slowest, at the end).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER_TABLE3_GEMMA2_9B = {"gpu": "RTX 4090 24 GB", "head_offload_tokens": 1300 * 1000, "standard_tokens": 10 * 1000,
                          "source": "HeadInfer (arXiv 2502.12574), Table 3; K read as 1000 tokens"}
TINY_GEMMA2 = {"model_type": "gemma2", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000,
               "sliding_window": 5, "query_pre_attn_scalar": 64, "attn_logit_softcapping": 1.0,
               "final_logit_softcapping": 30.0}
GIB = 1 << 30


def headplan(args: list[str], timeout_s: float) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "headplan.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s)
    return proc.returncode, proc.stdout + proc.stderr


def table3(out: Path) -> dict:
    code, text = headplan(["plan", "--model", "gemma-2-9b", "--max-context", "--gpu-mem", "24GB", "--hw", "rtx-4090",
                           "--host-mem", "1TiB", "--json", "--out", str(out / "table3-plan.json")], 60)
    planned = json.loads((out / "table3-plan.json").read_text())["max_context_tokens"] if code == 0 else {}
    row = {"planner": planned, "paper": PAPER_TABLE3_GEMMA2_9B, "exit_code": code}
    if planned:
        row["head_offload_vs_paper"] = planned["head-offload"] / PAPER_TABLE3_GEMMA2_9B["head_offload_tokens"]
        row["standard_vs_paper"] = planned["standard"] / PAPER_TABLE3_GEMMA2_9B["standard_tokens"]
    else:
        row["error_text"] = text[-1500:]
    return row


def flex_profile(hw: str, out: Path) -> tuple[str, dict]:
    target = out / "hw-with-flex.json"
    proc = subprocess.run([sys.executable, "benchmarks/profile_section.py", "--section", "flex", "--quick",
                           "--update", hw, "--out", str(target)], capture_output=True, text=True, timeout=240)
    row = {"exit_code": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}
    return (str(target) if proc.returncode == 0 else hw), row


def tiny_exact(out: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.json"
        config.write_text(json.dumps(TINY_GEMMA2))
        code, text = headplan(["run", "--device", "cuda", "--model", str(config), "--context", "300", "--chunk-size",
                               "64", "--heads-per-group", "1", "--resident-heads", "1", "--new-tokens", "8",
                               "--dtype", "bfloat16", "--gpu-mem", "24GB", "--hw", "h200-sxm-quick", "--verify",
                               "--no-progress", "--out", folder], 300)
        report = Path(folder) / "report.json"
        verify = json.loads(report.read_text()).get("verify") if report.exists() else None
    return {"exit_code": code, "verify": verify, **({"error_text": text[-1500:]} if code else {})}


def longest(hw: str, host_margin_bytes: int, tail_chunks: int, out: Path) -> dict:
    from executor.runtime.host_memory import host_available_bytes
    from hwprofiles import load_profile
    from planner.builtin_models import BUILTIN_MODELS
    from planner.solver import make_plan, max_context
    from planner.units import parse_bytes

    available = host_available_bytes()
    host_bytes = (available or 0) - host_margin_bytes
    model, profile = BUILTIN_MODELS["gemma-2-9b"], load_profile(hw)
    gpu_bytes = parse_bytes("24GB")
    fits = max_context(model, profile, gpu_mem_bytes=gpu_bytes, host_mem_bytes=host_bytes, decode_tokens=4,
                       strategy="head-offload")["head-offload"]
    plan = make_plan(model, profile, context_tokens=fits, decode_tokens=4, gpu_mem_bytes=gpu_bytes,
                     host_mem_bytes=host_bytes)
    context = fits // plan.chunk_size * plan.chunk_size
    row = {"host_available_bytes": available, "host_budget_bytes": host_bytes, "max_context_tokens": fits,
           "context_tokens": context, "chunk_size": plan.chunk_size, "heads_per_group": plan.heads_per_group,
           "resident_kv_heads": plan.resident_kv_heads, "tail_chunks": tail_chunks}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        code, text = headplan(["run", "--device", "cuda", "--model", "gemma-2-9b", "--context", str(context),
                               "--gpu-mem", "24GB", "--host-mem", f"{host_bytes}B", "--hw", hw, "--decode-tokens",
                               "4", "--new-tokens", "4", "--tail-chunks", str(tail_chunks), "--no-progress",
                               "--out", folder], 520)
        row.update(exit_code=code, wall_s=round(time.perf_counter() - started, 1))
        report_path = Path(folder) / "report.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            (out / "longest-report.json").write_text(json.dumps(report, indent=1))
            row.update(predicted=report.get("predicted"), measured=report.get("measured"), error=report.get("error"),
                       memory=report.get("memory"), warnings=report.get("warnings"), settings=report.get("settings"))
        if code:
            row["error_text"] = text[-2000:]
    return row


def machine() -> dict:
    facts = {"date": time.strftime("%Y-%m-%d"), "host": __import__("platform").node()}
    try:
        import torch
        import transformers

        facts.update(torch=torch.__version__, transformers=transformers.__version__)
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return facts


def summary(result: dict) -> str:
    lines = []
    t3 = result["table3"]
    if t3.get("planner"):
        lines.append(f"Table 3 (4090, 24 GB): planner head-offload {t3['planner']['head-offload']:,} tokens vs paper "
                     f"1,300K ({t3['head_offload_vs_paper']:.2f}x); standard {t3['planner']['standard']:,} vs 10K")
    if "exact" in result:
        lines.append(f"tiny Gemma-2 on GPU vs eager: {result['exact'].get('verify')}")
    if "longest" in result:
        lo = result["longest"]
        pred, meas = lo.get("predicted") or {}, lo.get("measured") or {}
        lines.append(f"longest in host RAM: {lo['context_tokens']:,} tokens (chunk {lo['chunk_size']}, "
                     f"G={lo['heads_per_group']}, R={lo['resident_kv_heads']}), exit {lo['exit_code']}")
        for key in ("prefill_s", "decode_s_per_token", "gpu_peak_bytes"):
            lines.append(f"  {key}: predicted {pred.get(key)} measured {meas.get(key)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hw", default="h200-sxm-quick", help="profile of this GPU the plans are made with")
    parser.add_argument("--host-margin", default="14GiB", help="host RAM left outside the KV store")
    parser.add_argument("--tail-chunks", type=int, default=3)
    parser.add_argument("--plan-only", action="store_true", help="step 1 alone (no GPU)")
    parser.add_argument("--steps", default="flex,exact,longest",
                        help="GPU steps to run after table3, comma-separated (drop flex to plan with --hw as it is)")
    args = parser.parse_args()
    steps = set() if args.plan_only else set(args.steps.split(","))
    from planner.units import parse_bytes

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "table3": table3(args.out)}
    hw = args.hw
    if "flex" in steps:
        hw, result["flex"] = flex_profile(args.hw, args.out)
    if "exact" in steps:
        result["exact"] = tiny_exact(args.out)
    if "longest" in steps:
        result["longest"] = longest(hw, parse_bytes(args.host_margin), args.tail_chunks, args.out)
    (args.out / "gemma2-9b.json").write_text(json.dumps(result, indent=1))
    print(summary(result))
    print(json.dumps({k: result[k] for k in result if k != "machine"}, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
