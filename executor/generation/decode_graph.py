"""The static decode step, replayed as one CUDA graph per token on a GPU.

With every KV head resident on one device (no per-token copy whose size grows with the context), a decode step
can keep fixed shapes and fixed host arguments: the token id is a [1, 1] buffer, its position lives in a
DevicePosition (attention/decode.py), and the attention reads the key length from the device. Then the
whole forward (embedding, L decoder layers, lm_head, argmax) is captured once and each token is one
``graph.replay()``: the host's per-token work falls from the eager loop's (~1 ms per layer on the H100 host,
0.65-1.2 ms across machines) to the replay call, and the step runs at the GPU's speed.

One step (``_forward``), on the static buffers ``ids`` [1, 1] and ``position``:
    logits = model(ids, position_ids = position.position_ids, cache)[:, -1]     K, V written at s, attention [0, s+1)
    logits_out <- logits (float32, when kept);  ids <- argmax(logits);  position <- s + 1
so each replay feeds the next. Setup (``prepare``, after the prefill has drained from the GPU; timed apart as
``decode_graph_setup_s``): one eager step
on a side stream (first launches of its kernels; it writes row s exactly as the first replay will rewrite it),
the buffers put back, then the capture. On CPU the same step runs eagerly (no capture): the tests check it
against the eager decode there. A capture that fails falls back to that eager static step, with a warning.
With sampling or logits processors the graph ends at the logits and the token is chosen eagerly after each
replay (generation/sampling.py). Leaves out: streamed heads and several stages (the eager decode handles those).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Optional

import torch

from executor.attention.decode import DevicePosition
from executor.engine.cache import with_cache
from executor.kv.layout import KVLayout
from executor.settings import ExecutionSettings
from planner.host_time import decode_runs_as_graph


def static_decode_applies(layouts: list[KVLayout], settings: ExecutionSettings, dtype: torch.dtype,
                          device: torch.device) -> bool:
    """The planner's rule (planner/host_time.decode_runs_as_graph) on the run's own layouts: one stage, every
    (layer, KV head) slot resident, decode graphs not turned off, and on CUDA a 16-bit dtype (the flash kernel
    that reads the key length from the device); on CPU any dtype (no kernel limits it: the tests run it there)."""
    if len(layouts) != 1:
        return False
    layout = layouts[0]
    elem_bytes = dtype.itemsize if device.type == "cuda" else 2
    return decode_runs_as_graph(sum(layout.resident_per_layer), layout.num_layers * layout.kv_heads, elem_bytes,
                                enabled=settings.decode_graphs)


@contextlib.contextmanager
def _sync_debug_off():
    """Capture synchronises the device once (torch.cuda.graph); a run under sync_debug must allow that."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class StaticDecode:
    """Static buffers and (on CUDA) the captured graph of one run's decode step (module docstring)."""

    def __init__(self, run, first_ids: torch.Tensor, prompt_tokens: int):
        """``run``: the generation/loop.py RunLoop whose model, cache and engines the step drives."""
        self.run, self.device = run, run.device
        self.ids = first_ids.clone()                                          # [1, 1] int64
        self.first_ids = first_ids
        self.prompt_tokens = prompt_tokens
        self.position = DevicePosition.create(prompt_tokens, run.cache.layers[0].capacity_tokens, self.device)
        self.logits: Optional[torch.Tensor] = None
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.setup_s = 0.0
        self.fallback: Optional[str] = None
        for engine in run.engine.engines:
            engine.device_position = self.position

    @property
    def _argmax_in_step(self) -> bool:
        """Plain greedy: the step (and the graph) ends with argmax; else the chooser runs after each step."""
        return self.run.chooser is None or self.run.chooser.plain_argmax

    def _forward(self) -> None:
        """The capturable step: forward, logits kept (float32) when asked or when a chooser needs them, the
        argmax (plain greedy) into ``ids``, the position advanced."""
        run = self.run
        out = run.model(self.ids, position_ids=self.position.position_ids, **with_cache(run.model, run.cache),
                        use_cache=True, logits_to_keep=1, headplan_cache=run.cache)
        last = out.logits[:, -1, :]
        if run.keep_logits or not self._argmax_in_step:
            if self.logits is None:
                self.logits = torch.empty(last.shape[-1], device=last.device, dtype=torch.float32)
            self.logits.copy_(last[0])
        if self._argmax_in_step:
            self.ids.copy_(last.argmax(-1, keepdim=True))
        self.position.advance()

    def _choose(self) -> None:
        """Sampling or processors: the next token from the kept logits, eagerly after the step (not captured)."""
        if not self._argmax_in_step:
            self.ids.copy_(self.run.chooser.choose(self.logits[None]))

    def prepare(self) -> None:
        """On CUDA: warm-up step and capture (module docstring); its wall time goes to ``setup_s``."""
        if self.device.type != "cuda":
            return
        with _sync_debug_off():            # the prefill's queued tail first: capture would wait for it anyway,
            torch.cuda.synchronize(self.device)   # and setup_s is the setup's own time
        start_s = time.perf_counter()
        run, engines = self.run, self.run.engine.engines
        counts = run.cache.token_counts()
        counters = [{phase: dataclasses.replace(c) for phase, c in e.counters.items()} for e in engines]
        recorders = [e.recorder for e in engines]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            for engine in engines:
                engine.recorder = None                 # no event records inside the captured step
            with torch.cuda.stream(side):
                self._forward()                        # first launches; row s is rewritten by the first replay
                self.ids.copy_(self.first_ids)
                self.position.set(self.prompt_tokens)
            run.cache.restore_counts(counts)
            graph = torch.cuda.CUDAGraph()
            with _sync_debug_off(), torch.cuda.graph(graph, stream=side):
                self._forward()
            self.graph = graph
        except RuntimeError as exc:                    # e.g. an allocator setting capture does not support
            self.fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            warnings.warn(f"decode CUDA graph not captured ({self.fallback}); decoding with the eager static step",
                          RuntimeWarning, stacklevel=2)
            with torch.cuda.stream(side):
                self.ids.copy_(self.first_ids)
                self.position.set(self.prompt_tokens)
        finally:
            run.cache.restore_counts(counts)
            for engine, recorder, saved in zip(engines, recorders, counters):
                engine.recorder, engine.counters = recorder, saved
            torch.cuda.current_stream(self.device).wait_stream(side)
        self.setup_s = time.perf_counter() - start_s

    def step(self) -> None:
        """One token: replay the graph (then count it on the host), or run the step eagerly."""
        if self.graph is None:
            self._forward()
            self._choose()
            return
        past = self.run.cache.layers[0].tokens
        self.graph.replay()
        self.run.cache.advance(1)
        for engine in self.run.engine.engines:
            engine.count_decode_token(past)
        self._choose()

    def close(self) -> None:
        for engine in self.run.engine.engines:
            engine.device_position = None
        self.graph = None
