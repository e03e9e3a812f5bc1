"""DocumentEngine: one head-offloaded engine held across several answers over one prefilled document.

    with DocumentEngine(model, settings, device="cuda") as engine:
        engine.prefill_document(doc_ids)                       # [1, n_doc]: prefilled once, chunk by chunk
        # or: engine.load_document(doc_ids, loader)            # its saved prefix read from disk, the rest prefilled
        for question_ids in questions:                          # [1, n_q] each
            answer = engine.answer(question_ids, new_tokens=64, stream=TokenStream(...))

``load_document`` (kv/context_load.py ContextLoader) reads the longest common prefix of the document with a saved
context into the engine's stores, every byte checked first, and prefills only the document's tokens after it; if a
check fails nothing is left in use (the engine holds no document until the next prefill or load). Each answer
starts again from the document: the cache is counted back to n_doc tokens, the question is prefilled at
positions [n_doc, n_doc + n_q) and decoded after it; the rows after the document are simply overwritten by the next
question (nothing is copied). The loop is the run's own (generation/loop.py RunLoop: the same engine, chooser,
token stream and, where every head is resident, the CUDA-graph decode step). Exact: the answer equals a one-shot
run over the joined ids [document, question]. Leaves out: conversations that accumulate (each question starts from
the document alone), the run report's per-chunk timing (generation/runner.py execute).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from executor.attention.kernels import backend_name
from executor.engine.cache import OffloadCache
from executor.engine.registration import offload_attention_selected
from executor.generation.decode_graph import static_decode_applies
from executor.generation.loop import RunLoop
from executor.generation.sampling import TokenChooser
from executor.parallel.staged_engine import allocate_host_stores, build_staged_engine
from executor.parallel.stages import DeviceStage, single_stage
from executor.runtime.events import EventRecorder
from executor.settings import ExecutionSettings, SamplingOptions


@dataclass
class Answer:
    token_ids: list[int]
    text: str
    stop_reason: Optional[str]
    prompt_tokens: int
    """the question's tokens (prefilled after the document)"""
    seconds: float
    """wall time from the question's first chunk to its last token read back"""
    decode_s: float = 0.0
    """wall time of the decode steps alone (tokens 2 .. n: from the first token on the device to the last)"""
    decode_steps: int = 0
    """decode forwards run (the first token comes from the question's prefill); decode_s / decode_steps is the
    per-token time"""


