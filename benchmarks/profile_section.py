"""Measure one section of the profiler on this machine and add its figure to an existing profile.

    python benchmarks/profile_section.py --section elementwise --update hwprofiles/catalog/h100-sxm-measured.json \
        --out $OUT/h100-sxm-measured.json
    python benchmarks/profile_section.py --section host-attention --update hwprofiles/catalog/h200-sxm-quick.json \
        --out $OUT/h200-sxm-quick.json
    python benchmarks/profile_section.py --section flex --quick --update h200-sxm-quick --out $OUT/h200-flex.json

For fields added to the profiler after a profile was taken (``elementwise_bytes_per_s`` and the compiled path's
``compiled_elementwise_bytes_per_s``; ``runtime-memory``: ``runtime_overhead_bytes`` measured in this fresh
process, after a short warm-up of the libraries a run loads; the host share's
``host_read_bytes_per_s``, ``cpu_attention_table``, ``host_concurrency_table``, ``host_share_handoff_s``,
``host_attention_call_s``; ``flex``:
the FlexAttention points at Gemma-2's shapes, executor/profiler/attention_flex.py, which replace the profile's flex
points in its attention table; ``sustained``: the prefill's attention and matmul rates sustained for seconds against
their bursts, executor/profiler/sustained.py; ``cudnn-causal``: the square causal cuDNN points of the chunk part,
executor/profiler/attention.py square_causal_sweep, which replace the profile's; ``graph-decode``: the replayed
decode step per model layer shape, executor/profiler/graph_decode.py): the section runs with the full preset (``--quick``: the quick one) on the first
GPU, the figure is written into a copy of the profile with a line in its measurement notes saying when and on which
GPU it was taken (it comes from a different process, possibly a different machine of the same kind, than the rest
of the profile), and the content hash is recomputed. Refuses a profile of another GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def _as_is(profile, measured: dict) -> dict:
    return measured


def _elementwise(profile, measured: dict) -> dict:
    # no compiler here (noted): the planner prices eager
    return {"compiled_elementwise_bytes_per_s": None, **measured}


def _replacing(backend: str, causal=None):
    """A section whose attention points replace the profile's points of ``backend`` (of that causality if given)."""
    def merge(profile, points: list) -> dict:
        kept = [p for p in profile.attention_table
                if not (p.backend == backend and (causal is None or p.causal == causal))]
        return {"attention_table": kept + points}
    return merge


def _flex(profile, measured: dict) -> dict:
    return {**_replacing("flex")(profile, measured["points"]),
            "flex_runtime_overhead_bytes": measured["flex_runtime_overhead_bytes"]}


# section -> (module of executor/profiler, its function, the profile fields it sets, how its result becomes them)
SECTIONS = {"elementwise": ("elementwise", "measure_elementwise", ("elementwise_bytes_per_s",
                                                                   "compiled_elementwise_bytes_per_s"), _elementwise),
            "runtime-memory": ("runtime", "measure_runtime_memory_alone", ("runtime_overhead_bytes",), _as_is),
            "host-attention": ("host_attention", "measure_host_attention",
                               ("host_read_bytes_per_s", "host_read_threads", "cpu_attention_table",
                                "host_concurrency_table", "host_share_handoff_s", "host_attention_call_s"), _as_is),
            "flex": ("attention_flex", "measure_flex_section", ("attention_table", "flex_runtime_overhead_bytes"),
                     _flex),
            "sustained": ("sustained", "measure_sustained", ("sustained_table",), _as_is),
            "cudnn-causal": ("attention", "measure_square_causal_section", ("attention_table",),
                             _replacing("cudnn", causal=True)),
            "graph-decode": ("graph_decode", "measure_graph_decode", ("graph_decode_table",),
                             lambda profile, points: {"graph_decode_table": points})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(SECTIONS), required=True)
    parser.add_argument("--update", required=True, help="profile file or catalog name to add the figure to")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="the quick preset's sizes and time budget")
    args = parser.parse_args()
    import torch

    import importlib

    from executor.profiler.config import choose_preset
    from executor.profiler.context import ProfileContext
    from executor.profiler.runner import resolve_device
    from hwprofiles import load_profile
    from hwprofiles.catalog import write_profile

    profile = load_profile(args.update)
    device = resolve_device(None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if name != profile.gpu_name:
        print(f"profile_section: {args.update} is for {profile.gpu_name}, this machine has {name}", file=sys.stderr)
        return 2
    ctx = ProfileContext(device=device, preset=choose_preset(quick=args.quick, sizes="default",
                                                             on_gpu=device.type == "cuda"), stream=sys.stdout)
    module_name, function, fields, merge = SECTIONS[args.section]
    module = importlib.import_module(f"executor.profiler.{module_name}")
    measured = merge(profile, getattr(module, function)(ctx))
    info = profile.measurement
    line = (f"{', '.join(fields)} measured on {time.strftime('%Y-%m-%d')} on {name} by "
            f"benchmarks/profile_section.py, in a separate process from the rest of this profile")
    update = {field: measured[field] for field in fields}
    update["measurement"] = info.model_copy(update={"notes": (info.notes + "; " if info.notes else "") + line})
    # model_copy does not validate: round-trip through the schema so tables become their point types
    updated = type(profile).model_validate({**profile.model_dump(), **{k: (
        [p.model_dump() for p in v] if isinstance(v, list) else v) for k, v in update.items()
        if k != "measurement"}, "measurement": update["measurement"].model_dump()})
    write_profile(updated, args.out)
    for field in fields:
        value = measured[field]
        shown = (f"{len(value)} points" if isinstance(value, list) else value if value is None else f"{value:.4g}")
        print(f"{field} = {shown}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
