"""Run a whole profile: pick the device and preset, run the sections in order, assemble the HardwareProfile.

Order (each section frees its memory before the next): runtime context baseline, host, matmul, device
memory, a layer's elementwise ops (elementwise.py), attention, the prefill's attention and matmuls sustained
for seconds against their burst rates (sustained.py: the power limit's clock), the executor's attention step (GPU, quick and
full only: attention_step.py), then on a GPU pinning (before any pinned allocation, so no cached block is
reused), PCIe, the host's share of decode attention (host_attention.py: host read, the CPU kernel by key length
and threads, DMA beside it, the hand-off), launch overhead, the executor's own host time per layer and group
(executor_host.py: the real executor on a tiny model), the replayed decode step per model layer shape
(graph_decode.py), and the runtime memory (after matmul and attention warmed the
libraries up); last, where several GPUs are visible, the all-reduce time by size over all of them (allreduce.py, in
processes of its own).
Without a GPU the GPU-only sections are skipped, noted, and the profile is CPU-only (assemble.py).
Leaves out: writing the file and the CLI (headplan/cmd_profile.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO

import torch

from executor.profiler import (allreduce, attention, attention_flex, attention_step, disk, elementwise, executor_host,
                               graph_decode, hbm, host, host_attention, matmul, pcie, pinning, runtime, sustained)
from executor.profiler.assemble import build_profile, default_profile_name, load_datasheet
from executor.profiler.config import choose_preset, with_model_shapes
from executor.profiler.context import ProfileContext
from hwprofiles.schema import HardwareProfile


@dataclass(frozen=True)
class ProfileOptions:
    """What ``headplan profile`` was asked for."""

    quick: bool = False
    sizes: str = "default"  # "default" | "tiny" (CI)
    device: Optional[str] = None  # "cuda", "cuda:1", "cpu"; None: the first GPU if there is one
    name: Optional[str] = None  # catalog name; None: from the GPU (assemble.default_profile_name)
    quiet: bool = False  # no progress lines
    models: tuple = ()  # planner.model_spec.ModelSpec: their (head dim, GQA ratio) shapes are measured too
    disk: Optional[str] = None  # folder whose disk bandwidth is measured (None: the working directory)


@dataclass(frozen=True)
class ProfileRun:
    profile: HardwareProfile
    datasheet: Optional[HardwareProfile]
    elapsed_s: float


class ProfileSetupError(ValueError):
    """A device the profiler cannot use (asked for CUDA where there is none, a bad device string)."""


def resolve_device(spec: Optional[str]) -> torch.device:
    """torch.device for ``--device`` (None: cuda:<current> if available, else cpu)."""
    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ProfileSetupError(f"bad --device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ProfileSetupError(f"--device {spec} asked for, but this torch sees no CUDA GPU")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ProfileSetupError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ProfileSetupError(f"--device {spec}: only cuda and cpu are supported")
    return device


def _nvml_facts(index: int) -> dict:
    """Driver version and PCIe link (max generation, width) from NVML where pynvml is installed."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        facts = {
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "pcie_generation": int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle)),
            "pcie_lanes": int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle)),
        }
        pynvml.nvmlShutdown()
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in facts.items()}
    except Exception:  # noqa: BLE001 - NVML is optional: any failure means "ask nvidia-smi"
        pass
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        return {"driver": output.splitlines()[0].strip()}
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}


def _versions(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "cudnn": ""}
    if torch.backends.cudnn.is_available():
        facts["cudnn"] = str(torch.backends.cudnn.version() or "")
    if device.type == "cuda":
        facts.update(_nvml_facts(device.index or 0))
    return facts


def _timed(ctx: ProfileContext, section: str, fn, *args):
    started_s = time.perf_counter()
    result = fn(ctx, *args)
    ctx.progress(section, "section done", f"{time.perf_counter() - started_s:.1f} s")
    ctx.free_memory()
    return result


