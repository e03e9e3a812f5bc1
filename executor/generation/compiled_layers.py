"""torch.compile of a decoder model's elementwise-heavy modules for prefill (ExecutionSettings.compile_layers).

What is compiled: every decoder layer's RMSNorm modules (``input_layernorm``, ``post_attention_layernorm`` and any
other child whose class name ends in "RMSNorm", e.g. Gemma-2's pre/post feed-forward norms) and its ``mlp``, plus
the model's final ``norm``, each through the public ``nn.Module.compile()`` (torch.compile of that instance's
call). Inductor fuses RMSNorm's float32 upcast, pow, mean, rsqrt, mul and cast into one kernel, and SwiGLU's
act(gate) * up into one (the three projections stay cuBLAS matmuls). What stays eager: the attention (the
registered AttentionInterface function and the offload engine: no graph break inside them), RoPE, the residual
adds, the embedding and the head; the model's code is not modified.

Shapes: the modules see hidden states [1, c, D]; the first shape compiles a static graph, the second a graph with
the token dimension dynamic (dynamo's automatic dynamic shapes), which then serves every later chunk length.
``warm_up_compiled`` calls every compiled module at the run's lengths under inference mode (the run's grad
mode, which the graphs guard on), so those compiles happen in the warm-up, not in the timed prefill.

Decode stays eager (``eager_stance``: torch.compiler.set_stance("force_eager")): a decode step is PCIe- or
HBM-bound, its CUDA-graph capture (generation/decode_graph.py) must not meet a first compile, and eager keeps it
identical to the runs without the option. Leaves out: the compile of the attention, RoPE and the residual adds
(inside the decoder layer's own forward, which would need the whole layer compiled around the offload engine).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


def compilable_modules(model) -> list[torch.nn.Module]:
    """The modules compile_layers compiles, in model order (module docstring): per layer its RMSNorms and mlp,
    then the final norm. A model without ``model.model.layers`` has none."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        return []
    modules = []
    for layer in layers:
        for name, child in layer.named_children():
            if name == "mlp" or type(child).__name__.endswith("RMSNorm"):
                modules.append(child)
    final = getattr(inner, "norm", None)
    if final is not None:
        modules.append(final)
    return modules


@contextlib.contextmanager
def compiled_layers(model, enabled: bool) -> Iterator[list[torch.nn.Module]]:
    """Within the block, the compilable modules run compiled (``enabled``); on exit each module this call
    compiled is returned to eager, so a later run of the same model without the option is eager again (compiled
    code stays in dynamo's cache: compiling again costs little). Nested use (the warm-up's tiny run) leaves
    modules compiled by an outer call alone. Yields the modules compiled here."""
    if not enabled:
        yield []
        return
    compiled = []
    for module in compilable_modules(model):
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile()
            compiled.append(module)
    try:
        yield compiled
    finally:
        for module in compiled:
            # nn.Module.compile() keeps the compiled call here; clearing it is what "not compiled" is
            module._compiled_call_impl = None


def warm_up_compiled(model, token_lengths: Sequence[int]) -> int:
    """Call every compilable module at each length in ``token_lengths`` (hidden states [1, n, D] of zeros, the
    model's dtype and device, inference mode), so the compiles those shapes need happen now. Returns the calls."""
    modules = compilable_modules(model)
    if not modules:
        return 0
    parameter = next(model.parameters())
    hidden_size = model.config.hidden_size
    calls = 0
    with torch.inference_mode():
        for tokens in sorted(set(token_lengths)):
            hidden = torch.zeros(1, tokens, hidden_size, dtype=parameter.dtype, device=parameter.device)
            for module in modules:
                module(hidden)
                calls += 1
    return calls


def prefill_lengths(prompt_tokens: int, chunk_tokens: int) -> list[int]:
    """The chunk lengths a prefill of ``prompt_tokens`` in chunks of ``chunk_tokens`` feeds the layers: c, and the
    shorter last chunk if there is one."""
    lengths = {min(chunk_tokens, prompt_tokens)}
    if prompt_tokens > chunk_tokens and prompt_tokens % chunk_tokens:
        lengths.add(prompt_tokens % chunk_tokens)
    return sorted(lengths)


@contextlib.contextmanager
def eager_stance(enabled: bool) -> Iterator[None]:
    """Compiled modules run their eager forward within the block (decode: module docstring); a no-op when not
    ``enabled`` or where torch has no set_stance (before 2.6: the compiled graphs then serve decode too)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if not enabled or set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield
