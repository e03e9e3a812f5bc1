"""Readable text for plans: the chosen plan, its memory breakdown, predicted times with what binds them, every
alternative with why it lost; the --max-context table and the --sweep table.

Leaves out: JSON (the pydantic schemas dump themselves) and plots (planner/plots.py).
"""

from __future__ import annotations

from typing import Optional

from planner.model_spec import ModelSpec
from planner.plan import Plan
from planner.units import format_bytes, format_seconds, format_tokens

_BOUND_TEXT = {"compute": "compute", "hbm": "HBM bandwidth", "pcie": "PCIe transfers",
               "cpu-attention": "the CPU's share of attention", "launch": "launch overhead",
               "memory": "memory", "none": "-"}


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


def _knobs(chunk: Optional[int], group: Optional[int], resident: Optional[int]) -> str:
    if chunk is None:
        return "-"
    return f"c={format_tokens(chunk)} G={group} R={resident}"


def render_plan(plan: Plan) -> str:
    """The default output of `headplan plan`."""
    mem, pred, model, hw = plan.memory, plan.predicted, plan.model, plan.hardware
    bd = mem.gpu_breakdown
    slots = model.kv_head_slots // (plan.gpus if plan.parallel == "heads" else 1)  # heads: per GPU
    lines = [
        f"headplan plan: {model.name} on {hw.name} ({hw.gpu_name}, {hw.origin}), context "
        f"{format_tokens(plan.context_tokens)} + {plan.decode_tokens} decode tokens, {plan.dtype}",
        f"GPU budget {format_bytes(mem.gpu_budget_bytes)}{_per_gpu(plan)}, host RAM for KV "
        f"{format_bytes(mem.host_budget_bytes)}",
        "",
        f"chosen: {plan.strategy}  chunk {format_tokens(plan.chunk_size)} ({plan.chunk_size} tokens), "
        f"{plan.heads_per_group} KV heads per group, {plan.resident_kv_heads}/{slots} KV heads resident, "
        f"attention backend {plan.attention_backend}" + (
            f" (past cut {plan.past_cut}, chunk part on {plan.chunk_backend})" if plan.chunk_backend else ""),
        "",
        "GPU memory (peak)" + (f", the fullest GPU (of {plan.gpus})" if plan.stages else ""),
        f"  weights      {format_bytes(bd.weights):>12}",
        f"  kv           {format_bytes(bd.kv):>12}   (resident {format_bytes(mem.kv_detail.get('resident', 0))}, "
        f"ping-pong buffers {format_bytes(mem.kv_detail.get('buffers', 0))}, chunk in flight "
        f"{format_bytes(mem.kv_detail.get('chunk', 0))}"
        + (f", sliding windows {format_bytes(mem.kv_detail['window'])}" if 'window' in mem.kv_detail else "") + ")",
        f"  activations  {format_bytes(bd.activations):>12}",
        f"  overhead     {format_bytes(bd.overhead):>12}",
        f"  total        {format_bytes(mem.gpu_peak_bytes):>12}   of {format_bytes(mem.gpu_budget_bytes)} "
        f"({format_bytes(mem.gpu_budget_bytes - mem.gpu_peak_bytes)} free)",
        f"host memory: {format_bytes(mem.host_kv_bytes)} pinned KV store of {format_bytes(mem.host_budget_bytes)}",
        "",
        "predicted time",
        f"  pin host store   {format_seconds(pred.pin_s):>10}",
        f"  prefill          {format_seconds(pred.prefill_s):>10}   bound by {_BOUND_TEXT[pred.prefill_bound]} "
        f"({len(pred.chunk_s)} chunks, {plan.context_tokens / max(pred.prefill_s, 1e-12):,.0f} tokens/s)",
        f"  decode / token   {format_seconds(pred.decode_s_per_token):>10}   bound by "
        f"{_BOUND_TEXT[pred.decode_bound]}" + (" (each token one CUDA graph replay)" if plan.decode_graphs else ""),
        f"  workload total   {format_seconds(pred.total_s):>10}   (pin + prefill + {plan.decode_tokens} x decode)",
    ]
    if plan.cpu_share > 0:
        cpu_bytes, pcie_bytes = pred.terms.get("decode_host_share_bytes", 0.0), pred.terms.get("decode_h2d_bytes", 0.0)
        lines.append(f"  decode CPU share {plan.cpu_share:>10g}   CPU reads {format_bytes(int(cpu_bytes))} per token "
                     f"in {format_seconds(pred.terms.get('decode_host_share_s', 0.0))} of its layers' time, PCIe "
                     f"streams {format_bytes(int(pcie_bytes))}")
    terms = pred.terms
    if terms:
        lines.append(
            f"  prefill terms: linear {format_seconds(terms.get('prefill_linear_s', 0))}, attention "
            f"{format_seconds(terms.get('prefill_attention_s', 0))}, elementwise "
            f"{format_seconds(terms.get('prefill_elementwise_s', 0))}, host->GPU transfers "
            f"{format_seconds(terms.get('prefill_h2d_s', 0))} (overlapped), cuDNN graph builds "
            f"{format_seconds(terms.get('prefill_cudnn_graph_build_s', 0))}")
    if plan.stages:
        lines += ["", f"stages ({plan.gpus} GPUs in series, {format_bytes(mem.gpu_budget_bytes)} budget each)"]
        lines += ["  " + r for r in _stage_table(plan)]
    if plan.alternatives:
        rows = []
        for alt in plan.alternatives:
            rows.append([alt.strategy, _knobs(alt.chunk_size, alt.heads_per_group, alt.resident_kv_heads),
                         format_bytes(alt.gpu_peak_bytes),
                         format_seconds(alt.prefill_s) if alt.prefill_s is not None else "-",
                         format_seconds(alt.decode_s_per_token) if alt.decode_s_per_token is not None else "-",
                         alt.reason])
        lines += ["", "alternatives"] + ["  " + r for r in _table(
            rows, ["strategy", "knobs", "GPU peak", "prefill", "decode/tok", "why not chosen"])]
    if plan.notes:
        lines += [""] + [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _per_gpu(plan: Plan) -> str:
    if plan.gpus > 1 and plan.parallel == "heads":
        return f" per GPU x {plan.gpus} GPUs (every layer's heads split {plan.gpus} ways; memory and KV per GPU)"
    return f" per GPU x {plan.gpus} GPUs (layers split into {plan.gpus} stages)" if plan.stages else ""


def _stage_table(plan: Plan) -> list[str]:
    """One row per GPU of a pipeline plan: layers, resident heads, memory terms, host KV, busy time, idle."""
    rows = []
    for index, stage in enumerate(plan.stages):
        bd = stage.gpu_breakdown
        last = stage.first_layer + stage.num_layers - 1
        rows.append([str(index), f"{stage.first_layer}-{last}", str(stage.resident_kv_heads),
                     format_bytes(bd.weights), format_bytes(bd.kv), format_bytes(bd.activations),
                     format_bytes(stage.gpu_peak_bytes), format_bytes(stage.host_kv_bytes),
                     f"{format_seconds(stage.prefill_s)} ({_BOUND_TEXT[stage.prefill_bound]})",
                     f"{format_seconds(stage.decode_s_per_token)} ({_BOUND_TEXT[stage.decode_bound]})",
                     f"{stage.idle_fraction:.0%}",
                     format_tokens(stage.compute_bound_chunk_tokens) if stage.compute_bound_chunk_tokens else "-"])
    return _table(rows, ["stage", "layers", "resident", "weights", "kv", "activations", "GPU peak", "host KV",
                         "busy prefill", "busy decode/tok", "idle", "compute-bound chunk"])


def render_max_context(model_name: str, hw_name: str, gpu_budget_bytes: int, host_budget_bytes: int,
                       result: dict[str, int], model: Optional[ModelSpec] = None) -> str:
    """The --max-context table (with ``model``: a line on its sliding-window layers, which the table counts as
    a fixed window on the GPU, never on the host)."""
    from planner.solver import MAX_CONTEXT_SEARCH_TOKENS

    def cell(tokens: int) -> str:
        if tokens > MAX_CONTEXT_SEARCH_TOKENS:
            return "no memory limit"
        return format_tokens(tokens) if tokens else "does not fit"

    rows = [[name, cell(tokens), f"{tokens:,}" if tokens <= MAX_CONTEXT_SEARCH_TOKENS else "-"]
            for name, tokens in result.items()]
    if model is not None and model.kv_head_slots == 0:  # every layer slides: no KV to offload at all
        rows = [[name, "nothing to offload", "-"] if name in ("layer-offload", "head-offload") else row
                for name, row in zip(result, rows)]
    head = (f"longest context for {model_name} on {hw_name}: GPU budget {format_bytes(gpu_budget_bytes)}, "
            f"host RAM for KV {format_bytes(host_budget_bytes)}")
    lines = [head]
    if model is not None and model.sliding_layers:
        windows = sorted({w for w in model.layer_windows if w is not None})
        lines.append(f"{model.sliding_layers} of {model.num_hidden_layers} layers slide (window "
                     f"{', '.join(str(w) for w in windows)}): their KV is {format_bytes(model.window_kv_bytes(2))} "
                     f"on the GPU at any context; the {model.full_attention_layers} full-attention layers hold "
                     f"{format_bytes(model.kv_bytes_per_token(2))} per token (bf16)")
    return "\n".join(lines + [""] + _table(rows, ["strategy", "max context", "tokens"]))


def render_sweep(rows: list[dict]) -> str:
    """The --sweep table: one row per context (sweep.SweepRow dicts)."""
    table = []
    for row in rows:
        if row.get("error"):
            table.append([format_tokens(row["context_tokens"]), "-", "-", "-", "-", "-", row["error"]])
            continue
        table.append([format_tokens(row["context_tokens"]), row["strategy"],
                      _knobs(row["chunk_size"], row["heads_per_group"], row["resident_kv_heads"]),
                      format_bytes(row["gpu_peak_bytes"]), format_seconds(row["prefill_s"]),
                      format_seconds(row["decode_s_per_token"]), row["bounds"]])
    return "\n".join(_table(table, ["context", "strategy", "knobs", "GPU peak", "prefill", "decode/tok",
                                    "bound (prefill/decode) or why none"]))
