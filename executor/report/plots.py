"""Plots of a run report (PNG, matplotlib Agg): time per chunk predicted vs measured over the context; GPU memory
breakdown predicted vs measured; with --trace, a timeline of one layer (compute, h2d, d2h lanes) as a PNG and a
Chrome trace JSON (chrome://tracing, Perfetto). Leaves out: interactive output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from planner.units import GIB


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_chunk_times(report, path: Path) -> Optional[Path]:
    measured, predicted = report.measured.chunk_s, report.predicted.chunk_s
    if not measured and not predicted:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    tail = getattr(report, "tail", None)
    first = tail.total_chunks - tail.chunks if tail is not None else 0  # a timing probe ran the last chunks only
    if predicted:
        ax.plot(range(first, first + len(predicted)), predicted, "o--", label="predicted")
    if measured:
        ax.plot(range(first, first + len(measured)), measured, "s-", label="measured")
    ax.set_xlabel("prefill chunk (index over the context)")
    ax.set_ylabel("time per chunk (s)")
    ax.set_title(f"{report.model}: {report.context_tokens} tokens, chunk {report.settings.get('chunk_size')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_memory(report, path: Path) -> Optional[Path]:
    blocks = {"predicted": report.predicted.gpu_breakdown, "measured": report.measured.gpu_breakdown}
    terms = ["weights", "kv", "activations", "overhead"]
    if not any(blocks.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for index, (label, breakdown) in enumerate(blocks.items()):
        bottom = 0.0
        for term in terms:
            value = breakdown.get(term, 0) / GIB
            ax.bar(index, value, bottom=bottom, label=term if index == 0 else None,
                   color=f"C{terms.index(term)}")
            bottom += value
    budget = report.memory.gpu_budget_bytes
    if budget:
        ax.axhline(budget / GIB, color="k", linestyle=":", label="budget")
    ax.set_xticks([0, 1], list(blocks))
    ax.set_ylabel("GPU memory (GiB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def layer_lanes(trace_events, layer: int, phase: str = "prefill", chunk: Optional[int] = None) -> list[dict]:
    """Intervals [{lane, name, start_ms, end_ms}] of one layer of one chunk (default: the last prefill chunk)."""
    chosen = [e for e in trace_events if e[1].get("phase") == phase]
    if chunk is None:
        chunk = max((e[1].get("chunk") or 0 for e in chosen), default=0)
    chosen = [e for e in chosen if e[1].get("chunk") == chunk and e[1].get("layer") == layer]
    opened: dict = {}
    intervals = []
    for name, meta, ms, lane in sorted(chosen, key=lambda e: e[2]):
        kind, _, edge = name.rpartition("_")
        key = (kind, meta.get("group"))
        if edge == "start":
            opened[key] = ms
        elif key in opened:
            label = kind if meta.get("group") is None else f"{kind} g{meta['group']}"
            intervals.append({"lane": lane, "name": label, "start_ms": opened.pop(key), "end_ms": ms})
    return intervals


def write_trace(trace_events, out_dir: Path, layer: int = 0) -> list[Path]:
    """Chrome trace JSON of all traced events, and a PNG timeline of ``layer`` in the last prefill chunk."""
    if not trace_events:
        return []
    out_dir = Path(out_dir)
    lanes = {"compute": 1, "h2d": 2, "d2h": 3}
    chrome = []
    for chunk_layer in {(e[1].get("phase"), e[1].get("chunk"), e[1].get("layer")) for e in trace_events}:
        phase, chunk, lay = chunk_layer
        for interval in layer_lanes(trace_events, lay, phase or "prefill", chunk):
            chrome.append({"name": f"{interval['name']} L{lay}", "ph": "X", "pid": 1,
                           "tid": lanes.get(interval["lane"], 9), "ts": interval["start_ms"] * 1000,
                           "dur": (interval["end_ms"] - interval["start_ms"]) * 1000,
                           "args": {"phase": phase, "chunk": chunk, "layer": lay}})
    trace_path = out_dir / "trace.json"
    trace_path.write_text(json.dumps({"traceEvents": chrome}))
    paths = [trace_path]
    intervals = layer_lanes(trace_events, layer)
    if intervals:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(9, 2.5))
        origin = min(i["start_ms"] for i in intervals)
        for i in intervals:
            row = lanes.get(i["lane"], 0)
            ax.barh(row, i["end_ms"] - i["start_ms"], left=i["start_ms"] - origin, height=0.6)
        ax.set_yticks(list(lanes.values()), list(lanes))
        ax.set_xlabel(f"ms (layer {layer}, last prefill chunk)")
        fig.tight_layout()
        png = out_dir / "timeline.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        paths.append(png)
    return paths


def write_plots(report, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    made = [plot_chunk_times(report, out_dir / "chunk_time.png"), plot_memory(report, out_dir / "memory.png")]
    return [p for p in made if p is not None]