def collect(ctx: ProfileContext) -> dict:
    """Run every section for ctx.device; the results dict that assemble.build_profile reads."""
    device = ctx.device
    results: dict = {"on_gpu": ctx.on_gpu, "versions": _versions(device)}
    if ctx.on_gpu:
        context_only_bytes = runtime.context_bytes(device)
        properties = torch.cuda.get_device_properties(device)
        results.update(gpu_name=properties.name, gpu_total_bytes=int(properties.total_memory),
                       sm_count=int(properties.multi_processor_count))
        for key in ("pcie_generation", "pcie_lanes"):
            if key in results["versions"]:
                results[key] = results["versions"].pop(key)
    else:
        results["gpu_name"] = f"CPU: {host.cpu_name()}"
        ctx.note("no GPU used: GPU sections (PCIe, pinning, cuDNN, runtime memory) skipped; CPU-only profile")
    results["host"] = _timed(ctx, "host", host.measure_host)
    results["matmul"] = _timed(ctx, "matmul", matmul.measure_matmul)
    results["hbm"] = _timed(ctx, "memory", hbm.measure_hbm)
    results["elementwise"] = _timed(ctx, "elementwise", elementwise.measure_elementwise)
    results["attention"] = _timed(ctx, "attention", attention.measure_attention)
    results["sustained"] = _timed(ctx, sustained.SECTION, sustained.measure_sustained)
    if ctx.on_gpu and ctx.preset.mode != "tiny":
        results["attention"]["points"] += _timed(ctx, attention_step.SECTION, attention_step.measure_attention_step)
        flex = _timed(ctx, attention_flex.SECTION, attention_flex.measure_flex_section)
        results["attention"]["points"] += flex["points"]
        results["flex_runtime_overhead_bytes"] = flex["flex_runtime_overhead_bytes"]
    else:
        ctx.note("attention flex table (attention_flex.py) skipped: " + ("no GPU" if not ctx.on_gpu else "tiny sizes"))
        ctx.note("attention step table (attention_step.py) skipped: " +
                 ("no GPU" if not ctx.on_gpu else "tiny sizes"))
    if ctx.on_gpu:
        results["pinning"] = _timed(ctx, "pinning", pinning.measure_pinning)
        results["pcie"] = _timed(ctx, "pcie", pcie.measure_pcie)
    else:
        results["touch_bytes_per_s"] = pinning.measure_touch_rate(ctx)
    results["host_attention"] = _timed(ctx, host_attention.SECTION, host_attention.measure_host_attention)
    results["graph_decode"] = _timed(ctx, graph_decode.SECTION, graph_decode.measure_graph_decode, ctx.models)
    results["launch"] = _timed(ctx, "runtime", runtime.measure_launch)
    results["executor_host"] = _timed(ctx, "executor", executor_host.measure_executor_host,
                                      results["launch"]["launch_overhead_s"])
    results["disk"] = _timed(ctx, "disk", disk.measure_disk, ctx.disk_path)
    if ctx.on_gpu:
        results["runtime_memory"] = runtime.measure_runtime_memory(ctx, context_only_bytes)
    results["allreduce"] = allreduce.measure_allreduce(ctx)  # None (noted) unless several GPUs are visible
    return results


def planned_name(options: ProfileOptions) -> str:
    """The profile's name before anything is measured (--name, else from the device's name), so that the output
    path can be checked first."""
    if options.name:
        return options.name
    device = resolve_device(options.device)
    if device.type != "cuda":
        return default_profile_name("", False)
    return default_profile_name(torch.cuda.get_device_properties(device).name, True)


def run_profile(options: ProfileOptions, stream: TextIO = sys.stderr) -> ProfileRun:
    """Measure this machine; returns the profile (content hash not yet filled: write_profile does it)."""
    started_s = time.perf_counter()
    device = resolve_device(options.device)
    preset = choose_preset(quick=options.quick, sizes=options.sizes, on_gpu=device.type == "cuda")
    if options.models:
        preset = with_model_shapes(preset, options.models)
    ctx = ProfileContext(device=device, preset=preset, stream=stream, quiet=options.quiet, disk_path=options.disk,
                         models=tuple(options.models))
    torch.manual_seed(0)
    ctx.progress("start", f"{device} {preset.mode} preset", f"torch {torch.__version__}")
    results = collect(ctx)
    mode = preset.mode if ctx.on_gpu else "cpu-only"
    if preset.mode == "tiny":
        ctx.notes.insert(0, "tiny sizes (CI): figures are not representative")
        mode = "quick" if ctx.on_gpu else "cpu-only"
    name = options.name or default_profile_name(results["gpu_name"], ctx.on_gpu)
    profile = build_profile(results, name=name, mode=mode, notes=ctx.notes)
    datasheet = load_datasheet(results["gpu_name"]) if ctx.on_gpu else None
    return ProfileRun(profile=profile, datasheet=datasheet, elapsed_s=time.perf_counter() - started_s)
