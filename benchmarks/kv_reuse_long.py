"""Saved contexts at 32 GiB, in one short GPU command: save and load time of Llama-3.2-1B at 1M tokens and
Llama-3-8B at 256K (random weights, bf16, 24 GB) against the prefill they replace, the achieved disk rates against
the profiler's own figures measured in the same command, and questions per hour over one 1M-token document with
reuse against without.

A full 1M prefill (1B) takes ~2.7 minutes and a 256K one (8B) ~40 s, too long to afford, so the KV that gets saved
comes from a timing probe (api.run_plan(..., tail_chunks=K), as headplan run --tail-chunks: only the last K chunks
computed, over a zero-filled past). Save and load time depend on the bytes, not their values, and the probe's
stores hold the full context's bytes. The save goes through kv/context_save.py ProbeContextSaver: the manifest
records the zero-filled tokens (``synthetic_past_tokens``), so no normal load (headplan run --load-kv, chat,
--questions) accepts the context; this script loads it with ``allow_synthetic=True``, then deletes it. The
prefill it replaces is the plan's prediction of the whole prefill (report.json tail.predicted_full_prefill_s) and,
where a measured full prefill of the same cell is in --reference (a validation JSONL, records with tail null), that.

Per cell MODEL:CONTEXT:GPU_MEM[:QUESTIONS]:
  1. plan (the --hw profile with this command's disk figures), random weights, a random document of CONTEXT ids
  2. probe run: last K chunks timed; then the save (fsync'ed) of all CONTEXT tokens
  3. the context's files dropped from the page cache (fsync + POSIX_FADV_DONTNEED), so the load reads disk
  4. a DocumentEngine (generation/document.py) with the plan's knobs loads the whole document from the context
  5. QUESTIONS questions of random ids (--question-tokens each), each answered with --new-tokens greedy tokens
     (a tokenizer is not needed: the ids go straight in); then the context is deleted
Questions per hour: with reuse 3600 / (median question s, after the first) (the load paid once, also shown for
the first hour); without 3600 / (full prefill + the same question s), the full prefill measured or predicted.
Disk: the profiler's section (executor/profiler/disk.py: the saver's and the loader's way, and one stream) on the
contexts' folder and on --tmp-disk, with ``df -T`` of each.

    # on the H200 (about 4 minutes; 32 GiB free in the contexts' folder, each context deleted after its cell):
    PYTHONPATH=. python3 benchmarks/kv_reuse_long.py --out $OUT

Writes OUT/kv_reuse_long.json and OUT/kv_reuse_long.md (rewritten after every step) and prints a table.
``--smoke`` runs a tiny model on the CPU through the same path (tests/cpu/test_kv_reuse_long_bench.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kv_reuse_bench import drop_page_cache  # noqa: E402

DEFAULT_CELLS = "llama-3-8b:256K:24GB:0,llama-3.2-1b:1M:24GB:3"
DEFAULT_REFERENCE = ROOT / "benchmarks/results/2026-12-01-h200/validation-1b-1m-after.jsonl"
SMOKE_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=97,
                    max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


def df_t(folder: Path) -> str:
    done = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True)
    return (done.stdout or done.stderr).strip()


def disk_probe(folder: Path, mode: str) -> dict:
    import torch

    from executor.profiler.config import choose_preset
    from executor.profiler.context import ProfileContext
    from executor.profiler.disk import measure_disk

    folder.mkdir(parents=True, exist_ok=True)
    preset = choose_preset(quick=mode == "quick", sizes="tiny" if mode == "tiny" else "default",
                           on_gpu=torch.cuda.is_available())
    ctx = ProfileContext(device=torch.device("cpu"), preset=preset, stream=sys.stderr)
    result = measure_disk(ctx, folder)
    result["df_T"] = df_t(folder)
    print(f"disk {folder}: write {result['disk_write_bytes_per_s'] / 1e9:.2f} GB/s, read "
          f"{result['disk_read_bytes_per_s'] / 1e9:.2f} GB/s ({SAVE_WAY}); one stream "
          f"{result['single_stream_write_bytes_per_s'] / 1e9:.2f} / {result['single_stream_read_bytes_per_s'] / 1e9:.2f}"
          f" GB/s; {result['nbytes'] / 2**30:.2f} GiB, cache dropped: {result['cache_dropped']}\n"
          f"{result['df_T']}", flush=True)
    return result


SAVE_WAY = "segment files, 4 at once, as the saver and the loader"


def reference_full_prefill(path: Path, model: str, context: str, gpu_mem: str) -> dict:
    """A measured full (non-probe) prefill of the cell in a validation JSONL, or why there is none."""
    if not path.is_file():
        return {"measured_full_prefill_s": None, "note": f"{path} not found"}
    held = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        report = record.get("report") or {}
        held.append(record.get("cell"))
        if record.get("cell") == f"{model}:{context}:{gpu_mem}" and report.get("tail") is None and report:
            return {"measured_full_prefill_s": report["measured"]["prefill_s"], "source": str(path),
                    "date": record.get("date")}
    return {"measured_full_prefill_s": None,
            "note": f"no measured full prefill of {model}:{context}:{gpu_mem} in {path.name} (it holds: {held})"}


def build(spec_name: str, args):
    import torch

    from executor.inputs.model_loader import build_random
    from planner.model_spec import load_model_spec

    spec = load_model_spec(spec_name)
    device = "cpu" if args.smoke else "cuda"
    return spec, build_random(spec, dtype=torch.float32 if args.smoke else torch.bfloat16, device=device,
                              seed=0).model, device


def make_cell_plan(spec, hw, context_tokens: int, gpu_mem: str, decode_tokens: int, smoke: bool):
    from planner.solver import make_plan
    from planner.units import parse_bytes

    plan = make_plan(spec, hw, context_tokens=context_tokens, decode_tokens=decode_tokens,
                     gpu_mem_bytes=parse_bytes(gpu_mem), dtype="float32" if smoke else "bfloat16",
                     chunk_size=512 if smoke else None)  # smoke: several chunks, so the probe path runs
    if smoke:  # the CPU runs the same path with the portable kernel
        plan = plan.model_copy(update={"attention_backend": "math", "cpu_share": 0.0, "decode_graphs": False})
    return plan


def probe_and_save(model, plan, doc, target: Path, args, device) -> dict:
    from executor.api import run_plan
    from executor.generation.tail import tail_split
    from executor.kv.context_save import ProbeContextSaver
    from executor.kv.fingerprint import model_fingerprint
    from executor.settings import RunOptions

    tail = tail_split(doc.shape[1], plan.chunk_size, args.tail_chunks)
    past = tail.skipped_tokens if tail is not None else 0
    saver = ProbeContextSaver(target, model_fingerprint(model), tuple(doc[0].tolist()), past,
                              progress=not args.no_progress)
    started = time.perf_counter()
    result = run_plan(model, plan, doc, new_tokens=1, device=device, options=RunOptions(kv_saver=saver),
                      tail_chunks=args.tail_chunks if past else None)
    report = result.report
    tail_block = _plain(report.tail) if report.tail is not None else None
    return {"probe_wall_s": time.perf_counter() - started, "tail": tail_block,
            "probe_prefill_s": report.measured.prefill_s, "probe_predicted_prefill_s": report.predicted.prefill_s,
            "predicted_full_prefill_s": tail_block["predicted_full_prefill_s"] if tail_block else
            report.predicted.prefill_s, "measured_full_prefill_s_this_run": None if tail_block else
            report.measured.prefill_s, "settings": _plain(report.settings),
            "save_s": report.kv.save_s, "saved_bytes": report.kv.saved_bytes,
            "save_bytes_per_s": report.kv.save_bytes_per_s, "predicted_save_s": report.kv.predicted_save_s,
            "host_pin_s": report.memory.host_pin_s if report.memory else None}


def _plain(value):
    return value.model_dump() if hasattr(value, "model_dump") else value


def load_and_ask(model, plan, doc, target: Path, questions: int, args, device, write) -> dict:
    import torch

    from executor.api import settings_from_plan
    from executor.generation.document import DocumentEngine
    from executor.kv.context_load import ContextLoader
    from executor.kv.fingerprint import model_fingerprint

    c = model.config
    loader = ContextLoader(target, fingerprint=model_fingerprint(model), dtype=next(model.parameters()).dtype,
                           num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads,
                           head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                           progress=not args.no_progress, allow_synthetic=True)
    settings = settings_from_plan(plan, args.question_tokens + args.new_tokens, doc.shape[1])
    out: dict = {"staging_bytes": loader.staging_bytes, "questions": []}
    started = time.perf_counter()
    with DocumentEngine(model, settings, device=device) as engine:
        out["engine_setup_s"] = time.perf_counter() - started  # stores allocated and pinned: not the load's
        engine.load_document(doc, loader)
        out.update(load_s=engine.document_load_s, loaded_bytes=engine.document_loaded_bytes,
                   loaded_tokens=engine.document_loaded_tokens,
                   load_bytes_per_s=engine.document_loaded_bytes / engine.document_load_s)
        print(f"  load {out['loaded_bytes'] / 2**30:.2f} GiB in {out['load_s']:.2f} s "
              f"({out['load_bytes_per_s'] / 1e9:.2f} GB/s)", flush=True)
        write()
        generator = torch.Generator().manual_seed(args.seed + 1)
        for index in range(questions):
            ids = torch.randint(0, c.vocab_size, (1, args.question_tokens), generator=generator)
            answer = engine.answer(ids, new_tokens=args.new_tokens)
            out["questions"].append({"question_tokens": answer.prompt_tokens, "new_tokens": len(answer.token_ids),
                                     "seconds": answer.seconds})
            print(f"  question {index + 1}: {answer.prompt_tokens} + {len(answer.token_ids)} tokens in "
                  f"{answer.seconds:.2f} s", flush=True)
            write()
    return out


def questions_per_hour(record: dict) -> dict | None:
    times = [q["seconds"] for q in record.get("questions", [])]
    if not times:
        return None
    steady = statistics.median(times[1:] if len(times) > 1 else times)
    full = record["reference"]["measured_full_prefill_s"] or record["predicted_full_prefill_s"]
    return {"question_s_first": times[0], "question_s_median_after_first": steady,
            "with_reuse_per_hour": 3600 / steady,
            "with_reuse_first_hour": max(0.0, 3600 - record["load_s"] - times[0]) / steady + 1,
            "without_reuse_per_hour": 3600 / (full + steady),
            "without_reuse_prefill_s": full,
            "without_reuse_prefill_from": "measured" if record["reference"]["measured_full_prefill_s"] else
            "predicted (plan)"}


def run_cell(record: dict, hw, disk: dict, folder: Path, args, write) -> dict:
    """Fill ``record`` (its "cell": MODEL:CONTEXT:GPU_MEM[:QUESTIONS]) in place, step by step (module doc)."""
    from planner.units import parse_tokens
    import torch

    model_name, context, gpu_mem, *rest = record["cell"].split(":")
    questions = int(rest[0]) if rest else 0
    spec, model, device = build(model_name, args)
    n = parse_tokens(context)
    plan = make_cell_plan(spec, hw, n, gpu_mem, args.question_tokens + args.new_tokens, args.smoke)
    doc = torch.randint(0, spec.vocab_size, (1, n), generator=torch.Generator().manual_seed(args.seed))
    target = folder / f"ctx-{Path(model_name).stem}-{context}"
    shutil.rmtree(target, ignore_errors=True)
    record.update(context_tokens=n, kv_gib=None,
                  reference=reference_full_prefill(Path(args.reference), model_name, context, gpu_mem))
    try:
        record.update(probe_and_save(model, plan, doc, target, args, device))
        record["kv_gib"] = record["saved_bytes"] / 2**30
        print(f"  probe {record['probe_prefill_s']:.2f} s; save {record['saved_bytes'] / 2**30:.2f} GiB in "
              f"{record['save_s']:.2f} s ({record['save_bytes_per_s'] / 1e9:.2f} GB/s)", flush=True)
        write()
        record["page_cache_dropped_bytes"] = drop_page_cache(target)
        record.update(load_and_ask(model, plan, doc, target, questions, args, device, write))
    finally:
        shutil.rmtree(target, ignore_errors=True)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    full = record["reference"]["measured_full_prefill_s"]
    record.update(
        save_share_of_disk_write=record["save_bytes_per_s"] / disk["disk_write_bytes_per_s"],
        load_share_of_disk_read=record["load_bytes_per_s"] / disk["disk_read_bytes_per_s"],
        load_share_of_single_stream_read=record["load_bytes_per_s"] / disk["single_stream_read_bytes_per_s"],
        speedup_load_vs_predicted_full_prefill=record["predicted_full_prefill_s"] / record["load_s"],
        speedup_load_vs_measured_full_prefill=full / record["load_s"] if full else None,
        questions_per_hour=questions_per_hour(record))
    return record


def markdown(results: dict) -> str:
    lines = [f"# Saved contexts at 32 GiB ({results['machine']}, {results['date'][:10]}, {results.get('gpu')})", "",
             "| folder | write GB/s | read GB/s | one stream w / r GB/s | GiB | file system |",
             "|---|---|---|---|---|---|"]
    for name, d in results["disk"].items():
        fs = d["df_T"].splitlines()[-1].split()[1] if d.get("df_T", "").count("\n") else "?"
        lines.append(f"| {name} `{d['disk_path']}` | {d['disk_write_bytes_per_s'] / 1e9:.2f} | "
                     f"{d['disk_read_bytes_per_s'] / 1e9:.2f} | {d['single_stream_write_bytes_per_s'] / 1e9:.2f} / "
                     f"{d['single_stream_read_bytes_per_s'] / 1e9:.2f} | {d['nbytes'] / 2**30:.1f} | {fs} |")
    lines += ["", "| cell | KV GiB | save s (share of disk write) | load s (share of disk read) | full prefill s "
              "predicted / measured | load x faster |", "|---|---|---|---|---|---|"]
    for r in results["cells"]:
        if "error" in r or "load_s" not in r:
            lines.append(f"| {r['cell']} | failed or incomplete: {str(r.get('error', ''))[-200:]} |||||")
            continue
        measured = r["reference"]["measured_full_prefill_s"]
        lines.append(f"| {r['cell']} | {r['kv_gib']:.1f} | {r['save_s']:.2f} ({r.get('save_share_of_disk_write', 0):.0%}) | "
                     f"{r['load_s']:.2f} ({r.get('load_share_of_disk_read', 0):.0%}) | "
                     f"{r['predicted_full_prefill_s']:.1f} / {f'{measured:.1f}' if measured else 'none'} | "
                     f"{r['predicted_full_prefill_s'] / r['load_s']:.1f} |")
    for r in results["cells"]:
        q = r.get("questions_per_hour")
        if q:
            lines += ["", f"Questions per hour over {r['cell']} ({len(r['questions'])} questions): with reuse "
                      f"{q['with_reuse_per_hour']:.0f} (question {q['question_s_median_after_first']:.2f} s, median "
                      f"after the first; first {q['question_s_first']:.2f} s), without "
                      f"{q['without_reuse_per_hour']:.1f} ({q['without_reuse_prefill_from']} full prefill "
                      f"{q['without_reuse_prefill_s']:.1f} s + the question)."]
        if r.get("reference", {}).get("note"):
            lines.append(f"\n{r['cell']}: {r['reference']['note']}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "kv-reuse-long-out")))
    parser.add_argument("--disk", type=Path, default=ROOT / ".kv-bench-contexts",
                        help="folder the contexts go to (default: in the working tree); each removed after its cell")
    parser.add_argument("--tmp-disk", type=Path, default=Path("/tmp/headplan-disk-probe"),
                        help="a second folder the disk probe measures, for comparison (removed after)")
    parser.add_argument("--hw", default=str(ROOT / "hwprofiles/catalog/h200-sxm-measured.json"))
    parser.add_argument("--cells", default=DEFAULT_CELLS, help="MODEL:CONTEXT:GPU_MEM[:QUESTIONS],...")
    parser.add_argument("--tail-chunks", type=int, default=1, help="timed chunks of the probe (after one lead-in)")
    parser.add_argument("--question-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE),
                        help="validation JSONL searched for a measured full prefill of each cell")
    parser.add_argument("--disk-mode", default="full", choices=["tiny", "quick", "full"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (tests)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        config = args.out / "smoke-config.json"
        args.out.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(SMOKE_CONFIG))
        args.cells, args.disk_mode = f"{config}:3K:24GB:2", "tiny"
    args.out.mkdir(parents=True, exist_ok=True)
    from hwprofiles import load_profile

    results = {"machine": socket.gethostname(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
               "command": " ".join(sys.argv), "hw": args.hw, "disk": {}, "cells": []}
    try:
        import torch

        results["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        results["torch"] = torch.__version__
    except ImportError:
        pass

    def write() -> None:
        (args.out / "kv_reuse_long.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "kv_reuse_long.md").write_text(markdown(results))

    results["disk"]["contexts"] = disk = disk_probe(args.disk, args.disk_mode)
    try:
        results["disk"]["tmp"] = disk_probe(args.tmp_disk, args.disk_mode)
    except (OSError, ValueError) as exc:
        print(f"disk {args.tmp_disk}: not measured: {exc}", flush=True)
    finally:
        shutil.rmtree(args.tmp_disk, ignore_errors=True)
    write()
    hw = load_profile(args.hw).model_copy(update={k: disk[k] for k in ("disk_write_bytes_per_s",
                                                                         "disk_read_bytes_per_s", "disk_path")})
    for cell in [c for c in args.cells.split(",") if c]:
        print(f"{cell}:", flush=True)
        record = {"cell": cell}
        results["cells"].append(record)
        try:
            run_cell(record, hw, disk, args.disk, args, write)
        except Exception as exc:  # noqa: BLE001  a failed cell is recorded; the next one still runs
            record["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
            print(f"{cell}: failed: {record['error'][-500:]}", flush=True)
        write()
    shutil.rmtree(args.disk, ignore_errors=True)
    print(markdown(results))
    print(f"wrote {args.out / 'kv_reuse_long.json'} and kv_reuse_long.md")
    return 0 if all("error" not in r for r in results["cells"]) else 1


if __name__ == "__main__":
    sys.exit(main())
