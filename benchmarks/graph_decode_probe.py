"""What a decode token's linear layers cost inside a CUDA graph, against the profile's per-call matmul table; and the
GPU memory a fresh process holds outside the allocator once the kernels a run uses are loaded.

    python benchmarks/graph_decode_probe.py --out DIR [--hw PROFILE.json]

Linear: for each model shape (Llama-3-8B, Llama-3.2-1B), the decoder layers' seven projections at one token
(q, k, v, o, gate, up, down: x [1, h] @ W.T, bfloat16 weights of the model's shapes, random) for every layer,
captured once as a CUDA graph and replayed (CUDA events around 50 replays, the median of 5 windows); beside it the
same matmuls called eagerly one by one (event-timed per call), and what the profile's matmul table prices them at
(planner/layer_time.py linear_seconds). Graph decode in the validation matrix of 2026-12-01 (H200) ran 8-12% under
the prediction at every context: the table's m = 1 points are per-call timings.

Runtime memory: ``torch.cuda.mem_get_info`` used bytes minus the allocator's reserved bytes, after CUDA
initialisation, after a cuBLAS matmul, after flash and cuDNN attention at a prefill shape and after a decode-shaped
graph: each step's outside-allocator bytes (the runs' reports give 0.64 GB at start and 0.80 GB after their warm-up;
the profile's runtime_overhead_bytes is 1.44 GB).

Writes DIR/graph-decode-probe.json. Leaves out: attention and the elementwise kernels of decode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {  # hidden, kv_heads x head_dim, intermediate, layers
    "llama-3-8b": (4096, 8 * 128, 14336, 32),
    "llama-3.2-1b": (2048, 8 * 64, 8192, 16),
}


def outside_allocator_bytes() -> int:
    free, total = torch.cuda.mem_get_info()
    return int(total - free - torch.cuda.memory_reserved())


def layer_weights(hidden: int, kv: int, inter: int) -> list[torch.Tensor]:
    """[out, in] weights of q, k, v, o, gate, up, down."""
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden),
              (hidden, inter)]
    return [torch.randn(shape, dtype=torch.bfloat16, device="cuda") * 0.02 for shape in shapes]


def token_linears(x: torch.Tensor, x_inter: torch.Tensor, layers: list[list[torch.Tensor]]) -> None:
    for weights in layers:
        for i, weight in enumerate(weights):
            torch.nn.functional.linear(x_inter if i == 6 else x, weight)


def time_events(fn, repeats: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def probe_linear(name: str, profile) -> dict:
    hidden, kv, inter, count = SHAPES[name]
    layers = [layer_weights(hidden, kv, inter) for _ in range(count)]
    x = torch.randn(1, hidden, dtype=torch.bfloat16, device="cuda")
    x_inter = torch.randn(1, inter, dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            token_linears(x, x_inter, layers)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        token_linears(x, x_inter, layers)
    for _ in range(5):
        graph.replay()
    graph_s = statistics.median(time_events(graph.replay, 50) for _ in range(5))
    eager_s = statistics.median(time_events(lambda: token_linears(x, x_inter, layers), 20) for _ in range(5))
    per_call = {}
    for i, label in enumerate(("q", "k", "v", "o", "gate", "up", "down")):
        weight = layers[0][i]
        source = x_inter if i == 6 else x
        per_call[label] = statistics.median(
            time_events(lambda: torch.nn.functional.linear(source, weight), 200) for _ in range(3))
    weight_bytes = sum(w.numel() * w.element_size() for w in layers[0]) * count
    result = {"model": name, "layers": count, "weight_bytes": weight_bytes, "graph_s_per_token": graph_s,
              "eager_s_per_token": eager_s, "graph_bytes_per_s": weight_bytes / graph_s,
              "eager_per_call_s": per_call}
    if profile is not None:
        from planner.model_spec import load_model_spec
        from planner.layer_time import linear_seconds
        from planner.hw_lookup import RateLookup
        import numpy as np
        model = load_model_spec(name)
        lookup = RateLookup(profile)
        result["planner_linear_s_per_token"] = float(
            linear_seconds(model, lookup, np.array([1.0]), 2)[0]) * model.num_hidden_layers
    del layers, graph
    torch.cuda.empty_cache()
    return result


def probe_memory() -> list[dict]:
    steps = [{"after": "init", "outside_allocator_bytes": outside_allocator_bytes()}]
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    (a @ a).sum().item()
    steps.append({"after": "cuBLAS matmul", "outside_allocator_bytes": outside_allocator_bytes()})
    q = torch.randn(1, 32, 4096, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, 32, 8192, 128, dtype=torch.bfloat16, device="cuda")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        torch.nn.functional.scaled_dot_product_attention(q, k, k).sum().item()
    steps.append({"after": "flash attention", "outside_allocator_bytes": outside_allocator_bytes()})
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, k, k).sum().item()
        steps.append({"after": "cuDNN attention", "outside_allocator_bytes": outside_allocator_bytes()})
    except RuntimeError as exc:
        steps.append({"after": "cuDNN attention", "error": str(exc).splitlines()[0][:200]})
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--hw", default=None, help="profile JSON whose matmul table prices the same linears")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.cuda.init()
    memory = probe_memory()                      # first, in a fresh process
    profile = None
    if args.hw:
        from hwprofiles.catalog import load_profile
        profile = load_profile(args.hw)
    linear = []
    for name in SHAPES:
        linear.append(probe_linear(name, profile))
        print(json.dumps(linear[-1]), flush=True)
    memory.append({"after": "decode graphs", "outside_allocator_bytes": outside_allocator_bytes()})
    for step in memory:
        print(step, flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "linear": linear, "runtime_memory": memory}
    (args.out / "graph-decode-probe.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
