"""headplan plan: choose chunk size, head groups, resident heads and attention backend; predict memory and time.

    headplan plan                                   Llama-3-8B, 128K context, this machine's profile (else the
                                                    catalog's for the detected GPU, else the measured H100's)
    headplan plan --context 1M --gpu-mem 24GB --hw rtx-4090 --host-mem 200GiB
    headplan plan --model llama-3-70b --context 1M --gpu-mem 24GB --gpus 8 --host-mem 600GiB --hw rtx-4090
                                                    layers split over 8 GPUs (per-GPU budget, shared host RAM)
    headplan plan --max-context --gpu-mem 24GB      longest context per strategy
    headplan plan --sweep 32K:1M --plot sweep.png   one plan per context, table and PNG
    headplan plan --json --out plan.json            the Plan as JSON (stdout and/or file)
    headplan plan --plot roofline.png               (without --sweep) the roofline with the plan's points
Reused by `headplan run`: add_plan_arguments(parser) and plan_from_args(args) -> Plan.
Leaves out: the cost model and solver (planner/), which never import torch; matplotlib only when plotting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from headplan import kv_flags
from headplan.errors import UserError

DESCRIPTION = ("Plan head-wise KV offloading for a model, a context and a GPU: the strategy, chunk size, heads "
               "per group and resident KV heads, with predicted memory and time and why the alternatives lost.")

DEFAULT_MODEL = "llama-3-8b"
DEFAULT_HW = "h100-sxm-measured"
DEFAULT_CONTEXT = "128K"
DEFAULT_DECODE_TOKENS = 16


def _auto_or(parse):
    def parse_knob(text: str):
        if str(text).strip().lower() == "auto":
            return None
        return parse(text)
    return parse_knob


def _whole_number(what: str, minimum: int = 0):
    """A parser of a whole number >= ``minimum`` for option ``what`` (UserError: one line, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).replace("_", ""))
        except ValueError:
            raise UserError(f"{what} must be a whole number, got {text!r}") from None
        if value < minimum:
            bound = "zero or more" if minimum == 0 else f"at least {minimum}"
            raise UserError(f"{what} must be {bound}, got {value}")
        return value
    return parse


