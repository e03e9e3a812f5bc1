"""PNG plots of the planner: the sweep (GPU memory per strategy and predicted prefill / decode against
context) and the roofline (the machine's compute, HBM and PCIe ceilings with the plan's prefill and decode
operating points). matplotlib is imported inside the functions (Agg backend): importing this module is free.

Operating points (FLOPs and bytes from the model's shape, docs/how-it-works.md):
    prefill FLOPs = L (2 P_layer N + 4 H_q d N (N + 1) / 2)          N = context; causal pairs sum to N(N+1)/2
    prefill intensity = FLOPs / PCIe bytes (host->GPU + GPU->host) when anything is offloaded, else FLOPs /
                        (weights + KV written) bytes
    decode FLOPs / token = 2 P + 4 H_q d s L;  bytes = weights + every KV byte read (HBM and PCIe)
Leaves out: the executor's measured points (executor/report/plots.py draws those next to these).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.plan import Plan
from planner.units import GIB


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def operating_points(plan: Plan) -> dict[str, tuple[float, float, str]]:
    """{'prefill': (FLOP per byte, FLOP/s achieved, which bytes), 'decode': (...)} of the plan."""
    model, terms = plan.model, plan.predicted.terms
    layers, head_dim, q_heads = model.num_hidden_layers, model.head_dim, model.num_attention_heads
    n = plan.context_tokens
    elem = 4 if plan.dtype == "float32" else 2
    prefill_flops = layers * (2.0 * model.layer_param_count * n + 4.0 * q_heads * head_dim * n * (n + 1) / 2)
    pcie_bytes = terms.get("prefill_h2d_bytes", 0.0) + terms.get("prefill_d2h_bytes", 0.0)
    if pcie_bytes > 0:
        prefill_point = (prefill_flops / pcie_bytes, prefill_flops / plan.predicted.prefill_s, "PCIe bytes")
    else:
        hbm_bytes = model.param_count * elem + model.kv_bytes_per_token(elem) * n
        prefill_point = (prefill_flops / hbm_bytes, prefill_flops / plan.predicted.prefill_s, "HBM bytes")
    past = n + plan.decode_tokens / 2
    decode_flops = 2.0 * model.param_count + 4.0 * q_heads * head_dim * past * layers
    decode_bytes = model.param_count * elem + model.kv_bytes_per_token(elem) * past
    decode_point = (decode_flops / decode_bytes, decode_flops / plan.predicted.decode_s_per_token, "bytes read")
    return {"prefill": prefill_point, "decode": decode_point}


def plot_roofline(plan: Plan, path: Path) -> Path:
    """Log-log roofline of the plan's hardware with the plan's prefill and decode points."""
    import numpy as np

    plt = _pyplot()
    hw = plan.hardware
    intensity = np.logspace(-1, 6, 200)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.loglog(intensity, np.minimum(hw.matmul_flops_per_s, intensity * hw.hbm_bytes_per_s), label=
              f"HBM {hw.hbm_bytes_per_s / 1e12:.2f} TB/s / matmul {hw.matmul_flops_per_s / 1e12:.0f} TFLOP/s")
    ax.loglog(intensity, np.minimum(hw.matmul_flops_per_s, intensity * hw.pcie_h2d_bytes_per_s),
              label=f"PCIe host->GPU {hw.pcie_h2d_bytes_per_s / 1e9:.0f} GB/s")
    ax.axhline(hw.attention_flops_per_s, linestyle="--", color="grey",
               label=f"attention {hw.attention_flops_per_s / 1e12:.0f} TFLOP/s")
    for name, (x, y, per) in operating_points(plan).items():
        ax.scatter([x], [y], s=60, zorder=5)
        ax.annotate(f"{name} ({y / 1e12:.1f} TFLOP/s, per {per})", (x, y), textcoords="offset points",
                    xytext=(6, -12))
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(f"{plan.model.name} on {hw.name}: {plan.strategy}, context {plan.context_tokens:,}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_sweep(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels: GPU peak (GiB) of each strategy's best point, and the chosen plan's predicted prefill (s)
    and decode (ms/token), against context."""
    plt = _pyplot()
    ok = [r for r in rows if not r.get("error")]
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    strategies = sorted({s for r in ok for s in r["strategy_gpu_peak_bytes"]})
    for strategy in strategies:
        xs = [r["context_tokens"] for r in ok if strategy in r["strategy_gpu_peak_bytes"]]
        ys = [r["strategy_gpu_peak_bytes"][strategy] / GIB for r in ok if strategy in r["strategy_gpu_peak_bytes"]]
        mem_ax.loglog(xs, ys, marker="o", label=strategy)
    if ok:
        mem_ax.axhline(ok[0]["gpu_budget_bytes"] / GIB if "gpu_budget_bytes" in ok[0] else 0, color="k",
                       linestyle=":", label="GPU budget")
    mem_ax.set_xlabel("context (tokens)")
    mem_ax.set_ylabel("peak GPU memory (GiB)")
    mem_ax.set_title("GPU memory per strategy")
    mem_ax.legend(fontsize=8)
    mem_ax.grid(True, which="both", alpha=0.3)
    xs = [r["context_tokens"] for r in ok]
    time_ax.loglog(xs, [r["prefill_s"] for r in ok], marker="o", label="prefill (s)")
    time_ax.loglog(xs, [r["decode_s_per_token"] * 1e3 for r in ok], marker="s", label="decode (ms / token)")
    time_ax.set_xlabel("context (tokens)")
    time_ax.set_title("predicted time of the chosen plan")
    time_ax.legend(fontsize=8)
    time_ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
