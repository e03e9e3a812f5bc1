"""The answer as it is generated: tokens read back one behind the device, the text streamed, the stop decided.

TokenStream.push(token [1, 1] on the device) queues a non-blocking copy of the token into a pinned host slot and
records an event; then it waits for the *previous* token's event (the device already holds the current one in its
queue, so it never idles) and looks at that token:
    an end-of-sequence id (unless ignore_eos)      -> stop, reason "eos" (the id is kept, its text is not shown)
    transformers' StopStringCriteria fires         -> stop, reason "stop" (the text is cut before the stop string)
    else                                           -> streamed: AnswerStreamer.put
The decode loop stops when push returns True: the one token already issued after the stopping one is dropped.
``finish()`` reads the last pending token. Stop reason "length" when neither fired. On CPU the copies are
synchronous and the events no-ops: the same code runs in CI.

AnswerStreamer is transformers' TextStreamer (its decoding: no broken UTF-8, no half words) with its documented
hook ``on_finalized_text`` overridden to write to a chosen file (stdout for the CLI, none for the API), hold back a
tail that could start a stop string, and keep the text it wrote, so what was streamed equals ``text``.
Leaves out: batches, stop strings that span the prompt.
"""

from __future__ import annotations

from typing import Optional, Sequence, TextIO

import torch

STOP_REASONS = ("eos", "stop", "length")


def _streamer_base():
    from transformers import TextStreamer

    return TextStreamer


class AnswerStreamer(_streamer_base()):
    """TextStreamer that writes to ``file`` (None: nowhere) and keeps the text; see the module docstring."""

    def __init__(self, tokenizer, *, file: Optional[TextIO] = None, stop_strings: Sequence[str] = ()):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.file, self.stop_strings = file, tuple(stop_strings)
        self.text = ""
        self._held = ""
        self.stopped_at_string = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.stopped_at_string:
            return
        held = self._held + text
        cut = _first_stop(held, self.stop_strings)
        if cut is not None:
            self.stopped_at_string = True
            self._emit(held[:cut])
            self._held = ""
            return
        keep = 0 if stream_end else _stop_prefix_length(held, self.stop_strings)
        self._emit(held[:len(held) - keep])
        self._held = held[len(held) - keep:]

    def _emit(self, text: str) -> None:
        if not text:
            return
        self.text += text
        if self.file is not None:
            self.file.write(text)
            self.file.flush()


def _first_stop(text: str, stop_strings: Sequence[str]) -> Optional[int]:
    """Index where the earliest stop string starts in ``text``, or None."""
    found = [text.find(s) for s in stop_strings if s and s in text]
    return min(found) if found else None


def _stop_prefix_length(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string (held back until known)."""
    longest = 0
    for stop in stop_strings:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                longest = max(longest, length)
                break
    return longest


class _NullEvent:
    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class TokenStream:
    """Reads generated tokens back one behind the device; streams them; decides the stop (module docstring)."""

    def __init__(self, *, device: torch.device, capacity_tokens: int, eos_token_ids: Sequence[int] = (),
                 ignore_eos: bool = False, tokenizer=None, stop_strings: Sequence[str] = (),
                 file: Optional[TextIO] = None):
        if stop_strings and tokenizer is None:
            raise ValueError("stop strings need the checkpoint's tokenizer")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self._host = torch.empty(capacity_tokens + 1, dtype=torch.long, pin_memory=cuda)
        self._events = [torch.cuda.Event() if cuda else _NullEvent() for _ in range(2)]
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self.ignore_eos = ignore_eos
        self.streamer = AnswerStreamer(tokenizer, file=file, stop_strings=stop_strings) if tokenizer else None
        self._criteria = None
        if stop_strings:
            from transformers import StopStringCriteria

            self._criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))
        self.tokens: list[int] = []
        self.stop_reason: Optional[str] = None
        self._issued = 0

    @property
    def text(self) -> str:
        """The answer as streamed (special tokens skipped, cut before a stop string)."""
        return self.streamer.text if self.streamer is not None else ""

    def push(self, token: torch.Tensor) -> bool:
        """Queue ``token`` [1, 1] (device) for reading; look at the one before it. True: stop the decode now."""
        if self.stop_reason is not None:
            return True
        slot = self._issued
        self._host[slot:slot + 1].copy_(token.reshape(1), non_blocking=True)
        self._events[slot % 2].record()
        self._issued += 1
        if slot == 0:
            return False
        return self._look(slot - 1)

    def finish(self) -> None:
        """Read the last token queued (if the decode did not stop), end the stream, set the stop reason."""
        if self.stop_reason is None and self._issued > len(self.tokens):
            self._look(self._issued - 1)
        if self.stop_reason is None:
            self.stop_reason = "length"
        if self.streamer is not None:
            self.streamer.end()
            if self.streamer.stopped_at_string:
                self.stop_reason = "stop"

    def _look(self, slot: int) -> bool:
        self._events[slot % 2].synchronize()
        token = int(self._host[slot])
        self.tokens.append(token)
        if token in self.eos_token_ids and not self.ignore_eos:
            self.stop_reason = "eos"
            return True
        if self.streamer is not None:
            self.streamer.put(torch.tensor([token]))
        if self._criteria is not None and bool(self._criteria(torch.tensor([self.tokens]), None)[0]):
            self.stop_reason = "stop"
            return True
        return False
