"""Build hwprofiles/catalog/h100-sxm-imported.json from the H100 measurements in ../shared/measurements/.

Reads h100-limits-2026-11-22.json (matmul, HBM, PCIe by size, pinning, host RAM),
h100-attention-backends-2026-11-22.json (flash and cuDNN attention by shape) and
h100-cudnn-split-2026-11-22.json (cuDNN chunk-vs-past, square causal, graph-build cost), plus two figures
recorded from other runs on the same machine (2026-11-22): cudaHostRegister of 16 GiB in 5.3 s, and the
transformers decode step of 24.5 ms (h100-transformers-baseline-2026-11-22.json) that calibrates the launch
overhead. Writes a profile with origin "measured", measurement.mode "imported". Never touches a GPU.

Run:  python benchmarks/import_shared_measurements.py [--shared DIR] [--out FILE]
The profiler (headplan profile) writes a full measured profile in the same schema later.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwprofiles.catalog import CATALOG_DIR, write_profile  # noqa: E402
from hwprofiles.schema import AttentionPoint, HardwareProfile, MatmulPoint, MeasurementInfo  # noqa: E402
from hwprofiles.schema import PinningPoint, TransferPoint  # noqa: E402
from planner.host_time import HOST_OPS_PER_LAYER, HOST_OPS_PER_MODEL, HOST_OPS_RESIDENT  # noqa: E402
from planner.units import GIB, KIB, MIB  # noqa: E402

TERA = 1e12
GIGA = 1e9
DATE = "2026-11-22"
H100_SXM_SM_COUNT = 132  # NVIDIA H100 Tensor Core GPU Architecture whitepaper: 132 SMs on the SXM5 part
H100_SXM_DATASHEET = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
HOST_USABLE_FRACTION = 0.9          # of MemTotal, for the pinned KV store (the OS and the process keep the rest)
RUNTIME_OVERHEAD_BYTES = 1 * GIB    # estimate (CUDA context + cuBLAS/cuDNN workspaces + allocator slack)
DECODE_STEP_KV_ON_GPU_S = 24.5e-3   # Llama-3-8B, transformers, chunked 32K with the KV on the GPU
LLAMA3_8B_LAYERS = 32

_ATTN_KEY = re.compile(r"^d(\d+)_hq(\d+)_hk(\d+)_q(\d+)_k(\d+)_(.+)_tflops$")


def _attention_backend_points(data: dict) -> list[AttentionPoint]:
    """Points of h100-attention-backends: SDPA flash / cuDNN non-causal, aten flash lower-right causal (GQA)."""
    kinds = {
        "FLASH_ATTENTION_noncausal": ("flash", False),
        "CUDNN_ATTENTION_noncausal": ("cudnn", False),
        "aten_flash_lowerright_gqa": ("flash", True),
    }
    points = []
    for key, value in data.items():
        match = _ATTN_KEY.match(key)
        if not match or not isinstance(value, (int, float)) or match.group(6) not in kinds:
            continue
        head_dim, q_heads, kv_heads, q_len, k_len = (int(match.group(i)) for i in range(1, 6))
        backend, causal = kinds[match.group(6)]
        points.append(AttentionPoint(backend=backend, head_dim=head_dim, q_heads=q_heads, kv_heads=kv_heads,
                                     q_len=q_len, k_len=k_len, causal=causal, flops_per_s=value * TERA))
    return points


def _cudnn_split_points(data: dict) -> list[AttentionPoint]:
    """Points of h100-cudnn-split: one KV group (4 q heads) 10K x past, a whole layer packed, square causal."""
    group, chunk, head_dim = 4, 10240, 128
    points = []

    def add(backend: str, q_heads: int, kv_heads: int, k_len: int, causal: bool, key: str) -> None:
        value = data.get(key)
        if isinstance(value, (int, float)):
            points.append(AttentionPoint(backend=backend, head_dim=head_dim, q_heads=q_heads, kv_heads=kv_heads,
                                         q_len=chunk, k_len=k_len, causal=causal, flops_per_s=value * TERA))

    for past in (131072, 524288):
        add("cudnn", group, 1, past, False, f"cudnn_packed_past{past}_tflops")
        add("cudnn", group, 1, past, False, f"cudnn_gqa_direct_past{past}_tflops")
        add("cudnn", 8 * group, 8, past, False, f"cudnn_packed_layer_past{past}_tflops")
        add("flash", group, 1, past, False, f"flash_gqa_past{past}_tflops")
    add("flash", group, 1, chunk, True, "flash_chunk_causal_tflops")
    add("cudnn", group, group, chunk, True, "cudnn_chunk_causal_tflops")
    return points


def _transfer_points(limits: dict) -> list[TransferPoint]:
    points = []
    for key, value in limits.items():
        match = re.match(r"^pcie_(h2d|d2h)_(pinned|pageable)_(\d+)MB_gbps$", key)
        if match:
            points.append(TransferPoint(direction=match.group(1), host_memory=match.group(2),
                                        size_bytes=int(match.group(3)) * MIB, bytes_per_s=value * GIGA))
    points.append(TransferPoint(direction="bidir", host_memory="pinned", size_bytes=1024 * MIB,
                                bytes_per_s=limits["pcie_bidir_total_gbps"] * GIGA))
    return points


def build_profile(shared: Path) -> HardwareProfile:
    limits = json.loads((shared / "h100-limits-2026-11-22.json").read_text())
    backends = json.loads((shared / "h100-attention-backends-2026-11-22.json").read_text())
    split = json.loads((shared / "h100-cudnn-split-2026-11-22.json").read_text())
    mem_total_bytes = int(limits["memtotal"].split()[1]) * KIB
    graph_build_s = (statistics.median(split["cudnn_new_shape_first_call_ms"])
                     - statistics.median(split["cudnn_same_shape_second_call_ms"])) / 1e3
    launch_s = DECODE_STEP_KV_ON_GPU_S / (LLAMA3_8B_LAYERS * (HOST_OPS_PER_LAYER + HOST_OPS_RESIDENT)
                                          + HOST_OPS_PER_MODEL)
    register_16gib_s = 5.3
    source = (
        "Imported from ../shared/measurements/h100-{limits,attention-backends,cudnn-split}-2026-11-22.json "
        "(lent H100 80GB HBM3, torch 2.11.0+cu130) by benchmarks/import_shared_measurements.py. Peaks: "
        f"{H100_SXM_DATASHEET}. Not measured there, estimated: runtime_overhead_bytes (1 GiB: CUDA context "
        "+ workspaces + allocator slack); launch_overhead_s calibrated so that a Llama-3-8B transformers decode "
        "step with the KV on the GPU costs the measured 24.5 ms; host_mem_bytes = 0.9 x MemTotal; "
        "cuda_host_register 16 GiB in 5.3 s (another run on that machine, 2026-11-22); the pin_alloc_1GiB "
        "point (0.0 s) is dropped as a zero."
    )
    return HardwareProfile(
        name="h100-sxm-imported", origin="measured", source=source, gpu_name=limits["gpu"],
        gpu_mem_bytes=round(limits["gpu_mem_gib"] * GIB),
        sm_count=H100_SXM_SM_COUNT,
        matmul_peak_flops_per_s=989.4 * TERA, matmul_flops_per_s=limits["matmul_bf16_tflops"] * TERA,
        attention_flops_per_s=limits["sdpa_chunk10k_ctx128k_all_heads_tflops"] * TERA,
        hbm_peak_bytes_per_s=3.35 * TERA, hbm_bytes_per_s=limits["hbm_copy_gbps_rw"] * GIGA,
        pcie_generation=5, pcie_lanes=16,
        pcie_h2d_bytes_per_s=limits["pcie_h2d_pinned_2048MB_gbps"] * GIGA,
        pcie_d2h_bytes_per_s=limits["pcie_d2h_pinned_2048MB_gbps"] * GIGA,
        pcie_bidir_total_bytes_per_s=limits["pcie_bidir_total_gbps"] * GIGA,
        pcie_h2d_pageable_bytes_per_s=limits["pcie_h2d_pageable_2048MB_gbps"] * GIGA,
        host_mem_bytes=int(mem_total_bytes * HOST_USABLE_FRACTION),
        pin_bytes_per_s=16 * GIB / register_16gib_s,
        runtime_overhead_bytes=RUNTIME_OVERHEAD_BYTES, launch_overhead_s=round(launch_s, 9),
        attention_call_overhead_s=0.0, cudnn_graph_build_s=round(graph_build_s, 4),
        attention_table=_attention_backend_points(backends) + _cudnn_split_points(split),
        transfer_table=_transfer_points(limits),
        matmul_table=[
            MatmulPoint(m=8192, n=8192, k=8192, flops_per_s=limits["matmul_bf16_tflops"] * TERA),
            MatmulPoint(m=10240, n=14336, k=4096, flops_per_s=limits["matmul_10k_4096_14336_tflops"] * TERA),
        ],
        pinning_table=[
            PinningPoint(method="torch_pin_memory", size_bytes=8 * GIB, seconds=limits["pin_alloc_8GiB_s"]),
            PinningPoint(method="cuda_host_register", size_bytes=16 * GIB, seconds=register_16gib_s),
        ],
        measurement=MeasurementInfo(
            date=DATE, gpu_name=limits["gpu"], torch_version=limits["torch"], mode="imported",
            notes=f"transformers {limits['transformers']}, flash_attn {limits['flash_attn']}, "
                  f"{limits['cpu_count']} CPUs, {limits['memtotal']}"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "measurements")
    parser.add_argument("--out", type=Path, default=CATALOG_DIR / "h100-sxm-imported.json")
    args = parser.parse_args()
    profile = write_profile(build_profile(args.shared), args.out)
    print(f"wrote {args.out}: {len(profile.attention_table)} attention, {len(profile.transfer_table)} transfer, "
          f"{len(profile.matmul_table)} matmul points; hash {profile.content_hash}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
