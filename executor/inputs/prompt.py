"""The prompt of a run as token ids [1, n] (int64, on CPU): from a JSON file of ids, from text through the
checkpoint's tokenizer, or random ids of a given length from a seed. Leaves out: chat templates, batches."""

from __future__ import annotations

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


def prompt_ids_from_text(path: str | Path, tokenizer: Optional[Any], vocab_size: int) -> torch.Tensor:
    """Text file -> tokenizer -> [1, n]. Needs a checkpoint with a tokenizer."""
    if tokenizer is None:
        raise PromptError("--prompt needs a tokenizer: pass --model-path to a checkpoint with tokenizer files, "
                          "or give --prompt-ids")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PromptError(f"cannot read prompt {path}: {exc}") from None
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return _checked(ids.to(torch.long), vocab_size)


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
