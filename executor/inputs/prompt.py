"""The prompt of a run as token ids [1, n] (int64, on CPU): from a JSON file of ids, from text through the
checkpoint's tokenizer (as it is, or as one user message in the tokenizer's chat template with the generation
prompt added, and an optional system message), or random ids of a given length from a seed. Leaves out: batches,
conversations of several turns (headplan chat builds those from the same pieces)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from hwprofiles.jsonfile import read_json

import torch


class PromptError(ValueError):
    """A prompt that cannot be read or does not fit the model."""


def prompt_ids_from_file(path: str | Path, vocab_size: int) -> torch.Tensor:
    """A JSON list of token ids -> [1, n]."""
    data = read_json(path, "prompt ids", PromptError)
    if isinstance(data, list) and data and isinstance(data[0], list):
        data = data[0]
    if not isinstance(data, list) or not data or not all(isinstance(x, int) and not isinstance(x, bool) for x in data):
        raise PromptError(f"{path} must hold a non-empty JSON list of integer token ids")
    return _checked(torch.tensor([data], dtype=torch.long), vocab_size)


def read_prompt_text(path: str | Path) -> str:
    """The text of a prompt file ("-": standard input); PromptError when it cannot be read or is empty."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read prompt {path}: {exc}") from None
    if not text.strip():
        raise PromptError(f"the prompt {'on standard input' if str(path) == '-' else path} is empty")
    return text


def check_chat_template(tokenizer: Optional[Any], source: str) -> None:
    """PromptError unless ``tokenizer`` has a chat template (--chat needs one)."""
    if tokenizer is None:
        raise PromptError("--chat needs a tokenizer: pass --model-path to a checkpoint or a .gguf file")
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(f"--chat: the tokenizer of {source} has no chat template; run without --chat")


def chat_messages(text: str, system: Optional[str] = None) -> list[dict[str, str]]:
    """The whole prompt as one user message, after a system message when given. Surrounding whitespace is not
    part of a message (a file's final newline would otherwise sit before the template's end-of-turn token)."""
    messages = [{"role": "system", "content": system.strip()}] if system else []
    return messages + [{"role": "user", "content": text.strip()}]


def text_ids(tokenizer: Any, text: str, *, chat: bool = False, system: Optional[str] = None) -> torch.Tensor:
    """``text`` -> [1, n] int64: tokenized as it is, or (``chat``) inside the chat template with the generation
    prompt added (``apply_chat_template(..., add_generation_prompt=True)``)."""
    if chat:
        encoded = tokenizer.apply_chat_template(chat_messages(text, system), add_generation_prompt=True,
                                                return_dict=True, return_tensors="pt")
        return encoded["input_ids"].to(torch.long)
    return tokenizer(text, return_tensors="pt")["input_ids"].to(torch.long)


def prompt_ids_from_text(path: str | Path, tokenizer: Optional[Any], vocab_size: int, *, chat: bool = False,
                         system: Optional[str] = None, source: str = "the model") -> torch.Tensor:
    """Text file ("-": stdin) -> tokenizer (optionally in the chat template) -> [1, n]. Needs a tokenizer."""
    if tokenizer is None:
        raise PromptError("--prompt needs a tokenizer: pass --model-path to a checkpoint with tokenizer files or "
                          "a .gguf file, or give --prompt-ids")
    if chat:
        check_chat_template(tokenizer, source)
    return _checked(text_ids(tokenizer, read_prompt_text(path), chat=chat, system=system), vocab_size)


def random_prompt_ids(context_tokens: int, vocab_size: int, seed: int) -> torch.Tensor:
    """Uniform random ids [1, context_tokens] from ``seed`` (independent of the weights' random stream)."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab_size, (1, context_tokens), generator=generator, dtype=torch.long)


def _checked(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    if ids.numel() == 0:
        raise PromptError("the prompt is empty")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise PromptError(f"token ids must be in [0, {vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
    return ids


QUESTION_SEPARATOR = "\n\n"
"""Between the document and each question (inside the one user message with --chat)."""
_MARK = "\u0000HEADPLAN-QUESTION\u0000"


def document_ids(tokenizer: Any, document: str, *, chat: bool = False, system: Optional[str] = None) -> torch.Tensor:
    """The document's ids [1, n_doc], the same for every question asked after it: tokenized on its own (with
    ``chat``: the chat template's text up to the end of the document and the separator)."""
    if not chat:
        return tokenizer(document + QUESTION_SEPARATOR, return_tensors="pt")["input_ids"].to(torch.long)
    prefix, _ = _template_halves(tokenizer, document, system)
    return tokenizer(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"].to(torch.long)


def question_ids(tokenizer: Any, question: str, *, document: str = "", chat: bool = False,
                 system: Optional[str] = None) -> torch.Tensor:
    """A question's ids [1, n_q], joined after document_ids: the question (with ``chat``: and the template's end of
    the user turn with the generation prompt). Tokenized apart, so the document's tokens never change."""
    text = question.strip() if chat else question
    if chat:
        _, suffix = _template_halves(tokenizer, document, system)
        text += suffix
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(torch.long)
    if ids.numel() == 0:
        raise PromptError("a question is empty")
    return ids


def _template_halves(tokenizer: Any, document: str, system: Optional[str]) -> tuple[str, str]:
    """The chat template rendered around one user message "document + separator + question", cut at the question:
    (text before it, text after it)."""
    content = document.strip() + QUESTION_SEPARATOR + _MARK
    messages = ([{"role": "system", "content": system.strip()}] if system else []) + [
        {"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    before, marked, after = rendered.partition(_MARK)
    if not marked:
        raise PromptError("the chat template does not keep the user message as it is; ask with --prompt alone")
    return before, after
