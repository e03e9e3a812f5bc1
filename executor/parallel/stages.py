"""Several GPUs: the decoder layers split into contiguous stages, one per device (pipeline parallelism).

A stage is layers [first_layer, first_layer + num_layers) on one device with its own resident KV slots R_s;
each stage gets its own OffloadEngine (host store on the device's NUMA node, resident store, ping-pong slots,
h2d / d2h streams on its device), so the stages' PCIe transfers run concurrently on their own links.

Placement is accelerate's device map (``dispatch_model``), the mechanism transformers' ``device_map=`` uses:
    model.embed_tokens, model.rotary_emb   -> stage 0's device
    model.layers.{i}                       -> the device of the stage holding layer i
    model.norm, lm_head                    -> the last stage's device (a tied lm_head is untied into a copy
                                              there, as planner/pipeline.py counts it)
accelerate's hooks move each module's inputs to its device; the cache objects are skipped (they hold no
tensors of their own). A single sequence therefore flows through the stages one after another (what the
planner models), and each stage's engine prefetches its own next group while other stages compute.

With one device, or several stages on the same device (CPU tests), nothing is dispatched.
Leaves out: tensor parallelism, chunk-level pipelining of prefill, several processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

CACHE_KWARGS = ("past_key_values", "headplan_cache")
"""forward kwargs accelerate must not move (the cache objects route to each stage's own stores)"""


@dataclass(frozen=True)
class DeviceStage:
    """Layers [first_layer, first_layer + num_layers) on ``device``, R_s = ``resident_kv_heads`` of their
    (layer, KV head) slots resident on it."""

    index: int
    first_layer: int
    num_layers: int
    device: torch.device
    resident_kv_heads: int

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)


def single_stage(num_layers: int, device: torch.device | str, resident_kv_heads: int) -> list[DeviceStage]:
    return [DeviceStage(0, 0, num_layers, torch.device(device), resident_kv_heads)]


def stages_from_plan(plan, devices: Sequence[torch.device | str]) -> list[DeviceStage]:
    """The plan's per-GPU split (plan.stages; one stage of all layers when it has none) on ``devices``."""
    devices = [torch.device(d) for d in devices]
    if not plan.stages:
        return single_stage(plan.model.num_hidden_layers, devices[0], plan.resident_kv_heads)
    if len(devices) != len(plan.stages):
        raise ValueError(f"the plan has {len(plan.stages)} stages but {len(devices)} devices were given")
    return [DeviceStage(i, s.first_layer, s.num_layers, devices[i], s.resident_kv_heads)
            for i, s in enumerate(plan.stages)]


def check_stages(stages: Sequence[DeviceStage], num_layers: int) -> None:
    """Stages must cover layers 0 .. L - 1 contiguously, in order, each with at least one layer."""
    expected = 0
    for stage in stages:
        if stage.first_layer != expected or stage.num_layers < 1:
            raise ValueError(f"stage {stage.index} starts at layer {stage.first_layer} with {stage.num_layers} "
                             f"layers; stages must cover layers 0..{num_layers - 1} contiguously")
        expected += stage.num_layers
    if expected != num_layers:
        raise ValueError(f"the stages cover {expected} layers, the model has {num_layers}")


def is_multi_device(stages: Sequence[DeviceStage]) -> bool:
    return len({str(s.device) for s in stages}) > 1


def device_map_for(model, stages: Sequence[DeviceStage]) -> dict[str, str]:
    """accelerate device map of a Llama-family ``*ForCausalLM``: module name -> device string."""
    check_stages(stages, model.config.num_hidden_layers)
    first, last = str(stages[0].device), str(stages[-1].device)
    device_map = {"model.embed_tokens": first}
    if hasattr(model.model, "rotary_emb"):
        device_map["model.rotary_emb"] = first
    for stage in stages:
        for layer in stage.layers:
            device_map[f"model.layers.{layer}"] = str(stage.device)
    device_map["model.norm"] = last
    device_map["lm_head"] = last
    return device_map


def untie_lm_head(model, device: torch.device | str) -> bool:
    """Where lm_head shares the embedding's weight, give lm_head its own copy on ``device`` (the planner counts
    V x D on both the first and the last stage). Returns True when it untied."""
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    if head is not embed and head.data_ptr() != embed.data_ptr():
        return False
    model.lm_head.weight = torch.nn.Parameter(embed.detach().to(device).clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    return True


def place_model(model, stages: Sequence[DeviceStage]):
    """Dispatch ``model`` (its weights already on the stages' devices) with accelerate's hooks when the stages
    span several devices; with one device, move it there. Returns the model."""
    if not is_multi_device(stages):
        return model.to(stages[0].device)
    from accelerate import dispatch_model

    untie_lm_head(model, stages[-1].device)
    return dispatch_model(model, device_map=device_map_for(model, stages), main_device=stages[0].device,
                          skip_keys=list(CACHE_KWARGS))


def stage_of_layers(stages: Sequence[DeviceStage]) -> list[int]:
    """stage index of each global layer."""
    out: list[int] = []
    for stage in stages:
        out.extend([stage.index] * stage.num_layers)
    return out


def devices_for(count: int, device_type: str) -> list[torch.device]:
    """``count`` devices: cuda:0 .. cuda:N-1 (checked against what is visible), or N times cpu."""
    if device_type == "cpu":
        return [torch.device("cpu")] * count
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > visible:
        raise ValueError(f"{count} GPUs asked for but {visible} CUDA GPU(s) are visible")
    return [torch.device("cuda", i) for i in range(count)]
