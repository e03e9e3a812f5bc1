"""StagedEngine: one OffloadEngine per stage (parallel/stages.py), each layer routed to its stage's engine.

Per stage s (layers [f_s, f_s + n_s) on device D_s, R_s resident slots):
    layout      KVLayout of n_s layers with R_s resident slots (planner/layout.py spreads them within the stage,
                as planner/pipeline.py's stage memory counts them)
    host store  [H_kv - r_l, T, d] per layer of the stage, one allocation, on D_s's NUMA node (runtime/numa.py),
                page-locked for every device (cudaHostRegisterPortable)
    GPU store   resident rows and two ping-pong slots on D_s
    streams     compute (D_s's current stream), h2d, d2h on D_s; its own events
    recorder    the run's recorder for stage 0; its own EventRecorder on D_s for the others (CUDA events of
                different devices cannot be subtracted)
The runner's switches (``more_forwards``, ``next_phase``) go to every stage; ``position`` is shared. Each
engine prefetches within its own layers: after its last layer it prefetches its own first group of the next
forward, so stage s + 1's first fetch is in flight while stage s computes.
With one stage this is exactly the single-GPU engine.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from executor.engine.host_share import HostShare
from executor.engine.counters import PhaseCounters, Position
from executor.engine.offload import OffloadEngine
from executor.kv.gpu_store import GpuKVStore
from executor.kv.host_store import HostKVStore
from executor.kv.layout import HeadCounts, KVLayout
from executor.parallel.stages import DeviceStage, stage_of_layers
from executor.runtime.events import EventRecorder
from executor.runtime.host_memory import host_available_bytes
from executor.runtime.numa import gpu_numa_node, numa_node_count
from executor.runtime.streams import StreamSet
from executor.settings import ExecutionSettings
from planner.model_spec import layer_windows


def config_layer_windows(model_config) -> tuple:
    """Per layer of a transformers config its sliding window, or None (planner/model_spec.py layer_windows):
    Gemma-2's layer_types, Mistral's window on every layer, none for the others."""
    model_type = getattr(model_config, "model_type", None)
    window = getattr(model_config, "sliding_window", None)
    if model_type not in ("mistral", "gemma2") or window is None:
        return (None,) * model_config.num_hidden_layers
    layer_types = getattr(model_config, "layer_types", None) if model_type == "gemma2" else None
    return layer_windows(model_config.num_hidden_layers, layer_types, window)


def stage_layout(model_config, stage: DeviceStage, settings: ExecutionSettings,
                 heads: Optional[HeadCounts] = None) -> KVLayout:
    """KVLayout of the stage's n_s layers with its R_s resident slots (and the sliding windows of its layers), over
    ``heads`` (default: the config's global counts; a tensor-parallel rank passes its local ones, HeadCounts.shard)."""
    heads = heads or HeadCounts.of_config(model_config)
    stage_settings = dataclasses.replace(settings, resident_kv_heads=stage.resident_kv_heads)
    windows = config_layer_windows(model_config)[stage.first_layer: stage.first_layer + stage.num_layers]
    return KVLayout.build(num_layers=stage.num_layers, kv_heads=heads.kv_heads, query_heads=heads.query_heads,
                          head_dim=heads.head_dim, settings=stage_settings, windows=windows)


@dataclass
class StageParts:
    """What one stage owns for a run."""

    stage: DeviceStage
    layout: KVLayout
    host: HostKVStore
    numa_node: Optional[int] = None
    numa_bound: bool = False


def allocate_host_stores(model_config, stages: Sequence[DeviceStage], settings: ExecutionSettings,
                         dtype: torch.dtype, *, available_bytes: Optional[int] = None,
                         heads: Optional[HeadCounts] = None) -> list[StageParts]:
    """Each stage's host store, checked against host RAM (the sum of all stages) before any is allocated,
    then allocated on the stage GPU's NUMA node where the machine has several. ``heads``: the heads this process
    sees (stage_layout; a tensor-parallel rank's local counts)."""
    layouts = [stage_layout(model_config, s, settings, heads) for s in stages]
    total = sum(layout.host_bytes(dtype.itemsize) for layout in layouts)
    available = available_bytes if available_bytes is not None else host_available_bytes()
    HostKVStore.check_host_ram(total, available)
    remaining = available if available is not None else sys.maxsize  # checked once, for the sum, above
    several_nodes = numa_node_count() > 1
    parts: list[StageParts] = []
    try:
        for stage, layout in zip(stages, layouts):
            cuda = stage.device.type == "cuda"
            node = gpu_numa_node(stage.device) if cuda and several_nodes else None
            host = HostKVStore(layout, dtype, pin=cuda, available_bytes=remaining, numa_node=node,
                               device=stage.device if cuda else None)
            remaining -= host.nbytes
            parts.append(StageParts(stage, layout, host, node, host.numa_bound))
    except BaseException:
        for part in parts:
            part.host.close()
        raise
    return parts


class _EveryStage:
    """A runner switch of StagedEngine: read from stage 0's engine, written to every stage's."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj.engines[0], self.name)

    def __set__(self, obj, value) -> None:
        for engine in obj.engines:
            setattr(engine, self.name, value)


@dataclass
class StagedEngine:
    """Routes layer l to engines[stage_of[l]] with local index l - first_layer of that stage."""

    engines: list[OffloadEngine]
    parts: list[StageParts]
    position: Position = field(default_factory=Position)

    def __post_init__(self):
        self._stage_of = stage_of_layers([p.stage for p in self.parts])

    def attend_layer(self, layer: int, query, key, value, *, past_tokens: int, scale: float,
                     softcap: Optional[float] = None, sliding_window: Optional[int] = None):
        engine = self.engines[self._stage_of[layer]]
        return engine.attend_layer(layer - engine.first_layer, query, key, value, past_tokens=past_tokens,
                                   scale=scale, softcap=softcap, sliding_window=sliding_window)

    more_forwards = _EveryStage("more_forwards")
    next_phase = _EveryStage("next_phase")

    @property
    def counters(self) -> dict[str, PhaseCounters]:
        """Per phase, summed over the stages (the host share's jobs in flight waited for and counted first)."""
        for engine in self.engines:
            engine.settle_host_share()
        return PhaseCounters.summed([engine.counters for engine in self.engines])

    @property
    def recorders(self) -> list[EventRecorder]:
        """Distinct recorders (stage 0 shares the run's)."""
        seen: list[EventRecorder] = []
        for engine in self.engines:
            if engine.recorder is not None and all(engine.recorder is not r for r in seen):
                seen.append(engine.recorder)
        return seen

    def set_cpu_share(self, settings: ExecutionSettings) -> None:
        """Every stage's host share rebuilt for ``settings.cpu_share`` (none where F = 0 or the stage offloads
        nothing); the stores keep their rows. Between decodes only: a layer's host job must not be in flight."""
        for engine, part in zip(self.engines, self.parts):
            if engine.host_share is not None:
                engine.settle_host_share()
                engine.host_share.close()
            engine.host_share = _host_share(part, settings, part.stage.device)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


def _host_share(part: StageParts, settings: ExecutionSettings, device: torch.device) -> Optional[HostShare]:
    """The CPU's share of decode attention (engine/host_share.py) where F > 0 and the stage offloads heads."""
    if settings.cpu_share <= 0 or not any(part.layout.offloaded_per_layer):
        return None
    return HostShare(part.layout, part.host, share=settings.cpu_share, device=torch.device(device),
                     threads=settings.host_attention_threads)


def build_staged_engine(parts: Sequence[StageParts], settings: ExecutionSettings, backend: str,
                        recorder: EventRecorder, trace: bool) -> StagedEngine:
    """The engines on each stage's device; stage 0 records into ``recorder`` (whose streams become its own)."""
    position = Position()
    engines: list[OffloadEngine] = []
    for part in parts:
        device = part.stage.device
        streams = StreamSet(device, part.layout.num_layers)
        if part.stage.index == 0:
            recorder.streams, stage_recorder = streams, recorder
        else:
            stage_recorder = EventRecorder(device=device, streams=streams)
        engines.append(OffloadEngine(
            layout=part.layout, host=part.host, gpu=GpuKVStore(part.layout, part.host.dtype, device),
            streams=streams, backend=backend, decode_backend="math" if backend == "math" else "flash",
            split=settings.split, host_share=_host_share(part, settings, device),
            recorder=stage_recorder, trace=trace, position=position, first_layer=part.stage.first_layer))
    return StagedEngine(engines=engines, parts=list(parts), position=position)
