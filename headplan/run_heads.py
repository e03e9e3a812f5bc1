"""headplan run for a plan by heads (``--gpus N --parallel heads``, or ``auto`` choosing it): N ranks, one per
GPU (executor/launch/), each holding 1/N of every layer's heads and streaming its own KV heads; rank 0's report
(per rank and total) is written to --out. Refused up front (exit 2): --verify, N GPUs not visible, N not dividing
the heads. Leaves out: the progress bar (the ranks run in other processes).
"""

from __future__ import annotations

import sys

from headplan.errors import UserError


def run_by_heads(args, plan, device: str, prompt_ids) -> int:
    from executor.faults import RunFault
    from executor.kv.host_store import HostMemoryError
    from executor.launch import CheckpointModel, RandomModel, TensorJob, launch_tensor_parallel
    from executor.report.assemble import ReportContext
    from executor.report.files import write_report
    from executor.report.plots import write_plots
    from headplan.cmd_run import _check_hardware, _stated_host_bytes, _summary
    from planner.tensor_parallel import check_head_split

    _check_request(args, plan, device)
    try:
        check_head_split(plan.model.num_attention_heads, plan.model.num_key_value_heads, plan.gpus)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    new_tokens = args.new_tokens if args.new_tokens is not None else max(plan.decode_tokens, 1)
    if new_tokens < 1:
        raise UserError(f"--new-tokens must be at least 1, got {new_tokens}")
    warnings = _check_hardware(plan, device, args.strict)
    if prompt_ids is None:
        from executor.inputs.prompt import random_prompt_ids

        prompt_ids = random_prompt_ids(plan.context_tokens, plan.model.vocab_size, args.seed)
    model = (CheckpointModel(args.model_path, plan.dtype) if args.model_path is not None
             else RandomModel(plan.model, plan.dtype, args.seed))
    cuda = device == "cuda"
    job = TensorJob(ranks=plan.gpus, device_type=device, plan=plan, model=model, input_ids=prompt_ids,
                    new_tokens=new_tokens, tail_chunks=getattr(args, "tail_chunks", None), trace=args.trace,
                    host_available_bytes=_stated_host_bytes(args, plan),
                    gpu_budget_bytes=plan.memory.gpu_budget_bytes if cuda else None,
                    runtime_overhead_bytes=plan.hardware.runtime_overhead_bytes,
                    context=ReportContext(model_name=plan.model.name, warnings=warnings,
                                          memory_extra={"gpu_budget_bytes": plan.memory.gpu_budget_bytes}
                                          if cuda else {}))
    try:
        result = launch_tensor_parallel(job)
    except HostMemoryError as exc:
        raise UserError(str(exc)) from None
    except RunFault as fault:
        if fault.report is not None:
            path = write_report(fault.report, args.out)
            write_plots(fault.report, args.out)
            print(f"headplan run: {fault} (partial report: {path})", file=sys.stderr)
        else:
            print(f"headplan run: {fault}", file=sys.stderr)
        return fault.exit_code
    if result is None:  # a rank other than 0 under torchrun: rank 0 writes the report
        return 0
    path = write_report(result.report, args.out)
    write_plots(result.report, args.out)
    if args.trace:
        from executor.report.plots import write_trace

        write_trace(result.measurement.trace_events, args.out)
    _summary(result.report, path)
    return 0


def _check_request(args, plan, device: str) -> None:
    """UserError before anything starts: --verify, a --plan for another --gpus / --parallel, too few GPUs."""
    from headplan.cmd_plan import parse_gpus

    if args.verify:
        raise UserError("--verify compares with the unsharded standard forward on one device: not with "
                        "--parallel heads (tests/cpu/test_tensor_parallel.py checks the sharded run's exactness)")
    asked = str(getattr(args, "gpus", "1"))
    if args.plan is not None and asked != "1" and parse_gpus(asked) != plan.gpus:
        raise UserError(f"--gpus {asked} but {args.plan} was planned for {plan.gpus} GPU(s)")
    if args.plan is not None and getattr(args, "parallel", "auto") == "layers":
        raise UserError(f"--parallel layers but {args.plan} splits by heads: plan again with --parallel layers")
    if device == "cuda":
        import torch

        visible = torch.cuda.device_count()
        if plan.gpus > visible:
            raise UserError(f"--gpus {plan.gpus} by heads but {visible} CUDA GPU(s) are visible")
