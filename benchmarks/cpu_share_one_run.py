"""Decode with the planner's CPU share against F = 0 over ONE prefilled context, in one process, alternating.

Separate processes differ in the CPU kernel's rate by up to 2x on the lent H200 (docs/cpu-share.md), so a share
measured in one process against F = 0 in another mixes the share's gain with the host's mood. Here every share runs
over the same stores, after the same whole prefill, minutes apart:

    PYTHONPATH=. python3 benchmarks/cpu_share_one_run.py --out $OUT/one-run \\
        --profile hwprofiles/catalog/h200-sxm-measured.json --contexts 128K,512K   # ~6 min of an H200

Per context (Llama-3-8B shape, random weights, bf16, --gpu-mem):
  1. the planner's plan (F chosen by it; --forced-share where it chooses 0, so the path is measured anyway) and
     the same knobs priced at F = 0 (planner/solver.py evaluate);
  2. a DocumentEngine (executor/generation/document.py) with the plan's knobs, the whole CONTEXT-token document
     prefilled through it (no timing probe: the host store is written by the prefill's own DMA);
  3. a warm-up answer at each share (2 tokens), then --rounds rounds of [F, 0]: each an answer of one question
     token and --new-tokens tokens, the share switched between answers (DocumentEngine.set_cpu_share), the decode
     steps timed alone (Answer.decode_s) and the engine's decode counters read before and after (CPU bytes, kernel
     seconds, PCIe bytes, the per-layer timeline).
Writes OUT/cpu_share_one_run.json and .md after every answer. ``--smoke`` runs a tiny model on the CPU through the
same path (tests/cpu/test_cpu_share_one_run_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOKE_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=97,
                    max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


def plans(spec, hw, context: int, gpu_mem: str, decode_tokens: int, forced_share: float, smoke: bool):
    """(the plan to run, its predicted decode s/token at its F, the same knobs' predicted decode at F = 0)."""
    from planner.solver import evaluate, make_plan
    from planner.units import parse_bytes

    common = dict(context_tokens=context, decode_tokens=decode_tokens, gpu_mem_bytes=parse_bytes(gpu_mem),
                  dtype="float32" if smoke else "bfloat16")
    plan = make_plan(spec, hw, **common, chunk_size=512 if smoke else None,
                     resident_kv_heads=1 if smoke else None)
    if plan.cpu_share == 0 or smoke:
        plan = make_plan(spec, hw, **common, chunk_size=plan.chunk_size, heads_per_group=plan.heads_per_group,
                         resident_kv_heads=plan.resident_kv_heads, cpu_share=forced_share)
    _, _, zero, _ = evaluate(spec, hw, **common, host_mem_bytes=None, chunk_size=plan.chunk_size,
                             heads_per_group=plan.heads_per_group, resident_kv_heads=plan.resident_kv_heads,
                             attention_backend=plan.attention_backend, cpu_share=0.0, past_cut=plan.past_cut,
                             compile_layers=plan.compile_layers, chunk_backend=plan.chunk_backend)
    if smoke:  # the CPU runs the same path with the portable kernel
        plan = plan.model_copy(update={"attention_backend": "math", "decode_graphs": False})
    return plan, plan.predicted.decode_s_per_token, zero.decode_s_per_token


def _decode_counters(engine) -> dict:
    decode = engine.engine.counters.get("decode")
    return dataclasses.asdict(decode) if decode is not None else {}


def ask(engine, share: float, question, new_tokens: int, hand_off: str = "stream") -> dict:
    """One answer at share F with ``hand_off`` ("stream": the GPU waits for the worker; "join": the main thread
    joins it, HEADPLAN_HOST_WAIT=join); per decode token: wall, CPU bytes and kernel seconds, PCIe bytes, the
    timeline."""
    os.environ["HEADPLAN_HOST_WAIT"] = hand_off
    engine.set_cpu_share(share)
    shares = [e.host_share for e in engine.engine.engines if e.host_share is not None]
    before = _decode_counters(engine)
    answer = engine.answer(question, new_tokens=new_tokens)
    after = _decode_counters(engine)
    steps = max(answer.decode_steps, 1)
    delta = {k: (after.get(k, 0) - before.get(k, 0)) / steps for k in after}
    kernel_s = delta.get("host_attention_s", 0.0)
    return {"share": share, "hand_off": shares[0].hand_off if shares else None,
            "decode_steps": answer.decode_steps, "decode_s_per_token": answer.decode_s / steps,
            "answer_s": answer.seconds, "cpu_bytes_per_token": delta.get("host_attention_bytes", 0.0),
            "cpu_kernel_s_per_token": kernel_s,
            "cpu_kernel_bytes_per_s": delta["host_attention_bytes"] / kernel_s if kernel_s else None,
            "cpu_calls_per_token": delta.get("host_attention_calls", 0.0),
            "cpu_start_delay_s_per_token": delta.get("host_attention_start_delay_s", 0.0),
            "join_wait_s_per_token": delta.get("host_join_wait_s", 0.0),
            "pcie_bytes_per_token": delta.get("h2d_bytes", 0.0),
            "pcie_bytes_per_s_of_wall": delta.get("h2d_bytes", 0.0) / (answer.decode_s / steps)
            if answer.decode_s else None}


def run_context(record: dict, hw, args, write) -> None:
    import torch

    from executor.api import settings_from_plan
    from executor.generation.document import DocumentEngine
    from executor.inputs.model_loader import build_random
    from planner.model_spec import load_model_spec
    from planner.units import parse_tokens

    spec = load_model_spec(args.model)
    context = parse_tokens(record["context"])
    device = "cpu" if args.smoke else "cuda"
    plan, predicted, predicted_zero = plans(spec, hw, context, args.gpu_mem, 1 + args.new_tokens,
                                            args.forced_share, args.smoke)
    share = plan.cpu_share
    record.update(context_tokens=context, knobs=[plan.chunk_size, plan.heads_per_group, plan.resident_kv_heads],
                  backend=plan.attention_backend, chunk_backend=plan.chunk_backend, share=share,
                  predicted_decode_s=predicted, predicted_zero_share_decode_s=predicted_zero,
                  share_note=next((n for n in plan.notes if "CPU share" in n), None), answers=[])
    model = build_random(spec, dtype=torch.float32 if args.smoke else torch.bfloat16, device=device, seed=0).model
    generator = torch.Generator().manual_seed(args.seed)
    doc = torch.randint(0, spec.vocab_size, (1, context), generator=generator)
    settings = settings_from_plan(plan, 1 + args.new_tokens, context)
    started = time.perf_counter()
    try:
        with DocumentEngine(model, settings, device=device) as engine:
            record["engine_setup_s"] = time.perf_counter() - started
            record["prefill_s"] = engine.prefill_document(doc)
            print(f"{record['context']}: knobs {record['knobs']}, F {share:g}; prefill {record['prefill_s']:.1f} s",
                  flush=True)
            write()
            question = torch.randint(0, spec.vocab_size, (1, 1), generator=generator)
            hand_offs = args.hand_offs.split(",")
            order = [(share, h) for h in hand_offs] + [(0.0, hand_offs[0])]
            for warm, hand_off in order:  # first calls: kernel builds, the worker's scripted job
                ask(engine, warm, question, 3, hand_off)
            for round_index in range(args.rounds):
                for current, hand_off in order:
                    row = ask(engine, current, question, 1 + args.new_tokens, hand_off)
                    row["round"] = round_index
                    record["answers"].append(row)
                    rate = row["cpu_kernel_bytes_per_s"]
                    print(f"  round {round_index + 1} F {current:g}" + (f" ({row['hand_off']})" if current else "") +
                          f": {row['decode_s_per_token'] * 1e3:.1f} ms per token" +
                          (f", CPU kernel {rate / 1e9:.1f} GB/s" if rate else ""), flush=True)
                    write()
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    summarise(record)
    write()


def summarise(record: dict) -> None:
    """Medians per share over the rounds; the speedup; each side's error against its prediction."""
    answers = record["answers"]
    zero = [a["decode_s_per_token"] for a in answers if a["share"] == 0]
    first = next((a["hand_off"] for a in answers if a["share"] > 0), None)
    main = [a["decode_s_per_token"] for a in answers if a["share"] > 0 and a["hand_off"] == first]
    if zero and main:
        share_s, zero_s = statistics.median(main), statistics.median(zero)
        record.update(measured_decode_s=share_s, measured_zero_share_decode_s=zero_s, speedup=zero_s / share_s,
                      hand_off=first,
                      predicted_speedup=record["predicted_zero_share_decode_s"] / record["predicted_decode_s"],
                      error=share_s / record["predicted_decode_s"] - 1,
                      zero_share_error=zero_s / record["predicted_zero_share_decode_s"] - 1,
                      pairwise_speedups=[z / s for s, z in zip(main, zero)])
        record["by_hand_off"] = {h: statistics.median([a["decode_s_per_token"] for a in answers
                                                       if a["share"] > 0 and a["hand_off"] == h])
                                 for h in {a["hand_off"] for a in answers if a["share"] > 0}}


def markdown(results: dict) -> str:
    lines = [f"# The CPU share against F = 0 over one prefilled context ({results['gpu']}, {results['date'][:10]})",
             "", f"`{results['command']}`", "",
             "| context | knobs c, G, R | F | prefill | decode with F (pred) | F = 0 (pred) | speedup (pred) | "
             "per round |", "|---|---|---|---|---|---|---|---|"]
    for r in results["contexts"]:
        if "speedup" not in r:
            lines.append(f"| {r['context']} | incomplete: {str(r.get('error_text', ''))[-200:]} |||||||")
            continue
        lines.append(f"| {r['context']} | {', '.join(map(str, r['knobs']))} | {r['share']:g} | {r['prefill_s']:.1f} s | "
                     f"{r['measured_decode_s'] * 1e3:.1f} ms ({r['predicted_decode_s'] * 1e3:.1f}, {r['error']:+.1%}) | "
                     f"{r['measured_zero_share_decode_s'] * 1e3:.1f} ms ({r['predicted_zero_share_decode_s'] * 1e3:.1f}, "
                     f"{r['zero_share_error']:+.1%}) | {r['speedup']:.2f}x ({r['predicted_speedup']:.2f}x) | "
                     f"{', '.join(f'{x:.2f}x' for x in r['pairwise_speedups'])} |")
    for r in results["contexts"]:
        if len(r.get("by_hand_off", {})) > 1:
            lines.append(f"\n{r['context']}, the share's decode by hand-off (median): " + ", ".join(
                f"{h} {v * 1e3:.1f} ms" for h, v in sorted(r["by_hand_off"].items())))
    lines += ["", "| context | round | F | hand-off | decode ms/token | CPU kernel GB/s | CPU GB/token | PCIe GB/token | "
              "submit->start / join wait ms per token |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["contexts"]:
        for a in r.get("answers", []):
            rate = a["cpu_kernel_bytes_per_s"]
            lines.append(f"| {r['context']} | {a['round'] + 1} | {a['share']:g} | {a['hand_off'] or '-'} | "
                         f"{a['decode_s_per_token'] * 1e3:.1f} | "
                         f"{'-' if not rate else f'{rate / 1e9:.1f}'} | {a['cpu_bytes_per_token'] / 1e9:.3f} | "
                         f"{a['pcie_bytes_per_token'] / 1e9:.3f} | {a['cpu_start_delay_s_per_token'] * 1e3:.1f} / "
                         f"{a['join_wait_s_per_token'] * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", default=str(ROOT / "hwprofiles/catalog/h200-sxm-measured.json"))
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--contexts", default="128K,512K")
    parser.add_argument("--gpu-mem", default="24GB")
    parser.add_argument("--new-tokens", type=int, default=16, help="decode tokens per answer")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of [F, 0] per context")
    parser.add_argument("--forced-share", type=float, default=0.4, help="F where the planner chooses 0")
    parser.add_argument("--hand-offs", default="stream", help="the share's hand-offs to alternate: stream (the GPU "
                        "waits for the worker), join (the main thread joins it), or both: stream,join")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (tests)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.new_tokens < 1:
        parser.error("--rounds and --new-tokens must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from hwprofiles import load_profile

    if args.smoke:
        config = args.out / "smoke-config.json"
        config.write_text(json.dumps(SMOKE_CONFIG))
        args.model, args.contexts = str(config), "2K"
    hw = load_profile(args.profile)
    import torch

    results = {"machine": socket.gethostname(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
               "command": " ".join(["python3", *sys.argv]), "profile": args.profile, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "contexts": []}

    def write() -> None:
        (args.out / "cpu_share_one_run.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "cpu_share_one_run.md").write_text(markdown(results))

    failed = False
    for context in args.contexts.split(","):
        record = {"context": context}
        results["contexts"].append(record)
        try:
            run_context(record, hw, args, write)
        except Exception as exc:  # noqa: BLE001 - the next context still runs; the fault is written
            failed = True
            record["error_text"] = f"{type(exc).__name__}: {exc}"
            print(f"{context}: {record['error_text']}", file=sys.stderr, flush=True)
        write()
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
