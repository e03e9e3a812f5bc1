"""headplan run: execute a plan for real (head-offloaded prefill + decode) and report measured against
predicted in a folder (report.json, report.md, PNG plots; trace.json + timeline.png with --trace).

The plan comes from ``--plan plan.json`` or from the same options as ``headplan plan`` (planned and run in one
step). The model is ``--model-path`` (a checkpoint folder or a .gguf file) or the plan's architecture with random
weights from ``--seed``. With a tokenizer, the answer streams to stdout as text (headplan/run_answer.py: chat
template, sampling, stop at end of sequence or ``--stop``); timings, warnings and the report path go to stderr
(``--quiet`` drops them). ``--gpus N`` runs a plan over N GPUs: ``--parallel layers`` its stages on cuda:0 ..
cuda:N-1 (with ``--device cpu``, N stages on the CPU); ``--parallel heads`` one process per GPU, each 1/N of every
layer's heads (headplan/run_heads.py; with ``--device cpu``, N gloo ranks on the CPU); ``auto`` (default) the
plan's choice. ``--tail-chunks K`` is a timing probe: only the last K prefill chunks run, over a synthetic KV
past (a fixed random pattern: generation/tail.py). Exit status: 0 done, 2 bad input, 3 GPU out of memory (partial report written), 130 Ctrl-C
(partial report written). Leaves out: the planning itself (headplan plan) and re-rendering (headplan report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headplan import kv_flags, run_checks
from headplan.errors import UserError
from headplan.run_answer import add_answer_arguments, answer_options, make_token_stream, say

DESCRIPTION = ("Run exact head-offloaded inference with a plan (--plan plan.json, or the plan options to plan and "
               "run in one step) and report measured against predicted.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from headplan.cmd_plan import add_plan_arguments

    parser.add_argument("--plan", type=Path, help="plan.json written by headplan plan (else: plan from the options "
                        "below, as headplan plan would, and run it)")
    add_plan_arguments(parser)
    parser.add_argument("--new-tokens", type=int, default=None, help="the most tokens to generate (default: the "
                        "plan's decode tokens); fewer when the answer ends (end of sequence, --stop)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights, random prompt ids and sampling")
    parser.add_argument("--model-path", type=Path, help="checkpoint folder (config.json + safetensors + tokenizer) "
                        "or a .gguf file; the plan is made for its architecture")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", type=Path, help="text file (- reads stdin), tokenized with the checkpoint's "
                        "tokenizer; the context is its length")
    prompt.add_argument("--prompt-ids", type=Path, help="JSON list of token ids (the context is its length)")
    add_answer_arguments(parser)
    parser.add_argument("--questions", type=Path, default=None, help="JSON list of questions: the --prompt text is a "
                        "document, prefilled once, and each question is answered after it (headplan/ask.py)")
    parser.add_argument("--out", type=Path, default=Path("run-report"), help="report folder (default run-report)")
    parser.add_argument("--trace", action="store_true", help="per-group events; timeline PNG + Chrome trace JSON")
    parser.add_argument("--verify", action="store_true", help="compare with the standard forward afterwards")
    parser.add_argument("--tail-chunks", type=int, default=None, metavar="K",
                        help="timing probe: run only the last K prefill chunks, over a synthetic KV past (a random "
                        "pattern) standing in for the earlier ones (outputs are not the model's; refuses --verify); "
                        "prefill is compared with those chunks' prediction")
    parser.add_argument("--rebalance-cpu-share", action="store_true",
                        help="after 4 decode tokens, choose the CPU share F again from the rate the CPU's kernel "
                        "reads in this run (planner/share_rebalance.py); the report says what it chose")
    parser.add_argument("--strict", action="store_true", help="refuse a plan made for other hardware")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--quiet", action="store_true", help="only the answer on stdout: no progress, timings, "
                        "warnings or report path on stderr")
    kv_flags.add_run_arguments(parser)


def _resolve_plan(args):
    """The Plan: read from --plan, or made from the plan options (for --model-path: its config)."""
    from headplan.cmd_plan import plan_from_args
    from planner.plan import read_plan

    if args.plan is not None:
        return read_plan(args.plan)
    if args.model_path is not None:
        args.model = str(args.model_path)
    return plan_from_args(args)


ALLOCATOR_CONFIG = "expandable_segments:True"
"""Set before CUDA starts (unless the user set PYTORCH_CUDA_ALLOC_CONF): segments that grow in place instead of
fixed blocks. Measured on the H100 (2026-11-22): without it, reserved ran 0.4-0.7 GiB over allocated at 24 GB,
and plans sized to the last few hundred MiB ran out of memory."""


def main(args) -> int:
    import os

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOCATOR_CONFIG)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF loader draws its own bar
        args.no_progress = True
    answer = answer_options(args)            # sampling and stop options checked before anything loads
    _check_tail_chunks(args)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible")
    run_checks.check_output_dir(args.out)
    kv_flags.check_early(args)
    tokenizer = _tokenizer_before_weights(args)
    if getattr(args, "questions", None) is not None:
        return run_questions(args, tokenizer, answer, device)
    prompt_ids = _prompt_before_plan(args, tokenizer)
    if prompt_ids is not None and args.plan is None:
        args.context = str(prompt_ids.shape[1])  # plan for the prompt actually given
    if args.new_tokens is not None and args.plan is None:
        args.decode_tokens = str(args.new_tokens)
    plan = _resolve_plan(args)
    if plan.gpus > 1 and plan.parallel == "heads":
        from headplan.run_heads import run_by_heads

        return run_by_heads(args, plan, device, prompt_ids)
    stages = _stages(plan, device, args)
    spec, context, dtype_name = plan.model, plan.context_tokens, plan.dtype
    new_tokens = args.new_tokens if args.new_tokens is not None else max(plan.decode_tokens, 1)
    if new_tokens < 1:
        raise UserError(f"--new-tokens must be at least 1, got {new_tokens}")
    if prompt_ids is not None and prompt_ids.shape[1] > context:
        raise UserError(f"the prompt has {prompt_ids.shape[1]} tokens but the plan is for {context}: plan again "
                        "for the longer context")
    warnings = _check_hardware(plan, device, args.strict, args.quiet) + run_checks.plan_warnings(plan, args.quiet)
    run_checks.check_host_ram_early(plan, _stated_host_bytes(args, plan))
    kv_flags.check_disk_for_save(args, plan, context)
    memory_extra = _apply_budget(plan, stages)
    loaded = _load_model(args, spec, dtype_name, device, stages, tokenizer)
    if prompt_ids is None:
        from executor.inputs.prompt import random_prompt_ids

        prompt_ids = random_prompt_ids(context, loaded.spec.vocab_size, args.seed)
    return _run_and_report(args, loaded, plan, prompt_ids, new_tokens, stages, warnings, memory_extra, answer)


def _check_tail_chunks(args) -> None:
    """--tail-chunks K: K >= 1, and not with --verify (generation/tail.py check_tail_request), before anything
    loads."""
    from executor.generation.tail import check_tail_request

    try:
        check_tail_request(getattr(args, "tail_chunks", None), args.verify)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _stages(plan, device: str, args=None):
    """The plan's stages on cuda:0 .. cuda:N-1 (or, with --device cpu, N stages on the CPU: same code path,
    one device); one stage for a single-GPU plan."""
    from executor.parallel.stages import devices_for, stages_from_plan
    from headplan.cmd_plan import parse_gpus

    asked = getattr(args, "gpus", "1") if args is not None else "1"
    if args is not None and args.plan is not None and getattr(args, "parallel", "auto") == "heads" and plan.gpus > 1:
        raise UserError(f"--parallel heads but {args.plan} splits by layers: plan again with --parallel heads")
    if args is not None and args.plan is not None and str(asked) != "1" and parse_gpus(asked) != plan.gpus:
        raise UserError(f"--gpus {asked} but {args.plan} was planned for {plan.gpus} GPU(s): plan again with "
                        f"--gpus {asked}")
    try:
        return stages_from_plan(plan, devices_for(max(plan.gpus, 1), device))
    except ValueError as exc:
        raise UserError(f"plan for {plan.gpus} GPUs: {exc}") from None


def _tokenizer_before_weights(args):
    """The checkpoint's tokenizer (a folder's files, or a .gguf file's), loaded before any weight, or None. The
    checks that need it (a chat template for --chat, --stop) are made here."""
    if args.model_path is None:
        if args.chat or args.prompt is not None or args.stop:
            what = "--chat" if args.chat else "--prompt" if args.prompt is not None else "--stop"
            raise UserError(f"{what} needs a tokenizer: pass --model-path (a checkpoint folder or a .gguf file)")
        return None
    from executor.inputs.model_loader import ModelLoadError, load_tokenizer_of
    from executor.inputs.prompt import PromptError, check_chat_template
    from planner.model_spec import load_model_spec

    load_model_spec(str(args.model_path))  # a GGUF's header (architecture, truncation) before its tokenizer
    try:
        tokenizer = load_tokenizer_of(args.model_path)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    if tokenizer is None and (args.chat or args.prompt is not None or args.stop):
        raise UserError(f"{args.model_path} has no tokenizer files: use --prompt-ids, without --chat or --stop")
    if args.chat:
        try:
            check_chat_template(tokenizer, str(args.model_path))
        except PromptError as exc:
            raise UserError(str(exc)) from None
    return tokenizer


def _prompt_before_plan(args, tokenizer):
    """Token ids of --prompt-ids / --prompt (checked against the vocabulary), or None for a random prompt."""
    from executor.inputs.prompt import PromptError, prompt_ids_from_file, prompt_ids_from_text
    from planner.model_spec import load_model_spec

    if args.prompt_ids is None and args.prompt is None:
        if args.chat:
            raise UserError("--chat needs --prompt (the text of the user message)")
        return None
    source = str(args.model_path) if args.model_path is not None else args.model
    vocab = load_model_spec(source).vocab_size
    try:
        if args.prompt_ids is not None:
            if args.chat:
                raise UserError("--chat applies to --prompt text, not to --prompt-ids")
            return prompt_ids_from_file(args.prompt_ids, vocab)
        return prompt_ids_from_text(args.prompt, tokenizer, vocab, chat=args.chat, system=args.system,
                                    source=source)
    except PromptError as exc:
        raise UserError(str(exc)) from None


def _check_hardware(plan, device: str, strict: bool, quiet: bool = False) -> list[str]:
    import torch

    from executor.faults import hardware_mismatch

    if device != "cuda" or not hasattr(plan, "hardware"):
        return []
    props = torch.cuda.get_device_properties(0)
    text = hardware_mismatch(plan.hardware.gpu_name, plan.hardware.gpu_mem_bytes, props.name, props.total_memory)
    if text is None:
        return []
    if strict:
        raise UserError(f"{text} (refused: --strict)")
    say(f"headplan run: warning: {text}", quiet)
    return [text]


def _apply_budget(plan, stages) -> dict:
    """Cap each stage's GPU at the plan's per-GPU budget (the same fraction on each: identical GPUs)."""
    if stages[0].device.type != "cuda" or not hasattr(plan, "memory"):
        return {}
    from executor.runtime.gpu_memory import apply_gpu_budget

    budget = plan.memory.gpu_budget_bytes
    fractions = [apply_gpu_budget(budget, plan.hardware.runtime_overhead_bytes, s.device) for s in stages]
    return {"gpu_budget_bytes": budget, "gpu_memory_fraction": fractions[0]}


def _load_model(args, spec, dtype_name: str, device: str, stages, tokenizer=None):
    from executor.inputs.model_loader import build_random, load_checkpoint, torch_dtype

    try:
        if args.model_path is not None:
            return load_checkpoint(args.model_path, dtype=torch_dtype(dtype_name), device=device, stages=stages,
                                   tokenizer=tokenizer)
        return build_random(spec, dtype=torch_dtype(dtype_name), device=device, seed=args.seed, stages=stages)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _progress(plan, input_ids, disabled: bool, tail=None):
    """A tqdm bar counted in predicted seconds (ETA from the plan), else in chunks; returns (bar, callback).
    ``tail`` (generation/tail.py TailSplit, a timing probe): the bar counts the chunks run only (lead-in and timed)."""
    from tqdm import tqdm

    predicted = list(getattr(getattr(plan, "predicted", None), "chunk_s", []) or [])
    chunks = -(-input_ids.shape[1] // plan.chunk_size)
    if tail is not None:
        predicted = predicted[-tail.run_chunks:] if len(predicted) == chunks else []
        chunks = tail.run_chunks
    if len(predicted) == chunks and sum(predicted) > 0:
        bar = tqdm(total=sum(predicted), unit="plan-s", desc="prefill", file=sys.stderr, disable=disabled,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} planned s "
                              "[{elapsed}<{remaining}]")
        return bar, lambda index: bar.update(predicted[index])
    bar = tqdm(total=chunks, unit="chunk", desc="prefill", file=sys.stderr, disable=disabled)
    return bar, lambda index: bar.update(1)


def _run_and_report(args, loaded, plan, input_ids, new_tokens, stages, warnings, memory_extra, answer) -> int:
    from executor.api import run_plan
    from executor.faults import RunFault
    from executor.generation.tail import tail_split
    from executor.kv.host_store import HostMemoryError
    from executor.report.assemble import ReportContext
    from executor.settings import RunOptions

    tail_chunks = getattr(args, "tail_chunks", None)
    bar, on_chunk = _progress(plan, input_ids, args.no_progress,
                              tail_split(input_ids.shape[1], plan.chunk_size, tail_chunks))
    stream = make_token_stream(answer, loaded, stages[0].device, plan, input_ids.shape[1] + new_tokens)
    context = ReportContext(model_name=loaded.spec.name, memory_extra=memory_extra, warnings=warnings)
    try:
        host_bytes = _stated_host_bytes(args, plan)
        options = RunOptions(trace=args.trace, on_chunk=on_chunk, host_available_bytes=host_bytes,
                             sampling=answer.sampling, token_stream=stream,
                             share_rebalancing=_share_rebalancing(args, plan),
                             **kv_flags.run_options(args, loaded, plan, host_bytes))
        result = run_plan(loaded.model, plan, input_ids, new_tokens=new_tokens, device=stages[0].device,
                          options=options, verify=args.verify, tail_chunks=tail_chunks, stages=stages,
                          context=context)
    except (HostMemoryError, *kv_flags.kv_errors()) as exc:
        bar.close()
        raise UserError(str(exc)) from None
    except RunFault as fault:
        bar.close()
        path = run_checks.write_run_outputs(fault.report, args.out)
        print(f"headplan run: {fault} (partial report: {path})", file=sys.stderr)
        return fault.exit_code
    bar.close()
    if stream is not None and stream.streamer is not None:
        print(flush=True)  # the answer's last line
    result.report.generated_text = stream.text if stream is not None and stream.streamer is not None else None
    result.report.sampling = answer.describe()
    found_by_run = result.report.warnings[len(warnings):]    # e.g. a CPU share slower than planned
    path = run_checks.write_run_outputs(result.report, args.out,
                                        result.measurement.trace_events if args.trace else None)
    _summary(result.report, path, args.quiet)
    for text in found_by_run:
        say(f"headplan run: warning: {text}", args.quiet)
    kv_flags.summary_line(result.report, args.quiet)
    return 0


def _stated_host_bytes(args, plan):
    """--host-mem, when the user gave it, replaces MemAvailable as the host RAM check (a VM whose memory grows
    as it is used reports too little up front)."""
    if getattr(args, "host_mem", None) is None or not hasattr(plan, "memory"):
        return None
    return plan.memory.host_budget_bytes


def _summary(report, path, quiet: bool = False) -> None:
    """Timings against the plan and the report path, on stderr (stdout carries the answer)."""
    m, p = report.measured, report.predicted
    line = "prefill" + (f" (last {report.tail.chunks} of {report.tail.total_chunks} chunks)" if report.tail else "")
    line += f" {m.prefill_s:.3f} s" if m.prefill_s is not None else " -"
    if p.prefill_s:
        line += f" (predicted {p.prefill_s:.3f} s)"
    if m.decode_s_per_token is not None:
        line += f", decode {m.decode_s_per_token * 1000:.1f} ms/token"
        if p.decode_s_per_token:
            line += f" (predicted {p.decode_s_per_token * 1000:.1f})"
    if report.stop_reason is not None:
        line += f", {len(report.generated_token_ids)} tokens generated (stopped: {report.stop_reason})"
    if report.verify:
        line += f", verify {report.verify}"
    say(line, quiet)
    for g in report.gpus:
        say(f"  {g.device}: layers {g.first_layer}-{g.first_layer + g.num_layers - 1}, prefill busy "
            f"{g.measured_prefill_busy_s or 0:.3f} s, idle {g.measured_idle_fraction or 0:.0%}, peak "
            f"{(g.measured_gpu_peak_bytes or 0) / 2**30:.2f} GiB", quiet)
    say(f"report: {path}", quiet)


def _share_rebalancing(args, plan):
    """--rebalance-cpu-share: the executor's hook choosing F again from the run's kernel rate (None: not asked)."""
    if not getattr(args, "rebalance_cpu_share", False):
        return None
    from executor.settings import ShareRebalancing
    from planner.share_rebalance import REBALANCE_AFTER_TOKENS, rebalanced_share

    return ShareRebalancing(choose=lambda measured: rebalanced_share(plan, measured),
                            after_tokens=REBALANCE_AFTER_TOKENS)


def run_questions(args, tokenizer, answer, device) -> int:
    """headplan run --prompt DOC --questions FILE: the document prefilled once, each question answered after it."""
    from executor.api import settings_from_plan
    from executor.generation.document import DocumentEngine
    from executor.report.questions import write_questions_report
    from headplan import ask

    document = ask.document_for_questions(args, tokenizer)
    questions = ask.read_questions(args.questions)
    doc_ids, question_ids = ask.tokenized(tokenizer, document, questions, chat=args.chat, system=args.system)
    context = doc_ids.shape[1] + max(q.shape[1] for q in question_ids)
    new_tokens = args.new_tokens if args.new_tokens is not None else 64
    if args.plan is None:
        args.context, args.decode_tokens = str(context), str(new_tokens)
    plan = _resolve_plan(args)
    if plan.context_tokens < context:
        raise UserError(f"the document and the longest question take {context} tokens but the plan is for "
                        f"{plan.context_tokens}: plan again for the longer context")
    stages = _stages(plan, device, args)
    if len(stages) > 1:
        raise UserError("questions over one document run on one GPU (--gpus 1)")
    warnings = _check_hardware(plan, device, args.strict, args.quiet) + run_checks.plan_warnings(plan, args.quiet)
    run_checks.check_host_ram_early(plan, _stated_host_bytes(args, plan))
    _apply_budget(plan, stages)
    loaded = _load_model(args, plan.model, plan.dtype, device, stages, tokenizer)
    settings = settings_from_plan(plan, new_tokens, prompt_tokens=context)
    with DocumentEngine(loaded.model, settings, device=stages[0].device, stages=stages,
                        host_available_bytes=_stated_host_bytes(args, plan)) as engine:
        seconds = engine.prefill_document(doc_ids)
        say(f"headplan run: document of {doc_ids.shape[1]} tokens prefilled in {seconds:.2f} s", args.quiet)
        figures = ask.answer_all(engine, tokenizer, questions, question_ids, answer=answer, loaded=loaded,
                                 new_tokens=new_tokens, quiet=args.quiet)
        report = ask.questions_report(engine, loaded, plan, figures, answer, warnings)
    path = write_questions_report(report, args.out)
    say(f"report: {path}", args.quiet)
    return 0
