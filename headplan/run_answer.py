"""The answer side of ``headplan run`` (and ``headplan chat``): sampling and stop options, the token stream that
prints the answer to stdout, and stderr for everything else.

    --temperature T (0: greedy)  --top-p P  --top-k K  --repetition-penalty R  --seed S    transformers' processors
    --stop TEXT (repeatable)  --ignore-eos                                                  when the answer ends
    --chat  --system TEXT                                                                   the chat template
Every value is checked when the options are read (one line, exit 2), before anything loads.
Leaves out: the choice of the token (executor/generation/sampling.py), the stream (executor/generation/output.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from headplan.errors import UserError


def add_answer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat", action="store_true", help="wrap the prompt text as one user message in the "
                        "tokenizer's chat template, with the generation prompt added")
    parser.add_argument("--system", default=None, help="with --chat: a system message before the user message")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep tokens up to this "
                        "cumulative probability (default 1: off)")
    parser.add_argument("--top-k", type=int, default=None, help="keep the K most likely tokens (default: off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats "
                        "(default 1: off)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end the answer before this text (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token "
                        "(benchmarks: a fixed number of tokens)")


@dataclass(frozen=True)
class AnswerOptions:
    sampling: object
    """executor.settings.SamplingOptions"""
    stop_strings: tuple[str, ...]
    ignore_eos: bool
    quiet: bool

    def describe(self) -> dict:
        """The report's ``sampling`` block."""
        s = self.sampling
        return {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                "repetition_penalty": s.repetition_penalty, "seed": s.seed, "stop": list(self.stop_strings),
                "ignore_eos": self.ignore_eos}


def answer_options(args: argparse.Namespace) -> AnswerOptions:
    """The sampling and stop options of ``args``; UserError for a bad value."""
    from executor.settings import SamplingOptions

    if args.system is not None and not args.chat:
        raise UserError("--system needs --chat")
    if any(not text for text in args.stop):
        raise UserError("--stop needs a non-empty text")
    try:
        sampling = SamplingOptions(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                   repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as exc:  # "top_p must be ..." -> "--top-p must be ..."
        field, rest = str(exc).split(" ", 1)
        raise UserError(f"--{field.replace('_', '-')} {rest}") from None
    return AnswerOptions(sampling=sampling, stop_strings=tuple(args.stop), ignore_eos=args.ignore_eos,
                         quiet=getattr(args, "quiet", False))


def make_token_stream(answer: AnswerOptions, loaded, device, plan, capacity_tokens: int):
    """The TokenStream that prints the answer to stdout (with a tokenizer) and stops at the checkpoint's
    end-of-sequence ids and the --stop strings; None for random weights with no stop to watch (the decode then
    runs every token with no read-back at all)."""
    from executor.generation.output import TokenStream

    eos = () if answer.ignore_eos else loaded.eos_token_ids
    if loaded.tokenizer is None and not eos:
        return None
    return TokenStream(device=device, capacity_tokens=capacity_tokens, eos_token_ids=eos,
                       ignore_eos=answer.ignore_eos, tokenizer=loaded.tokenizer, stop_strings=answer.stop_strings,
                       file=sys.stdout)


def say(line: str, quiet: bool = False) -> None:
    """A line for the person at the terminal, on stderr (stdout carries the answer); nothing with --quiet."""
    if not quiet:
        print(line, file=sys.stderr, flush=True)
