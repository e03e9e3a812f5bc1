"""Summaries of validation cells (JSON lines written by validate.py run): a Markdown table, a summary JSON with
the error statistics against the targets (TARGETS, WORST_CELL_TARGET), and a PNG of predicted against measured
on log axes.

Relative error is measured / predicted - 1 (positive: slower or larger than predicted); the statistics use
its absolute value. Cells that failed are listed with their error and left out of the statistics. A timing probe's
cell (a report with a ``tail`` block, headplan run --tail-chunks) compares the prefill of its last chunks with those
chunks' prediction; its plan column says which chunks.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

TARGETS = {"prefill_s": 0.05, "decode_s_per_token": 0.05, "gpu_peak_bytes": 0.05}
"""median absolute error per figure, for plans from a full profile of the same machine"""
WORST_CELL_TARGET = 0.10
QUICK_PROFILE_WORST_TARGET = 0.15
"""the worst cell when the same cells are predicted from a quick profile (validate.py summarize --quick-rows)"""
GIB = 1024**3


def load_rows(paths: list[Path]) -> list[dict]:
    """The last row of every cell over the files (a re-run replaces an earlier one)."""
    by_cell: dict[str, dict] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_cell[row["cell"]] = row
    return list(by_cell.values())


def _figure(row: dict, block: str, key: str):
    return ((row.get("report") or {}).get(block) or {}).get(key)


def _error(row: dict, key: str):
    measured, predicted = _figure(row, "measured", key), _figure(row, "predicted", key)
    if measured is None or not predicted:
        return None
    return measured / predicted - 1.0


def statistics_of(rows: list[dict], worst_target: float = WORST_CELL_TARGET) -> dict:
    """Median and worst absolute relative error per figure, with the targets and whether they are met
    (``worst_target``: QUICK_PROFILE_WORST_TARGET for rows predicted from a quick profile)."""
    good = [row for row in rows if "error_text" not in row and row.get("report")]
    result = {"cells": len(rows), "cells_measured": len(good), "figures": {}}
    for key, target in TARGETS.items():
        errors = [abs(e) for e in (_error(row, key) for row in good) if e is not None]
        if not errors:
            continue
        median, worst = statistics.median(errors), max(errors)
        result["figures"][key] = {"median_abs_rel_error": median, "worst_abs_rel_error": worst,
                                  "n": len(errors), "median_target": target,
                                  "median_met": median <= target, "worst_target": worst_target,
                                  "worst_met": worst <= worst_target}
    return result


def _settings(row: dict) -> str:
    """The plan column: the knobs run, and for a timing probe which of the prefill chunks ran."""
    s = (row.get("report") or {}).get("settings") or {}
    tail = (row.get("report") or {}).get("tail")
    return (f"c={s.get('chunk_size')} G={s.get('heads_per_group')} R={s.get('resident_kv_heads')} "
            f"{s.get('attention_backend', '')}"
            + (f" (last {tail['chunks']} of {tail['total_chunks']} chunks)" if tail else ""))


def _cell_line(row: dict) -> str:
    if "error_text" in row:
        text = row["error_text"].strip().splitlines()[-1][:120] if row["error_text"].strip() else "failed"
        return f"| {row['cell']} | failed (exit {row.get('exit_code')}): {text} | | | | | | | |"
    parts = [row["cell"], _settings(row)]
    for key, scale, unit in (("prefill_s", 1, "s"), ("decode_s_per_token", 1000, "ms"), ("gpu_peak_bytes", 1 / GIB,
                                                                                        "GiB")):
        predicted, measured, error = _figure(row, "predicted", key), _figure(row, "measured", key), _error(row, key)
        parts.append("-" if predicted is None else f"{predicted * scale:.3g} → "
                     + ("-" if measured is None else f"{measured * scale:.3g} {unit}"))
        parts.append("-" if error is None else f"{error * 100:+.1f}%")
    parts.append(f"{row.get('wall_s')} s")
    return "| " + " | ".join(parts) + " |"


def _per_gpu_lines(rows: list[dict]) -> list[str]:
    """Cells run over several GPUs: each GPU's busy time, idle share and peak, predicted → measured."""
    lines = []
    for row in rows:
        gpus = (row.get("report") or {}).get("gpus") or []
        if len(gpus) < 2:
            continue
        if not lines:
            lines = ["", "Per GPU of the multi-GPU cells (predicted → measured):", "",
                     "| cell | GPU | layers | resident | prefill busy | decode busy / token | idle | peak | "
                     "H2D prefill | NUMA |", "|---|---|---|---|---|---|---|---|---|---|"]
        for g in gpus:
            def pair(p, m, scale=1.0, unit=""):
                return ("-" if p is None else f"{p * scale:.3g}") + " → " + ("-" if m is None else
                                                                             f"{m * scale:.3g} {unit}")
            h2d = ((g.get("transfers") or {}).get("prefill") or {}).get("h2d_bytes")
            lines.append(
                f"| {row['cell']} | {g['device']} | {g['first_layer']}-{g['first_layer'] + g['num_layers'] - 1} | "
                f"{g['resident_kv_heads']} | {pair(g.get('predicted_prefill_busy_s'), g.get('measured_prefill_busy_s'), 1, 's')} | "
                f"{pair(g.get('predicted_decode_busy_s_per_token'), g.get('measured_decode_busy_s_per_token'), 1000, 'ms')} | "
                f"{pair(g.get('predicted_idle_fraction'), g.get('measured_idle_fraction'), 100, '%')} | "
                f"{pair(g.get('predicted_gpu_peak_bytes'), g.get('measured_gpu_peak_bytes'), 1 / GIB, 'GiB')} | "
                f"{'-' if h2d is None else f'{h2d / GIB:.1f} GiB'} | {g.get('numa_node')} |")
    return lines