def parse_gpus(text) -> int:
    """--gpus: a whole number >= 1 (the upper bound, the model's layer count, is checked by the planner)."""
    return _whole_number("--gpus", minimum=1)(text)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `plan` and `run`: model, hardware, workload, budgets and knobs (kept as text; parsed
    in plan_from_args so that bad values become one-line errors with exit status 2)."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in model name or a config.json / checkpoint folder (default {DEFAULT_MODEL})")
    parser.add_argument("--hw", default=None,
                        help="hardware profile name from the catalog or a profile file (default: this machine's own "
                        "profile from `headplan profile`, else the catalog's measured profile of the detected GPU, "
                        f"else {DEFAULT_HW})")
    parser.add_argument("--context", default=DEFAULT_CONTEXT,
                        help=f"prompt tokens to prefill: 128K = 131072, 4M = 4194304 (default {DEFAULT_CONTEXT})")
    parser.add_argument("--decode-tokens", default=str(DEFAULT_DECODE_TOKENS),
                        help=f"tokens to generate after the prompt (default {DEFAULT_DECODE_TOKENS})")
    parser.add_argument("--gpu-mem", default=None,
                        help="GPU memory budget: 24GB (10^9) or 22GiB (2^30) (default: the card's memory)")
    parser.add_argument("--host-mem", default=None,
                        help="host RAM the pinned KV store may use (default: the profile's host_mem_bytes)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--chunk-size", default="auto", help="prefill chunk in tokens (e.g. 8K) or auto")
    parser.add_argument("--heads-per-group", default="auto", help="KV heads streamed together (a divisor of "
                        "the KV heads) or auto")
    parser.add_argument("--resident-heads", default="auto", help="(layer, KV head) slots kept on the GPU over "
                        "all layers, 0 .. L*H_kv, or auto")
    parser.add_argument("--strategy", default=None,
                        choices=["standard", "chunked", "layer-offload", "head-offload"],
                        help="force one strategy (default: the fastest that fits)")
    parser.add_argument("--gpus", default="1", help="GPUs of the profile (--gpu-mem per GPU, host RAM shared; "
                        "default 1); --parallel says how they split the model")
    parser.add_argument("--parallel", default="auto", choices=["auto", "layers", "heads"],
                        help="several GPUs: 'layers' = a pipeline of contiguous layer stages; 'heads' = tensor "
                        "parallel, each GPU 1/N of every layer's heads and MLP, streaming its own KV heads; "
                        "'auto' (default) = the faster by the plan, its notes say why")
    parser.add_argument("--attention-backend", default="auto", choices=["auto", "flash", "cudnn-split", "flex"],
                        help="prefill attention kernel: flash, or cudnn-split (chunk-vs-past on cuDNN, merged by "
                        "log-sum-exp), or flex (FlexAttention: soft-caps and sliding windows, what Gemma-2 and "
                        "Mistral v0.1 always use); auto = the faster by the hardware profile")
    parser.add_argument("--cpu-share", default="auto",
                        help="share F (0 to 1) of each offloaded head's past that decode attends on the CPU straight "
                        "from host RAM while the GPU streams the rest; auto = the planner's choice from the "
                        "profile's CPU-attention figures (0 without them)")
    parser.add_argument("--past-cut", default="auto", choices=["auto", "binary", "whole"],
                        help="cudnn-split prefill: cut the past's 2K-token blocks into one cuDNN call per set bit of "
                        "s // 2K ('binary', few key lengths) or attend them in one call per chunk ('whole', one key "
                        "length per chunk, its cuDNN graphs built in the warm-up); auto = the faster by the plan")
    parser.add_argument("--compile-layers", default=None, action=argparse.BooleanOptionalAction,
                        help="prefill with the decoder layers' RMSNorms and MLPs torch.compile'd (fused elementwise "
                        "ops; the first compile is paid in the warm-up; decode stays eager); default: on where the "
                        "hardware profile measured the compiled path faster")
    parser.add_argument("--no-decode-graphs", action="store_true",
                        help="decode every token eagerly (default: with every KV head resident on one GPU, each "
                        "decode token replays as one CUDA graph, which takes the host's launch time away)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_plan_arguments(parser)
    parser.add_argument("--max-context", action="store_true",
                        help="print the longest context each strategy fits (ignores --context)")
    parser.add_argument("--sweep", default=None,
                        help="contexts to plan: a list 32K,128K,1M or a range 32K:4M (x2) / 32K:256K:+32K")
    parser.add_argument("--plot", default=None, type=Path,
                        help="PNG: with --sweep the sweep plot, otherwise the roofline with the plan's points")
    parser.add_argument("--roofline", default=None, type=Path, help="PNG of the roofline (also with --sweep: "
                        "the first context's plan)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    kv_flags.add_plan_arguments(parser)
    parser.add_argument("--out", default=None, type=Path, help="write the JSON to this file")


def _workload(args: argparse.Namespace) -> dict:
    """Parsed model, hardware and keyword arguments shared by make_plan / max_context / sweep."""
    from hwprofiles.catalog import load_profile
    from planner.model_spec import load_model_spec
    from planner.units import parse_bytes, parse_tokens

    model = load_model_spec(args.model)
    hardware = load_profile(args.hw) if args.hw is not None else _default_hardware(args)
    resident = _auto_or(_whole_number("--resident-heads"))(args.resident_heads)
    group = _auto_or(_whole_number("--heads-per-group"))(args.heads_per_group)
    if group == 0:
        raise UserError("--heads-per-group must be positive")
    return dict(
        model=model, hardware=hardware,
        decode_tokens=_whole_number("--decode-tokens")(args.decode_tokens),
        gpu_mem_bytes=parse_bytes(args.gpu_mem) if args.gpu_mem is not None else None,
        host_mem_bytes=parse_bytes(args.host_mem) if args.host_mem is not None else None,
        dtype=args.dtype, chunk_size=_auto_or(parse_tokens)(args.chunk_size), heads_per_group=group,
        resident_kv_heads=resident, strategy=args.strategy,
    )


def parse_cpu_share(text) -> Optional[float]:
    """--cpu-share: auto (None) or a number in [0, 1] (UserError otherwise)."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--cpu-share must be auto or a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--cpu-share must be between 0 and 1, got {value:g}")
    return value


def _default_hardware(args: argparse.Namespace):
    """The profile for a plan without --hw (hwprofiles/defaults.py); why it was chosen is kept in
    args._hw_reason for the plan's notes."""
    from hwprofiles.defaults import default_profile

    choice = default_profile()
    args._hw_reason = f"hardware profile {choice.profile.name}: {choice.reason}; --hw chooses another"
    return choice.profile


def _with_hw_note(plan, args: argparse.Namespace):
    reason = getattr(args, "_hw_reason", None)
    return plan if reason is None else plan.model_copy(update={"notes": [reason] + list(plan.notes)})


def plan_from_args(args: argparse.Namespace, context_tokens: Optional[int] = None):
    """The Plan for the parsed options of add_plan_arguments (raises UserError/PlanError/... on bad input)."""
    from planner.solver import make_plan
    from planner.units import parse_tokens

    gpus = parse_gpus(getattr(args, "gpus", "1"))
    work = _workload(args)
    model, hardware = work.pop("model"), work.pop("hardware")
    context = context_tokens if context_tokens is not None else parse_tokens(args.context)
    cpu_share = parse_cpu_share(getattr(args, "cpu_share", "auto"))
    if gpus == 1:
        return _with_hw_note(make_plan(model, hardware, context_tokens=context, attention_backend=_backend(args),
                                       decode_graphs=not getattr(args, "no_decode_graphs", False),
                                       cpu_share=cpu_share, **_split_knobs(args), **work), args)
    if cpu_share:
        raise UserError("--cpu-share applies to one GPU; several GPUs stream all their KV")
    return _with_hw_note(_several_gpus_plan(getattr(args, "parallel", "auto") or "auto", model, hardware, gpus=gpus,
                                            context_tokens=context, attention_backend=_backend(args), **work), args)


def _split_knobs(args: argparse.Namespace) -> dict:
    """--past-cut and --compile-layers as make_plan's keywords (None: the planner chooses)."""
    cut = getattr(args, "past_cut", "auto") or "auto"
    return {"past_cut": None if cut == "auto" else cut, "compile_layers": getattr(args, "compile_layers", None)}


def _several_gpus_plan(parallel: str, model, hardware, **kwargs):
    """--parallel layers / heads / auto over N > 1 GPUs (auto: both planned, the faster kept, its notes say
    why: planner/tensor_parallel.py choose_parallel)."""
    from planner.errors import PlanError
    from planner.pipeline import make_pipeline_plan
    from planner.tensor_parallel import choose_parallel, make_tensor_plan

    if parallel == "layers":
        return make_pipeline_plan(model, hardware, **kwargs)
    if parallel == "heads":
        return make_tensor_plan(model, hardware, **kwargs)
    plans, errors = {}, {}
    for name, make in (("layers", make_pipeline_plan), ("heads", make_tensor_plan)):
        try:
            plans[name] = make(model, hardware, **kwargs)
        except PlanError as exc:
            plans[name], errors[name] = None, str(exc)
    return choose_parallel(plans["layers"], plans["heads"], errors.get("layers"), errors.get("heads"))


def _backend(args: argparse.Namespace) -> Optional[str]:
    choice = getattr(args, "attention_backend", "auto")
    return None if choice == "auto" else choice


def _emit(args: argparse.Namespace, data, text: str) -> None:
    if args.out is not None:
        try:
            args.out.write_text(json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(text)
        if args.out is not None:
            print(f"\nwrote {args.out}")


def _check_plot_path(path: Optional[Path]) -> None:
    if path is not None and (path.suffix.lower() != ".png" or not path.parent.resolve().is_dir()):
        raise UserError(f"plot file {path} must end in .png and its folder must exist")


def _max_context(args: argparse.Namespace) -> int:
    from planner.render import render_max_context
    from planner.solver import max_context

    work = _workload(args)
    model, hardware = work.pop("model"), work.pop("hardware")
    result = max_context(model, hardware, **work)
    gpu = work["gpu_mem_bytes"] or hardware.gpu_mem_bytes
    host = work["host_mem_bytes"] or hardware.host_mem_bytes
    data = {"model": model.name, "hardware": hardware.name, "gpu_budget_bytes": gpu, "host_budget_bytes": host,
            "decode_tokens": work["decode_tokens"], "max_context_tokens": result}
    _emit(args, data, render_max_context(model.name, hardware.name, gpu, host, result, model))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from planner.render import render_sweep
    from planner.sweep import sweep
    from planner.units import parse_token_list

    contexts = parse_token_list(args.sweep)
    work = _workload(args)
    model, hardware = work.pop("model"), work.pop("hardware")
    rows, plans = sweep(model, hardware, contexts, attention_backend=_backend(args), **work)
    if args.plot is not None:
        from planner.plots import plot_sweep

        plot_sweep(rows, args.plot, f"{model.name} on {hardware.name}")
    if args.roofline is not None and plans:
        from planner.plots import plot_roofline

        plot_roofline(plans[0], args.roofline)
    text = render_sweep(rows)
    if args.plot is not None:
        text += f"\n\nwrote {args.plot}"
    _emit(args, {"model": model.name, "hardware": hardware.name, "rows": rows}, text)
    return 0 if plans else 2


def main(args: argparse.Namespace) -> int:
    from headplan.run_checks import check_output_file

    _check_plot_path(args.plot)
    _check_plot_path(args.roofline)
    for path, what in ((args.plot, "--plot"), (args.roofline, "--roofline"), (args.out, "--out")):
        check_output_file(path, what)  # before planning: a sweep takes seconds
    if parse_gpus(args.gpus) > 1 and (args.max_context or args.sweep is not None):
        raise UserError("--gpus above 1 plans one context; --max-context and --sweep are single-GPU only")
    if args.max_context:
        return _max_context(args)
    if args.sweep is not None:
        return _sweep(args)
    from planner.render import render_plan

    plan = plan_from_args(args)
    if getattr(args, "load_kv", None) is not None:
        plan = kv_flags.plan_with_load(plan, args.load_kv)
    roofline = args.roofline or args.plot
    if roofline is not None:
        from planner.plots import plot_roofline

        plot_roofline(plan, roofline)
    text = render_plan(plan)
    if roofline is not None:
        text += f"\n\nwrote {roofline}"
    _emit(args, plan.model_dump(mode="json"), text)
    return 0
