"""The saved-context flags of headplan run (--save-kv DIR, --load-kv DIR) and headplan plan (--load-kv DIR), and
the checks that refuse them (one line, exit 2) before the expensive part: a folder that already holds a context
(nothing is overwritten), --load-kv with --tail-chunks, too little free disk for the save (before the run, with the
figures), a context that is corrupt, truncated, of another format, model, weights or dtype, or too little host RAM
to load it. Formats and checks: executor/kv/ (context_manifest.py, context_save.py, context_load.py). Heavy imports
inside the functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headplan.errors import UserError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-kv", type=Path, default=None, metavar="DIR",
                        help="after the run, save the prompt's KV, token ids and a manifest in DIR (a new folder "
                        "or one without a saved context)")
    parser.add_argument("--load-kv", type=Path, default=None, metavar="DIR",
                        help="load the prompt's longest common token prefix with the context saved in DIR and "
                        "prefill only the rest (the last prompt token is always computed again)")
    parser.add_argument("--kv-segment-tokens", type=int, default=None, metavar="S",
                        help="tokens per segment file of --save-kv (default 4096)")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load-kv", type=Path, default=None, metavar="DIR",
                        help="predict loading the context saved in DIR (as a prefix of the planned context) "
                        "against the prefill it replaces")


def kv_errors() -> tuple[type, ...]:
    """The exceptions of a save or load that are the user's input, not a bug: shown as one line, exit 2."""
    from executor.kv.context_load import ContextMismatchError
    from executor.kv.context_manifest import ContextFormatError
    from executor.kv.context_save import DiskSpaceError

    return ContextFormatError, ContextMismatchError, DiskSpaceError


def check_early(args) -> None:
    """Before anything loads: --load-kv not with --tail-chunks; the --load-kv manifest readable; the --save-kv
    folder free of a saved context."""
    from executor.kv.context_manifest import read_manifest
    from executor.kv.context_save import check_save_target

    load, save = getattr(args, "load_kv", None), getattr(args, "save_kv", None)
    if load is not None and getattr(args, "tail_chunks", None) is not None:
        raise UserError("--load-kv needs a real prefill: --tail-chunks fills the earlier chunks' KV with a pattern")
    if save is not None and getattr(args, "tail_chunks", None) is not None:
        raise UserError("--save-kv needs a real prefill: --tail-chunks fills the earlier chunks' KV with a pattern")
    if getattr(args, "kv_segment_tokens", None) is not None and args.kv_segment_tokens < 1:
        raise UserError(f"--kv-segment-tokens must be at least 1, got {args.kv_segment_tokens}")
    try:
        if load is not None:
            read_manifest(load)
        if save is not None:
            check_save_target(save)
    except kv_errors() as exc:
        raise UserError(str(exc)) from None


def check_disk_for_save(args, plan, prompt_tokens: int, free_bytes=None) -> None:
    """--save-kv: UserError unless DIR's file system has room for the prompt's KV (before the run)."""
    if getattr(args, "save_kv", None) is None:
        return
    from executor.kv.context_manifest import KVFileLayout, save_bytes_needed
    from executor.kv.context_save import check_free_disk

    spec = plan.model
    layout = KVFileLayout(num_layers=spec.num_hidden_layers, kv_heads=spec.num_key_value_heads,
                          head_dim=spec.head_dim)
    try:
        check_free_disk(args.save_kv, save_bytes_needed(prompt_tokens, layout, DTYPE_BYTES[plan.dtype]), free_bytes)
    except kv_errors() as exc:
        raise UserError(str(exc)) from None


def run_options(args, loaded, plan, host_available_bytes=None) -> dict:
    """RunOptions fields (past_loader, kv_saver) for the flags given; the loader's checks (fingerprint, dtype,
    shapes, token ids, host RAM) run here, before the run."""
    load, save = getattr(args, "load_kv", None), getattr(args, "save_kv", None)
    if load is None and save is None:
        return {}
    from executor.kv.context_load import ContextLoader
    from executor.kv.context_save import DEFAULT_SEGMENT_TOKENS, ContextSaver
    from executor.kv.fingerprint import model_fingerprint
    from executor.runtime.host_memory import host_available_bytes as measured_available

    model = loaded.model
    fingerprint = model_fingerprint(model, getattr(loaded, "tokenizer", None))
    config, dtype = model.config, next(model.parameters()).dtype
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    progress = not getattr(args, "no_progress", False)
    out = {}
    try:
        if load is not None:
            loader = ContextLoader(load, fingerprint=fingerprint, dtype=dtype, num_layers=config.num_hidden_layers,
                                   kv_heads=config.num_key_value_heads, head_dim=head_dim, progress=progress)
            available = host_available_bytes if host_available_bytes is not None else measured_available()
            loader.check_host_ram(getattr(getattr(plan, "memory", None), "host_kv_bytes", 0), available)
            out["past_loader"] = loader
        if save is not None:
            out["kv_saver"] = ContextSaver(save, fingerprint, segment_tokens=getattr(args, "kv_segment_tokens", None)
                                           or DEFAULT_SEGMENT_TOKENS, progress=progress)
    except kv_errors() as exc:
        raise UserError(str(exc)) from None
    return out


def plan_with_load(plan, directory: Path):
    """headplan plan --load-kv DIR: the plan with its kv_load prediction and a note (the saved context taken as a
    prefix of the planned context; the last token is always prefilled again)."""
    from executor.kv.context_manifest import read_manifest
    from planner.kv_reuse import predict_context_load

    try:
        manifest = read_manifest(directory)
    except kv_errors() as exc:
        raise UserError(str(exc)) from None
    if manifest.dtype != plan.dtype:
        raise UserError(f"--load-kv {directory}: saved in {manifest.dtype}, the plan is for {plan.dtype}")
    spec = plan.model
    shape = (spec.num_hidden_layers, spec.num_key_value_heads, spec.head_dim)
    saved = (manifest.layout.num_layers, manifest.layout.kv_heads, manifest.layout.head_dim)
    if saved != shape:
        raise UserError(f"--load-kv {directory}: KV of (layers, KV heads, head dim) {saved}, the plan's model has "
                        f"{shape}")
    reused = min(manifest.token_count, plan.context_tokens - 1)
    prediction = predict_context_load(
        reused_tokens=reused, load_bytes=manifest.bytes_for(reused),
        disk_read_bytes_per_s=plan.hardware.disk_read_bytes_per_s, chunk_s=plan.predicted.chunk_s,
        chunk_size=plan.chunk_size, context_tokens=plan.context_tokens, prefill_s=plan.predicted.prefill_s)
    note = f"--load-kv {directory}: {prediction.note or 'see kv_load'}"
    return plan.model_copy(update={"kv_load": prediction, "notes": [*plan.notes, note]})


def summary_line(report, quiet: bool = False) -> None:
    """One stderr line with the kv block's figures (after the run's summary; stdout carries the answer)."""
    kv = getattr(report, "kv", None)
    if kv is None:
        return
    parts = []
    if kv.path:
        parts.append(f"loaded {kv.reused_tokens} tokens ({kv.loaded_bytes / 2**30:.2f} GiB) in {kv.load_s:.2f} s, "
                     f"prefilled {kv.prefilled_tokens}")
    if kv.save_path:
        parts.append(f"saved {kv.saved_bytes / 2**30:.2f} GiB in {kv.save_s:.2f} s to {kv.save_path}")
    if not quiet:
        print("kv: " + "; ".join(parts), file=sys.stderr)
