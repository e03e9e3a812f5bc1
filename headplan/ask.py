"""Many questions over one prefilled document: ``headplan run --prompt DOC --questions FILE`` and ``headplan chat``.

The document (the --prompt text) is tokenized once and prefilled once; each question is tokenized apart and joined
after it (inside the chat template with --chat: executor/inputs/prompt.py document_ids / question_ids), so the
document's tokens never change with the question, and each answer starts again from the document
(executor/generation/document.py). Answers stream to stdout; the report (report.json, report.md) lists each
question with its answer and its time. Leaves out: conversations that accumulate turns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from headplan.errors import UserError


def document_for_questions(args, tokenizer) -> str:
    """The --prompt document's text for questions over it (--questions, headplan chat), after the checks: a
    tokenizer, and no flag that needs a single one-shot run."""
    from executor.inputs.prompt import PromptError, read_prompt_text

    if args.prompt is None or tokenizer is None:
        raise UserError("questions need --prompt (the document) and --model-path (a model with a tokenizer)")
    refused = [flag for flag, value in (("--load-kv", getattr(args, "load_kv", None)),
                                        ("--save-kv", getattr(args, "save_kv", None)),
                                        ("--tail-chunks", getattr(args, "tail_chunks", None)),
                                        ("--rebalance-cpu-share", getattr(args, "rebalance_cpu_share", False)),
                                        ("--verify", getattr(args, "verify", False))) if value]
    if refused:
        raise UserError(f"{refused[0]} is not supported with questions over one document")
    try:
        document = read_prompt_text(args.prompt)
    except PromptError as exc:
        raise UserError(str(exc)) from None
    return document


def read_questions(path: Path) -> list[str]:
    """A JSON list of non-empty strings."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read --questions {path}: {exc}") from None
    if not isinstance(data, list) or not data or not all(isinstance(q, str) and q.strip() for q in data):
        raise UserError(f"--questions {path} must hold a JSON list of non-empty strings")
    return data


def tokenized(tokenizer, document: str, questions: list[str], *, chat: bool, system):
    """(document ids [1, n_doc], [question ids [1, n_q], ...])."""
    from executor.inputs.prompt import PromptError, document_ids, question_ids

    try:
        doc = document_ids(tokenizer, document, chat=chat, system=system)
        return doc, [question_ids(tokenizer, q, document=document, chat=chat, system=system) for q in questions]
    except PromptError as exc:
        raise UserError(str(exc)) from None


def answer_all(engine, tokenizer, questions: list[str], ids: list, *, answer, loaded, new_tokens: int,
               quiet: bool, out=sys.stdout) -> list:
    """Each question answered after the document, its answer streamed to ``out``; QuestionFigures per question."""
    from executor.generation.output import TokenStream
    from executor.report.questions import QuestionFigures

    figures = []
    for question, question_ids in zip(questions, ids):
        print(f"Q: {question.strip()}", file=out, flush=True)
        out.write("A: ")
        stream = TokenStream(device=engine.device, capacity_tokens=engine.settings.capacity_tokens,
                             eos_token_ids=() if answer.ignore_eos else loaded.eos_token_ids,
                             ignore_eos=answer.ignore_eos, tokenizer=tokenizer, stop_strings=answer.stop_strings,
                             file=out)
        result = engine.answer(question_ids, new_tokens=new_tokens, stream=stream, sampling=answer.sampling)
        print("\n", file=out, flush=True)
        if not quiet:
            print(f"headplan: {len(result.token_ids)} tokens in {result.seconds:.2f} s ({result.stop_reason})",
                  file=sys.stderr)
        figures.append(QuestionFigures(question=question, answer=result.text, generated_token_ids=result.token_ids,
                                       stop_reason=result.stop_reason, prompt_tokens=result.prompt_tokens,
                                       seconds=result.seconds))
    return figures


def questions_report(engine, loaded, plan, figures, answer, warnings):
    import dataclasses

    import torch
    import transformers

    from executor.report.questions import QuestionsReport

    return QuestionsReport(model=loaded.spec.name, device=str(engine.device),
                           dtype=str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
                           plan_hardware=plan.hardware.name, settings=dataclasses.asdict(engine.settings),
                           sampling=answer.describe(), document_tokens=engine.document_tokens,
                           document_prefill_s=engine.document_prefill_s, predicted_prefill_s=plan.predicted.prefill_s,
                           questions=figures, warnings=list(warnings),
                           versions={"torch": torch.__version__, "transformers": transformers.__version__})
