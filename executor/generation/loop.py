"""RunLoop: the chunked prefill and the token-by-token decode of one run through the unmodified transformers model.

Each forward is ``model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1, headplan_cache=cache)``
(``cache=`` on transformers 5.24 and later: engine/cache.py with_cache)
with the head-offloaded attention selected (engine/registration.py); before it the engine is told where the loop
is (phase, chunk) and whether another forward follows (so it may prefetch that forward's first group).
Each next token is chosen on the device (generation/sampling.py TokenChooser); a TokenStream (generation/output.py)
reads tokens back one behind the device and ends the decode at end of sequence or a stop string.
Leaves out: building and releasing the stores (generation/runner.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from executor.engine.cache import OffloadCache, with_cache
from executor.generation.decode_graph import StaticDecode
from executor.generation.output import TokenStream
from executor.generation.sampling import TokenChooser
from executor.parallel.staged_engine import StagedEngine
from executor.runtime.events import EventRecorder


@dataclass
class RunLoop:
    """The state of one run and its two loops: ``prefill`` (chunk by chunk, ``logits_to_keep=1``) and ``decode``
    (token by token; through generation/decode_graph.py StaticDecode where it applies). The next token stays on
    the device: nothing here synchronises the host, except the optional progress callback one chunk behind."""

    model: object
    engine: StagedEngine
    cache: OffloadCache
    recorder: EventRecorder
    device: torch.device
    on_chunk: Optional[Callable[[int], None]]
    keep_logits: bool
    generated: list = field(default_factory=list)
    logits: list = field(default_factory=list)
    hooks: list = field(default_factory=list)
    host_s: list = field(default_factory=list)
    """per decode token, the host's time issuing it (seconds)"""
    static_decode: bool = False
    """decode through the static step (decode_graph.py), captured as a CUDA graph on a GPU"""
    static: Optional[StaticDecode] = None
    chooser: Optional[TokenChooser] = None
    """picks each next token from the logits (generation/sampling.py); None: argmax"""
    stream: Optional[TokenStream] = None
    """reads tokens back one behind and may stop the decode (generation/output.py); None: every token"""
    after_token: Optional[tuple[int, Callable[[], None]]] = None
    """(k, call): call() once after the k-th decode token is issued (the CPU share's re-balancing: runner.py)"""

    def forward(self, ids: torch.Tensor, *, phase: str, index: int, logits_to_keep: int, more: bool,
                more_prefill: bool = False):
        self.engine.position.phase, self.engine.position.chunk, self.engine.position.layer = phase, index, None
        self.engine.more_forwards = more
        self.engine.next_phase = "prefill" if more_prefill else "decode"
        out = self.model(ids, **with_cache(self.model, self.cache), use_cache=True, logits_to_keep=logits_to_keep,
                         headplan_cache=self.cache)
        last = out.logits[:, -1, :]
        if phase == "prefill" and more_prefill:
            return None  # a chunk before the last: its logits are not a token
        if self.keep_logits:
            self.logits.append(last.float()[0])
        if self.chooser is None:
            return last.argmax(-1, keepdim=True)  # [1, 1] on the device: no host sync
        return self.chooser.choose(last)

    def prefill(self, input_ids: torch.Tensor, chunk_size: int, new_tokens: int) -> torch.Tensor:
        prompt_tokens, next_ids = input_ids.shape[1], None
        starts = list(range(0, prompt_tokens, chunk_size))
        for index, start in enumerate(starts):
            chunk = input_ids[:, start: start + chunk_size]
            self.recorder.mark("chunk_start", phase="prefill", chunk=index, tokens=chunk.shape[1])
            more = index + 1 < len(starts) or new_tokens > 1
            next_ids = self.forward(chunk, phase="prefill", index=index, logits_to_keep=1, more=more,
                                    more_prefill=index + 1 < len(starts))
            self.recorder.mark("chunk_end", phase="prefill", chunk=index, tokens=chunk.shape[1])
            if self.on_chunk is not None:
                self._progress(index)
        self.recorder.mark("first_token", phase="prefill")
        if self.on_chunk is not None:
            self.on_chunk(len(starts) - 1)
        self.generated.append(next_ids)
        if self.stream is not None:
            self.stream.push(next_ids)
        return next_ids

    def _progress(self, index: int) -> None:
        """Report chunk index - 1 as done once its end event passed (the GPU keeps chunk ``index`` queued)."""
        if index == 0:
            return
        if self.device.type == "cuda":
            ends = [m for m in self.recorder.marks if m.name == "chunk_end"]
            ends[-2].event.synchronize()
        self.on_chunk(index - 1)

    def decode(self, next_ids: torch.Tensor, new_tokens: int) -> None:
        if self.static_decode and new_tokens > 1:
            return self._decode_static(next_ids, new_tokens)
        for step in range(1, new_tokens):
            issued_s = time.perf_counter()
            self.recorder.mark("token_start", phase="decode", chunk=step)
            next_ids = self.forward(next_ids, phase="decode", index=step, logits_to_keep=1,
                                    more=step + 1 < new_tokens)
            self.recorder.mark("token_end", phase="decode", chunk=step)
            self.host_s.append(time.perf_counter() - issued_s)
            self.generated.append(next_ids)
            if self.stream is not None and self.stream.push(next_ids):
                break
            if self.after_token is not None and step == self.after_token[0] and step + 1 < new_tokens:
                self.after_token[1]()

    def _decode_static(self, next_ids: torch.Tensor, new_tokens: int) -> None:
        """Tokens 1 .. new_tokens - 1 through StaticDecode: set up (capture) first, untimed, then one step each."""
        position = self.engine.position
        position.phase, position.chunk, position.layer = "decode", 1, None
        self.engine.more_forwards = False
        self.static = StaticDecode(self, next_ids, prompt_tokens=self.cache.get_seq_length())
        self.static.prepare()
        for step in range(1, new_tokens):
            issued_s = time.perf_counter()
            position.chunk = step
            self.recorder.mark("token_start", phase="decode", chunk=step)
            self.static.step()
            self.recorder.mark("token_end", phase="decode", chunk=step)
            self.host_s.append(time.perf_counter() - issued_s)
            token = self.static.ids.clone()
            self.generated.append(token)
            if self.keep_logits:
                self.logits.append(self.static.logits.clone())
            if self.stream is not None and self.stream.push(token):
                break

    def generated_ids(self) -> list[int]:
        """The answer's token ids: what the stream read (cut at the stop), else every token generated."""
        if self.stream is not None:
            self.stream.finish()
            return list(self.stream.tokens)
        if not self.generated:
            return []
        return [int(x) for x in torch.cat(self.generated, dim=1)[0].tolist()]
