"""Turn the sections' measurements into a HardwareProfile: scalars from the tables, metadata, catalog names.

Scalar fields (what the planner falls back to where it does not interpolate in a table):
- ``matmul_flops_per_s``: the best rate among shapes of >= 1e11 FLOPs (prefill-sized), else the best;
- ``attention_flops_per_s``: median rate of the flash (lower-right causal) points with q_len >= 1024, the
  backend every GPU has; cuDNN points stay in the table for the planner to pick;
- ``hbm_bytes_per_s``: read-only streaming rate (hbm.py says why not the copy);
- ``pcie_*``: pinned copies at the largest size measured; bidir is the sum of both directions;
- ``pin_bytes_per_s``: cudaHostRegister (the executor's method) at the largest size, else torch's pinning;
- ``host_mem_bytes``: MemAvailable when profiled, at most 0.9 x MemTotal (MemTotal goes in the notes);
- ``executor_*_host_s``: as executor_host.py fitted them (None where not measured).
Peaks (``*_peak_*``) are datasheet figures: copied from the catalog's datasheet profile of the same GPU
when there is one, else the measured best (noted).

CPU-only profiles (no GPU) describe the CPU as the device: matmul/attention from the CPU tables, "HBM"
and every "PCIe" figure = the host memcpy rate (a host-to-host copy is what moving KV costs there),
pcie_generation 0 (no link), gpu_mem_bytes = host RAM, runtime overhead 0, pinning = allocate+touch rate.
Leaves out: measuring (the section modules) and printing (summary.py).
"""

from __future__ import annotations

import platform
import re
import socket
import statistics
from datetime import datetime, timezone
from typing import Optional

from hwprofiles.catalog import known_profiles, load_profile
from hwprofiles.schema import AllReducePoint, AttentionPoint, HardwareProfile, MeasurementInfo, TransferPoint

HOST_MEM_SHARE = 0.9  # of MemTotal at most: leave the OS and the process itself room

# CUDA device name patterns -> datasheet profile names in hwprofiles/catalog (first match wins).
DATASHEET_NAMES: tuple[tuple[str, str], ...] = (
    (r"H100.*(PCIe|NVL)", "h100-pcie"),
    (r"H100", "h100-sxm"),
    (r"H200", "h200"),
    (r"A100.*80\s*GB", "a100-80gb"),
    (r"A100", "a100-40gb"),
    (r"RTX 4090", "rtx-4090"),
    (r"RTX 3090", "rtx-3090"),
    (r"RTX A6000", "a6000"),
    (r"L40S", "l40s"),
)


def datasheet_name(gpu_name: str) -> Optional[str]:
    """Catalog name of the datasheet profile for a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100-sxm")."""
    for pattern, name in DATASHEET_NAMES:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return name
    return None


def slug(text: str) -> str:
    """Lower-case catalog-safe name: "NVIDIA GeForce GTX 1080" -> "nvidia-geforce-gtx-1080"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# Measured profile names whose stem differs from the datasheet profile's name (the datasheet "h200" is the SXM
# card; the measured profiles say so: h200-sxm-quick, h200-sxm-measured). The NVL (PCIe) card keeps its own slug.
MEASURED_STEMS = {"h200": "h200-sxm"}


def default_profile_name(gpu_name: str, on_gpu: bool) -> str:
    """"h100-sxm-measured" / "h200-sxm-measured" for a known GPU, "<slug>-measured" otherwise, "cpu-measured"
    without a GPU."""
    if not on_gpu:
        return "cpu-measured"
    if re.search(r"H200.*NVL", gpu_name, flags=re.IGNORECASE):
        return f"{slug(gpu_name)}-measured"
    stem = datasheet_name(gpu_name)
    return f"{MEASURED_STEMS.get(stem, stem) if stem else slug(gpu_name)}-measured"


def load_datasheet(gpu_name: str) -> Optional[HardwareProfile]:
    """The catalog's datasheet profile of this GPU, or None (unknown GPU, or not in the catalog yet)."""
    name = datasheet_name(gpu_name)
    if name is None or name not in known_profiles():
        return None
    profile = load_profile(name)
    return profile if profile.origin == "datasheet" else None


def _largest(points: list[TransferPoint], direction: str, kind: str) -> Optional[float]:
    chosen = [p for p in points if p.direction == direction and p.host_memory == kind and p.concurrent_with == "none"]
    return max(chosen, key=lambda p: p.size_bytes).bytes_per_s if chosen else None


def _attention_scalar(points: list[AttentionPoint]) -> Optional[float]:
    for backend in ("flash", "cpu"):
        rates = [p.flops_per_s for p in points if p.backend == backend and p.q_len >= 1024]
        rates = rates or [p.flops_per_s for p in points if p.backend == backend and p.q_len > 1]
        if rates:
            return statistics.median(rates)
    return None


def _matmul_scalar(results: dict) -> float:
    points = results["matmul"]
    large = [p.flops_per_s for p in points if 2 * p.m * p.n * p.k >= 1e11]
    return max(large or [p.flops_per_s for p in points])


def _pin_rate(results: dict) -> float:
    for method in ("cuda_host_register", "torch_pin_memory"):
        chosen = [p for p in results.get("pinning", []) if p.method == method]
        if chosen:
            largest = max(chosen, key=lambda p: p.size_bytes)
            return largest.size_bytes / largest.seconds
    return results["touch_bytes_per_s"]


def measurement_info(results: dict, mode: str, notes: list[str]) -> MeasurementInfo:
    versions = results["versions"]
    return MeasurementInfo(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        hostname=socket.gethostname(),
        gpu_name=results["gpu_name"],
        driver_version=versions.get("driver", ""),
        torch_version=versions.get("torch", ""),
        cuda_version=versions.get("cuda", ""),
        cudnn_version=versions.get("cudnn", ""),
        mode=mode,
        notes=" | ".join(notes),
    )


