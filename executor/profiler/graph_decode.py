"""The replayed decode step of a model's layer shape: the executor's CUDA-graph decode (every KV head resident,
executor/generation/decode_graph.py) timed on random weights of the real layer shape, at a short context.

The kernel tables time each decode kernel alone: the matmul table's single [1, K] @ [K, N] call pays a launch and a
ramp that a replayed graph does not (on the H200, 2026-12-01, Llama-3-8B's 224 projections of one token took 4.51 ms
in a graph against 7.01 ms priced from the table), and the many small kernels of a layer (norms, rotary, residuals,
SwiGLU) each still cost a few microseconds in a graph, which the tables do not see (timing the decode shapes back to
back instead left the graph-decode predictions 15-20% short). So this section measures the step itself, per model
layer shape (Llama-3-8B's and Llama-3.2-1B's, and those of ``headplan profile --model``): the executor's run of
``LAYERS`` and ``SHALLOW_LAYERS`` decoder layers of the shape (the model's own hidden, intermediate, heads, head dim,
vocabulary) after prompts of each of ``CONTEXTS`` tokens, decode seconds per token from the run's CUDA events (the
GPU's time: a replayed step is GPU-bound), medians of ``REPEATS`` runs after one untimed run, fitted per context s as

    step(L, s) = token_s + L * layer_s(s)
    layer_s(s) = (step(LAYERS, s) - step(SHALLOW_LAYERS, s)) / (LAYERS - SHALLOW_LAYERS)
    token_s    = step(LAYERS, s_1) - LAYERS * layer_s(s_1)          (s_1 the shortest context)
    -> GraphDecodePoint(token_s, context_tokens = CONTEXTS, layer_s = [layer_s(s) per context])

Three contexts because the flash decode kernel's cost per key falls with the context (it reads HBM faster over
more keys): a straight line through 1K and 16K priced the H200's 128K steps 18% long. The planner prices a replayed
decode token of a model with a matching layer shape as token_s (its lm_head bytes adjusted to the model's
vocabulary) + L * layer_s(s), linear between the measured contexts and along the last segment beyond them
(planner/graph_decode_time.py graph_decode_gpu_seconds). GPU only; a shape that does not fit in free memory is noted and
skipped. Leaves out: eager decode (the kernel tables and the host-time fits price it) and streamed heads (no graph).
"""

from __future__ import annotations

import statistics

import torch

from executor.profiler.context import ProfileContext
from hwprofiles.schema import GraphDecodePoint
from planner.candidates import needs_flex
from planner.builtin_models import BUILTIN_MODELS
from planner.model_spec import ModelSpec

SECTION = "graph decode"
DEFAULT_MODELS = ("llama-3-8b", "llama-3.2-1b")
LAYERS, SHALLOW_LAYERS = 4, 2
CONTEXTS = (1024, 16384, 131072)   # prompt tokens of the runs
DECODE_TOKENS, REPEATS = 24, 3


def _models(extra: tuple) -> list[ModelSpec]:
    """Llama-3-8B, Llama-3.2-1B and ``extra`` (ModelSpecs), one per layer shape, in that order; models with
    sliding windows or soft-capped scores left out (their decode never replays a graph)."""
    chosen, seen = [], set()
    for model in [BUILTIN_MODELS[name] for name in DEFAULT_MODELS] + list(extra):
        if needs_flex(model):
            continue
        if model.layer_shape not in seen:
            seen.add(model.layer_shape)
            chosen.append(model)
    return chosen


def _step_s(model: ModelSpec, layers: int, device: torch.device) -> dict[int, float]:
    """Decode seconds per token of ``layers`` layers of the shape, per context of CONTEXTS."""
    from executor.generation.runner import execute
    from executor.inputs.model_loader import build_random
    from executor.settings import ExecutionSettings

    spec = model.model_copy(update={"num_hidden_layers": layers})
    loaded = build_random(spec, dtype=torch.bfloat16, device=device, seed=0)
    seconds = {}
    for context in CONTEXTS:
        ids = torch.randint(0, model.vocab_size, (1, context), generator=torch.Generator().manual_seed(1))
        settings = ExecutionSettings(chunk_size=min(context, 4096), heads_per_group=1,
                                     resident_kv_heads=layers * model.num_key_value_heads,
                                     capacity_tokens=context + DECODE_TOKENS + 1, attention_backend="flash",
                                     decode_graphs=True)

        def once() -> float:
            measurement = execute(loaded.model, ids, settings, new_tokens=DECODE_TOKENS + 1, device=device)
            if measurement.decode_step != "graph":
                raise RuntimeError(f"decode ran {measurement.decode_step!r}, not as a CUDA graph "
                                   f"({measurement.decode_graph_fallback})")
            return measurement.decode_s_per_token

        once()
        seconds[context] = statistics.median(once() for _ in range(REPEATS))
    del loaded
    return seconds


def fit_step(deep: dict[int, float], shallow: dict[int, float]) -> tuple[float, list[float]]:
    """(token_s, [layer_s per context of CONTEXTS]) of the module docstring's fit from the LAYERS and
    SHALLOW_LAYERS runs (seconds per token by context); a negative slope (noise) becomes 0."""
    layer_s = [max((deep[s] - shallow[s]) / (LAYERS - SHALLOW_LAYERS), 0.0) for s in CONTEXTS]
    return deep[CONTEXTS[0]] - LAYERS * layer_s[0], layer_s


def measure_graph_decode(ctx: ProfileContext, models: tuple = ()) -> list[GraphDecodePoint]:
    """One GraphDecodePoint per layer shape of _models(models); [] (noted) off a GPU or in tiny mode."""
    if not ctx.on_gpu or ctx.preset.mode == "tiny":
        ctx.note("graph decode step (graph_decode.py) not measured: " + ("no GPU" if not ctx.on_gpu else
                 "tiny sizes") + "; the planner prices a replayed decode token from the kernel tables")
        return []
    points = []
    for model in _models(models):
        kv_bytes = 2 * LAYERS * model.num_key_value_heads * model.head_dim * 2 * (CONTEXTS[-1] + DECODE_TOKENS + 1)
        weight_bytes = 2 * (model.embedding_param_count + LAYERS * model.layer_param_count)   # bfloat16
        if not ctx.fits(weight_bytes + kv_bytes):
            ctx.note(f"graph decode step of {model.name}'s layer shape skipped: no memory")
            continue
        try:
            deep_s, shallow_s = (_step_s(model, layers, ctx.device) for layers in (LAYERS, SHALLOW_LAYERS))
        except Exception as exc:  # noqa: BLE001 - optional figures; the planner falls back to the tables
            ctx.note(f"graph decode step of {model.name}'s layer shape not measured ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120]})")
            ctx.free_memory()
            continue
        token_s, layer_s = fit_step(deep_s, shallow_s)
        hidden, intermediate, q_heads, kv_heads, head_dim = model.layer_shape
        point = GraphDecodePoint(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=q_heads,
                                 num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=model.vocab_size,
                                 token_s=token_s, context_tokens=list(CONTEXTS), layer_s=layer_s)
        points.append(point)
        per_context = ", ".join(f"{us * 1e6:.1f} us at {s // 1024}K" for s, us in zip(CONTEXTS, layer_s))
        ctx.progress(SECTION, f"{model.name} layer shape", f"{token_s * 1e3:.3f} ms + L x ({per_context})")
        ctx.free_memory()
    return points
