"""The report of many questions over one prefilled document (headplan run --questions, headplan chat):
report.json (schema_version 1) and report.md, one entry per question with its answer and its time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from executor.report.files import write_json_and_markdown

QUESTIONS_SCHEMA_VERSION = 1


class QuestionFigures(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    answer: str
    generated_token_ids: list[int] = Field(default_factory=list)
    stop_reason: Optional[str] = None
    prompt_tokens: int = Field(description="the question's tokens, prefilled after the document")
    seconds: float = Field(description="wall time: the question's prefill, its decode and the read-back")


class QuestionsReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = QUESTIONS_SCHEMA_VERSION
    kind: str = "questions"
    model: str
    device: str
    dtype: str
    plan_hardware: Optional[str] = None
    settings: dict[str, Any]
    sampling: dict[str, Any] = Field(default_factory=dict)
    document_tokens: int
    document_prefill_s: float = Field(description="wall time of the document's prefill, done once")
    predicted_prefill_s: Optional[float] = Field(None, description="the plan's prefill of its whole context "
                                                 "(document + the longest question)")
    questions: list[QuestionFigures] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)


def render_questions(report: QuestionsReport) -> str:
    lines = [f"# headplan: {len(report.questions)} questions over one document of {report.document_tokens} tokens",
             "", f"Model {report.model} on {report.device} ({report.dtype}); the document prefilled once in "
             f"{report.document_prefill_s:.2f} s (the plan's prefill of document + longest question: "
             + (f"{report.predicted_prefill_s:.2f} s" if report.predicted_prefill_s else "-") + ").", ""]
    lines += [f"- warning: {w}" for w in report.warnings] + ([""] if report.warnings else [])
    for index, q in enumerate(report.questions, 1):
        lines += [f"## {index}. {q.question}", "", "\n".join("> " + line for line in (q.answer or "(empty)").splitlines()),
                  "", f"{q.prompt_tokens} question tokens, {len(q.generated_token_ids)} generated, stopped by "
                  f"{q.stop_reason}, {q.seconds:.2f} s.", ""]
    return "\n".join(lines)


def write_questions_report(report: QuestionsReport, out_dir: Path) -> Path:
    return write_json_and_markdown(report, render_questions(report), out_dir)