def render_markdown(rows: list[dict], stats: dict, title: str, device_name: str | None = None) -> str:
    reports = [r["report"] for r in rows if r.get("report")]
    gpu = next((rep["memory"].get("gpu_name") for rep in reports if (rep.get("memory") or {}).get("gpu_name")), None)
    versions = reports[0].get("versions", {}) if reports else {}
    gpu = device_name or gpu
    device = f"{gpu or reports[0].get('device', '?') if reports else '?'}, torch {versions.get('torch', '?')}, " \
             f"transformers {versions.get('transformers', '?')}, plans from profile " \
             f"{reports[0].get('plan_hardware', '?') if reports else '?'}"
    lines = [f"# {title}", "", f"Device: {device}. Dates: {', '.join(sorted({r.get('date', '?') for r in rows}))}.",
             "Relative error = measured / predicted − 1.", "",
             "| cell | plan | prefill pred → meas | err | decode pred → meas | err | peak GPU pred → meas | err | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [_cell_line(row) for row in rows]
    lines += _per_gpu_lines(rows)
    lines += ["", "| figure | median abs error | target | worst cell | target | n |", "|---|---|---|---|---|---|"]
    for key, fig in stats["figures"].items():
        lines.append(f"| {key} | {fig['median_abs_rel_error'] * 100:.1f}% | ≤ {fig['median_target'] * 100:.0f}% "
                     f"({'met' if fig['median_met'] else 'missed'}) | {fig['worst_abs_rel_error'] * 100:.1f}% | "
                     f"≤ {fig['worst_target'] * 100:.0f}% ({'met' if fig['worst_met'] else 'missed'}) | {fig['n']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Predicted (x) against measured (y) on log axes with y = x, one marker per cell, colour by model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    models = sorted({row["cell"].split(":")[0] for row in rows})
    for axis, (key, label, scale) in zip(axes, (("prefill_s", "prefill (s)", 1), ("decode_s_per_token",
                                                 "decode (ms/token)", 1000), ("gpu_peak_bytes", "peak GPU (GiB)",
                                                                             1 / GIB))):
        values = []
        for model, marker in zip(models, "os^Dv"):
            points = [(_figure(r, "predicted", key) * scale, _figure(r, "measured", key) * scale) for r in rows
                      if r["cell"].startswith(model + ":") and _figure(r, "predicted", key)
                      and _figure(r, "measured", key)]
            if points:
                axis.scatter(*zip(*points), marker=marker, label=model)
                values += [v for point in points for v in point]
        if values:
            low, high = min(values) / 1.3, max(values) * 1.3
            axis.plot([low, high], [low, high], "k--", linewidth=0.8, label="y = x")
            axis.set_xscale("log")
            axis.set_yscale("log")
        axis.set_xlabel(f"predicted {label}")
        axis.set_ylabel(f"measured {label}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summarize(paths: list[Path], name: str, out_dir: Path, device_name: str | None = None,
              quick_profile: bool = False, whole_only: bool = False) -> int:
    """``quick_profile``: the rows' predictions come from a quick profile (benchmarks/repredict.py --hw QUICK),
    judged against QUICK_PROFILE_WORST_TARGET for the worst cell. ``whole_only``: timing probes (a report with a
    ``tail`` block) are left out."""
    rows = load_rows(paths)
    if whole_only:
        rows = [row for row in rows if not (row.get("report") or {}).get("tail")]
    stats = statistics_of(rows, QUICK_PROFILE_WORST_TARGET if quick_profile else WORST_CELL_TARGET)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"summary": stats, "cells": rows}, indent=1) + "\n")
    (out_dir / f"{name}.md").write_text(render_markdown(rows, stats, name, device_name))
    plot(rows, out_dir / f"{name}.png")
    print(render_markdown(rows, stats, name, device_name))
    return 0
