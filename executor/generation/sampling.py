"""TokenChooser: the next token from the last position's logits, on the device, by transformers' own processors.

    logits [1, V] (any float dtype)  ->  scores = processors(history [1, n], logits.float())  ->  token [1, 1] int64
        processors (generate()'s order): RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                         TopKLogitsWarper, TopPLogitsWarper       (each only when it changes scores)
        temperature 0: argmax(scores);  else one draw of torch.multinomial(softmax(scores)) with a seeded
                                         torch.Generator on the device
    history: the prompt's ids then every chosen token, kept on the device (only the repetition penalty reads it)
Nothing here synchronises the host: the token stays a device tensor, written into the history by a device copy.
With plain greedy (no processor) the choice is ``logits.argmax(-1)``, as before, and the CUDA-graph decode step
keeps it inside the graph. Leaves out: beam search, batches.
"""

from __future__ import annotations

from typing import Optional

import torch

from executor.settings import SamplingOptions


def logits_processors(options: SamplingOptions):
    """transformers' LogitsProcessorList for ``options`` (empty for plain greedy)."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=options.repetition_penalty))
    if not options.greedy:
        if options.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k is not None:
            processors.append(TopKLogitsWarper(top_k=options.top_k, min_tokens_to_keep=1))
        if options.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=options.top_p, min_tokens_to_keep=1))
    return processors


class TokenChooser:
    """Chooses each next token (module docstring) for one sequence of at most ``capacity_tokens`` ids."""

    def __init__(self, options: SamplingOptions, *, device: torch.device, capacity_tokens: int,
                 prompt_ids: Optional[torch.Tensor] = None):
        """``prompt_ids`` [1, n] (any device): the history the repetition penalty sees first."""
        self.options = options
        self.processors = logits_processors(options)
        self.generator: Optional[torch.Generator] = None
        if not options.greedy and options.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(options.seed)
        self.history: Optional[torch.Tensor] = None
        self.length = 0
        if options.repetition_penalty != 1.0:
            self.history = torch.zeros(1, capacity_tokens + 1, dtype=torch.long, device=device)
            if prompt_ids is not None:
                self.length = prompt_ids.shape[1]
                self.history[:, :self.length].copy_(prompt_ids, non_blocking=True)

    @property
    def plain_argmax(self) -> bool:
        return self.options.plain_argmax

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [1, V] -> the next token [1, 1] int64 on the same device (no host sync)."""
        if self.plain_argmax:
            return logits.argmax(-1, keepdim=True)
        history = self.history[:, :self.length] if self.history is not None else None
        scores = self.processors(history, logits.float())
        if self.options.greedy:
            token = scores.argmax(-1, keepdim=True)
        else:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)
        self.record(token)
        return token

    def record(self, token: torch.Tensor) -> None:
        """Append ``token`` [1, 1] to the history (a device copy), when the penalty needs one."""
        if self.history is None:
            return
        self.history[:, self.length:self.length + 1].copy_(token)
        self.length += 1