@dataclass
class DocumentEngine:
    model: object
    settings: ExecutionSettings
    device: torch.device | str
    stages: Optional[list[DeviceStage]] = None
    host_available_bytes: Optional[int] = None
    document_tokens: int = 0
    document_prefill_s: Optional[float] = None
    document_load_s: Optional[float] = None
    document_loaded_tokens: int = 0
    document_loaded_bytes: int = 0
    _counts: list = field(default_factory=list)
    _stack: Optional[contextlib.ExitStack] = None

    def __enter__(self) -> "DocumentEngine":
        backend_name(self.settings.attention_backend)
        config = self.model.config
        self.stages = self.stages or single_stage(config.num_hidden_layers, self.device,
                                                  self.settings.resident_kv_heads)
        self.device = self.stages[0].device
        dtype = next(self.model.parameters()).dtype
        self._stack = contextlib.ExitStack()
        self.parts = allocate_host_stores(config, self.stages, self.settings, dtype,
                                          available_bytes=self.host_available_bytes)
        for part in self.parts:
            self._stack.callback(part.host.close)
        self.recorder = EventRecorder(device=self.device)
        self.engine = build_staged_engine(self.parts, self.settings, backend_name(self.settings.attention_backend),
                                          self.recorder, trace=False)
        self._stack.callback(self.engine.close)
        self.cache = OffloadCache(config.num_hidden_layers, self.settings.capacity_tokens, engine=self.engine)
        self._graph_step = static_decode_applies([p.layout for p in self.parts], self.settings, dtype, self.device)
        self._stack.enter_context(torch.inference_mode())
        self._stack.enter_context(offload_attention_selected(self.model))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _loop(self, stream=None, chooser=None) -> RunLoop:
        return RunLoop(model=self.model, engine=self.engine, cache=self.cache, recorder=self.recorder,
                       device=self.device, on_chunk=None, keep_logits=False, static_decode=self._graph_step,
                       chooser=chooser, stream=stream)

    def prefill_document(self, ids: torch.Tensor) -> float:
        """Prefill ``ids`` [1, n] from position 0; every answer starts after them. Returns the wall seconds."""
        started = time.perf_counter()
        self.cache.restore_counts([(0, 0)] * len(self.cache.layers))
        self._loop().prefill(ids.to(self.device), self.settings.chunk_size, new_tokens=2)
        _drain(self.device)
        self.document_prefill_s = time.perf_counter() - started
        self.document_tokens, self._counts = ids.shape[1], self.cache.token_counts()
        return self.document_prefill_s

    def load_document(self, ids: torch.Tensor, loader) -> float:
        """The document ``ids`` [1, n]: its longest common prefix N with ``loader``'s saved context (all n tokens
        when it extends the whole document; the answers compute the fresh logits) read into the stores, then
        tokens [N, n) prefilled. Returns the wall seconds (load + prefill); ``document_load_s`` is the load's."""
        from executor.kv.context_load import common_prefix
        from executor.kv.rows import KVRows

        started = time.perf_counter()
        self.document_tokens, self._counts = 0, []  # no document until this one is complete
        self.cache.restore_counts([(0, 0)] * len(self.cache.layers))
        tokens = common_prefix([int(x) for x in ids[0].tolist()], loader.saved_ids.tolist())
        layout = self.parts[0].layout
        rows = KVRows.from_stores([(p.stage.first_layer, e.host, e.gpu) for p, e in zip(self.parts,
                                                                                     self.engine.engines)],
                                  kv_heads=layout.kv_heads, head_dim=layout.head_dim,
                                  capacity_tokens=layout.capacity_tokens, dtype=self.parts[0].host.dtype)
        loaded = loader.load(rows, tokens)  # raises before the cache counts a row of it
        self.document_load_s, self.document_loaded_tokens = loaded.load_s, tokens
        self.document_loaded_bytes = loaded.nbytes
        self.cache.advance(tokens)
        if tokens < ids.shape[1]:
            self._loop().prefill(ids[:, tokens:].to(self.device), self.settings.chunk_size, new_tokens=2)
        _drain(self.device)
        self.document_prefill_s = time.perf_counter() - started
        self.document_tokens, self._counts = ids.shape[1], self.cache.token_counts()
        return self.document_prefill_s

    def answer(self, question_ids: torch.Tensor, *, new_tokens: int, stream=None,
               sampling: SamplingOptions = SamplingOptions()) -> Answer:
        """Answer ``question_ids`` [1, n_q] after the document: at most ``new_tokens`` tokens."""
        if not self.document_tokens:
            raise ValueError("no document: prefill_document or load_document first (a failed load leaves none)")
        needed = self.document_tokens + question_ids.shape[1] + new_tokens - 1
        if needed > self.settings.capacity_tokens:
            raise ValueError(f"document {self.document_tokens} + question {question_ids.shape[1]} + {new_tokens - 1} "
                             f"tokens exceed the store's {self.settings.capacity_tokens}")
        started = time.perf_counter()
        self.cache.restore_counts(self._counts)
        ids = question_ids.to(self.device)
        chooser = None
        if not sampling.plain_argmax:
            chooser = TokenChooser(sampling, device=self.device, capacity_tokens=self.settings.capacity_tokens,
                                   prompt_ids=ids)
        loop = self._loop(stream, chooser)
        try:
            first = loop.prefill(ids, self.settings.chunk_size, new_tokens)
            _drain(self.device)
            decode_started = time.perf_counter()
            loop.decode(first, new_tokens)
            _drain(self.device)
            decode_s = time.perf_counter() - decode_started
            tokens = loop.generated_ids()
        finally:
            if loop.static is not None:
                loop.static.close()
        text = stream.text if stream is not None else ""
        return Answer(tokens, text, stream.stop_reason if stream is not None else None, question_ids.shape[1],
                      time.perf_counter() - started, decode_s=decode_s, decode_steps=len(loop.host_s))

    def set_cpu_share(self, share: float) -> None:
        """Decode's CPU share F for the answers from now on (engine/host_share.py; 0: every offloaded byte streams).
        The stores and the document stay as they are: only the host share's worker and pinned buffers are rebuilt.
        Prefill is unchanged (it streams everything at any F)."""
        self.settings = dataclasses.replace(self.settings, cpu_share=share)  # validates 0 <= F <= 1
        self.engine.set_cpu_share(self.settings)


def _drain(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
