"""headplan chat: prefill a document once (--prompt FILE), then answer questions typed at a prompt, one after another.

Each question starts again from the document: the conversation does not accumulate (the rows after the document
are overwritten by the next question; executor/generation/document.py). Questions are read from standard input, one
per line (a "> " prompt on stderr when it is a terminal); an empty line or end of input ends the chat. Every option
of ``headplan run`` that applies (model, plan, sampling, stop, --chat) works the same. Leaves out: multi-turn
memory, editing a question.
"""

from __future__ import annotations

import argparse
import sys

from headplan.errors import UserError

DESCRIPTION = ("Prefill a document once (--prompt) and answer questions typed at a prompt, each from the document "
               "again (the conversation does not accumulate).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from headplan.cmd_run import add_arguments as add_run_arguments

    add_run_arguments(parser)
    parser.add_argument("--max-question-tokens", type=int, default=512,
                        help="room kept after the document for a question (default 512 tokens)")


def main(args) -> int:
    import os

    from executor.api import settings_from_plan
    from executor.generation.document import DocumentEngine
    from headplan import ask, cmd_run
    from headplan.run_answer import answer_options, say

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", cmd_run.ALLOCATOR_CONFIG)
    if args.max_question_tokens < 1:
        raise UserError(f"--max-question-tokens must be at least 1, got {args.max_question_tokens}")
    answer = answer_options(args)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible")
    tokenizer = cmd_run._tokenizer_before_weights(args)
    document = ask.document_for_questions(args, tokenizer)
    doc_ids, _ = ask.tokenized(tokenizer, document, ["?"], chat=args.chat, system=args.system)
    new_tokens = args.new_tokens if args.new_tokens is not None else 256
    args.context = str(doc_ids.shape[1] + args.max_question_tokens)
    args.decode_tokens = str(new_tokens)
    plan = cmd_run._resolve_plan(args)
    stages = cmd_run._stages(plan, device, args)
    if len(stages) > 1:
        raise UserError("headplan chat runs on one GPU (--gpus 1)")
    cmd_run._check_hardware(plan, device, args.strict, args.quiet)
    cmd_run._apply_budget(plan, stages)
    loaded = cmd_run._load_model(args, plan.model, plan.dtype, device, stages, tokenizer)
    settings = settings_from_plan(plan, new_tokens, prompt_tokens=int(args.context))
    with DocumentEngine(loaded.model, settings, device=stages[0].device, stages=stages) as engine:
        seconds = engine.prefill_document(doc_ids)
        say(f"headplan chat: document of {doc_ids.shape[1]} tokens prefilled in {seconds:.2f} s; ask away "
            "(an empty line ends)", args.quiet)
        for line in _questions(sys.stdin):
            _, ids = ask.tokenized(tokenizer, document, [line], chat=args.chat, system=args.system)
            if ids[0].shape[1] > args.max_question_tokens:
                say(f"headplan chat: that question has {ids[0].shape[1]} tokens, more than "
                    f"--max-question-tokens {args.max_question_tokens}", False)
                continue
            ask.answer_all(engine, tokenizer, [line], ids, answer=answer, loaded=loaded, new_tokens=new_tokens,
                           quiet=args.quiet)
    return 0


def _questions(stream):
    """Lines typed (or piped) until an empty line or the end of input."""
    while True:
        if stream.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line.strip():
            return
        yield line.strip()