def _gpu_fields(results: dict, datasheet: Optional[HardwareProfile], notes: list[str]) -> dict:
    """The scalars that differ between a GPU profile and a CPU-only one."""
    host_rate = results["host"]["memcpy_bytes_per_s"]
    if not results["on_gpu"]:
        return dict(
            gpu_mem_bytes=results["host"]["mem_total_bytes"],
            hbm_bytes_per_s=results["hbm"].get("read_bytes_per_s", host_rate),
            pcie_generation=0,
            pcie_h2d_bytes_per_s=host_rate,
            pcie_d2h_bytes_per_s=host_rate,
            pcie_bidir_total_bytes_per_s=host_rate,
            pcie_h2d_pageable_bytes_per_s=host_rate,
            runtime_overhead_bytes=0,
        )
    transfers = results["pcie"]
    h2d = _largest(transfers, "h2d", "pinned")
    return dict(
        gpu_mem_bytes=results["gpu_total_bytes"],  # what the device reports, not the marketing figure
        hbm_bytes_per_s=results["hbm"].get("read_bytes_per_s")
        or (datasheet.hbm_bytes_per_s if datasheet else results["host"]["memcpy_bytes_per_s"]),
        pcie_generation=datasheet.pcie_generation if datasheet else results.get("pcie_generation", 0),
        pcie_lanes=datasheet.pcie_lanes if datasheet else results.get("pcie_lanes", 16),
        pcie_h2d_bytes_per_s=h2d,
        pcie_d2h_bytes_per_s=_largest(transfers, "d2h", "pinned"),
        pcie_bidir_total_bytes_per_s=_largest(transfers, "bidir", "pinned") or h2d,
        pcie_h2d_pageable_bytes_per_s=_largest(transfers, "h2d", "pageable"),
        runtime_overhead_bytes=results["runtime_memory"]["runtime_overhead_bytes"],
        sm_count=results.get("sm_count") or (datasheet.sm_count if datasheet else None),
    )


def build_profile(results: dict, *, name: str, mode: str, notes: list[str]) -> HardwareProfile:
    """A measured HardwareProfile from the runner's ``results`` dict (see runner.collect)."""
    notes = list(notes)
    datasheet = load_datasheet(results["gpu_name"]) if results["on_gpu"] else None
    matmul_rate = _matmul_scalar(results)
    attention_rate = _attention_scalar(results["attention"]["points"]) or matmul_rate / 2
    hbm = results["hbm"]
    if datasheet is None:
        notes.append("peak fields are the measured best (no datasheet profile of this device in the catalog)")
    if "copy_bytes_per_s" in hbm:
        notes.append(f"device copy {hbm['copy_bytes_per_s'] / 1e9:.0f} GB/s per direction; hbm_bytes_per_s is "
                     "the read-only rate")
    host = results["host"]
    notes.append(f"host RAM total {host['mem_total_bytes']} B; {host['cpu_count']} CPUs: {host['cpu_name']}")
    if "runtime_memory" in results:
        memory = results["runtime_memory"]
        notes.append("runtime memory: " + ", ".join(f"{k} {v}" for k, v in memory.items()))
    fields = _gpu_fields(results, datasheet, notes)
    how = "headplan profile (executor/profiler)" + ("" if results["on_gpu"] else ": CPU only, no GPU found")
    return HardwareProfile(
        name=name,
        origin="measured",
        source=f"{how}, {mode} mode, on {socket.gethostname()} ({platform.platform()})",
        gpu_name=results["gpu_name"],
        matmul_peak_flops_per_s=datasheet.matmul_peak_flops_per_s if datasheet else matmul_rate,
        matmul_flops_per_s=matmul_rate,
        attention_flops_per_s=attention_rate,
        hbm_peak_bytes_per_s=datasheet.hbm_peak_bytes_per_s if datasheet else fields["hbm_bytes_per_s"],
        host_mem_bytes=min(host["mem_available_bytes"], int(HOST_MEM_SHARE * host["mem_total_bytes"])),
        host_memcpy_bytes_per_s=host["memcpy_bytes_per_s"],
        pin_bytes_per_s=_pin_rate(results),
        launch_overhead_s=results["launch"]["launch_overhead_s"],
        attention_call_overhead_s=results["launch"]["attention_call_overhead_s"],
        cudnn_graph_build_s=results["attention"]["cudnn_graph_build_s"],
        cudnn_causal_graph_build_s=results["attention"].get("cudnn_causal_graph_build_s"),
        elementwise_bytes_per_s=results.get("elementwise", {}).get("elementwise_bytes_per_s"),
        compiled_elementwise_bytes_per_s=results.get("elementwise", {}).get("compiled_elementwise_bytes_per_s"),
        flex_runtime_overhead_bytes=results.get("flex_runtime_overhead_bytes"),
        sustained_table=results.get("sustained", {}).get("sustained_table", []),
        graph_decode_table=results.get("graph_decode", []),
        **{k: results["disk"][k] for k in ("disk_write_bytes_per_s", "disk_read_bytes_per_s", "disk_path")
           if k in results.get("disk", {})},
        **results.get("executor_host", {}),
        **results.get("host_attention", {}),
        attention_table=results["attention"]["points"],
        transfer_table=results.get("pcie", []),
        matmul_table=results["matmul"],
        pinning_table=results.get("pinning", []),
        allreduce_table=[AllReducePoint(**p) for p in results["allreduce"]] if results.get("allreduce") else None,
        measurement=measurement_info(results, mode, notes),
        **fields,
    )
