"""Load the model a run executes: a real checkpoint from disk, or the exact architecture with random weights.

- ``load_checkpoint(path, dtype, device)``: a checkpoint folder (config.json + safetensors, transformers'
  from_pretrained) and its tokenizer when the folder has one; or a ``.gguf`` file through transformers' own GGUF
  loader (the gguf package): weights dequantized to ``dtype``, tokenizer, chat template and end-of-sequence id
  from the file. The GGUF header is read first (planner/gguf_spec.py: architecture, truncation), so a file
  headplan cannot run is refused before any weight loads.
- ``build_random(spec, dtype, device, seed, stages=None)``: the architecture of a ModelSpec (a built-in name or
  any Llama-family config.json) with random weights created directly on the device (or, with stages, on each
  stage's GPU through accelerate's device map) in the run's dtype.
- ``RandomModel(spec, dtype_name, seed)`` / ``CheckpointModel(path, dtype_name)``: picklable factories of either,
  called with a device in each tensor-parallel rank (executor/launch/).
Both refuse models outside the supported families (Llama, Mistral, Qwen2, Gemma-2) and the sliding windows the
engine does not run (Qwen2's use_sliding_window); Gemma-2's alternating windows and Mistral v0.1's window run
exactly (engine/offload.py). Leaves out: quantized checkpoints, hub downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from planner.model_spec import SUPPORTED_MODEL_TYPES, ModelSpec, model_spec_from_config

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelLoadError(ValueError):
    """A checkpoint or architecture the executor cannot run."""


@dataclass
class LoadedModel:
    model: Any
    spec: ModelSpec
    tokenizer: Optional[Any]
    source: str

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids of the checkpoint's generation config (a GGUF's from its header), else the
        tokenizer's; () for random weights. (transformers 5.17's GGUF tokenizer names the wrong eos token, so the
        generation config comes first.)"""
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if ids is None and self.tokenizer is not None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return ()
        return tuple(int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids]))


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def check_supported(config: Any) -> None:
    """Refuse configs the exact head-offloaded loop does not cover."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"model_type {model_type!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    window = getattr(config, "sliding_window", None)
    if model_type == "qwen2" and window is not None and getattr(config, "use_sliding_window", False):
        raise ModelLoadError(f"Qwen2's sliding window (use_sliding_window, window {window}) is not supported: "
                             "sliding windows run for Gemma-2 and Mistral v0.1; use use_sliding_window false")
    if model_type == "gemma2":
        unknown = sorted(set(getattr(config, "layer_types", None) or []) - {"full_attention", "sliding_attention"})
        if unknown:
            raise ModelLoadError(f"Gemma-2 layer_types {unknown} are not supported (full_attention and "
                                 "sliding_attention are)")
        if getattr(config, "use_bidirectional_attention", False):
            raise ModelLoadError("Gemma-2 with use_bidirectional_attention is not supported (causal only)")


def build_random(spec: ModelSpec, *, dtype: torch.dtype, device: torch.device | str, seed: int,
                 stages=None) -> LoadedModel:
    """Random weights of ``spec``'s architecture in ``dtype``, created directly on the devices that will run
    them: ``device``, or with ``stages`` (executor.parallel.stages.DeviceStage) each module on its stage's device and
    the model dispatched there. The weights depend on ``seed`` alone, not on the placement (each parameter
    draws from its own generator seeded by (seed, its index)): N(0, initializer_range) for matrices, 1 for
    norms, 0 for biases."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from executor.parallel.stages import device_map_for, place_model, single_stage

    config_dict = spec.to_hf_config_dict()
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    check_supported(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    stages = stages or single_stage(config.num_hidden_layers, device, 0)
    for name, where in device_map_for(model, stages).items():
        model.get_submodule(name).to_empty(device=where)
    _retie(model)
    _rebuild_rotary(model, stages[0].device)
    _refill_embed_scale(model)
    init_random_weights(model, seed, std=getattr(config, "initializer_range", 0.02))
    model = place_model(model, stages)
    model.eval()
    return LoadedModel(model=model, spec=spec, tokenizer=None, source=f"random weights, seed {seed}")


def _retie(model) -> None:
    """to_empty gives each module its own new parameter (meta tensors cannot be filled in place), which unties a
    tied lm_head from the embedding: tie them again, so a random model holds V x D once, as its checkpoint would
    and as the planner counts it (found on the H100: Llama-3.2-1B carried a second 0.49 GiB copy, and its 2M-token
    plan at 24 GB ran out of memory). With several stages place_model then gives lm_head its copy on the last."""
    if getattr(model.config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight


def _rebuild_rotary(model, device: torch.device) -> None:
    """The rotary embedding's inv_freq is a non-persistent buffer computed at construction: build it again on
    ``device`` (to_empty left it uninitialised)."""
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:
        with torch.device(device):
            model.model.rotary_emb = type(rotary)(config=model.config)


def build_random_sharded(spec: ModelSpec, *, dtype: torch.dtype, device: torch.device, seed: int, mesh):
    """RandomModel.sharded: the rank's shard of build_random's model (same values, block by block)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from executor.parallel.tensor import shard_model

    config_dict = spec.to_hf_config_dict()
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    check_supported(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    shard_model(model, mesh, src_data_rank=None)  # meta: each rank takes its block, nothing is sent
    model.to_empty(device=device)
    _retie(model)
    _rebuild_rotary(model, device)
    init_random_weights(model, seed, std=getattr(config, "initializer_range", 0.02))
    model.eval()
    return model


@torch.no_grad()
def _refill_embed_scale(model) -> None:
    """Gemma-2's scaled embedding keeps sqrt(D) in a non-persistent buffer that to_empty left uninitialised."""
    embed = model.model.embed_tokens
    if hasattr(embed, "embed_scale") and hasattr(embed, "scalar_embed_scale"):
        embed.embed_scale.fill_(embed.scalar_embed_scale)


@torch.no_grad()
def init_random_weights(model, seed: int, *, std: float) -> None:
    """Each parameter from its own generator (seed * 1_000_003 + its index): placement-independent values (a
    tensor-parallel DTensor gets its block of the same whole draw)."""
    for index, (name, param) in enumerate(model.named_parameters()):
        if name.endswith(".bias"):
            param.zero_()
        elif param.dim() == 1:  # RMSNorm weights
            param.fill_(1.0)
        elif hasattr(param, "to_local"):  # a tensor-parallel shard: draw the whole matrix, keep this rank's block
            from torch.distributed.tensor import distribute_tensor

            local = param.to_local()
            generator = torch.Generator(device=local.device)
            generator.manual_seed(seed * 1_000_003 + index)
            whole = torch.empty(param.shape, dtype=local.dtype, device=local.device).normal_(0.0, std,
                                                                                            generator=generator)
            block = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None).to_local()
            local.copy_(block)
            del whole, block
        else:
            generator = torch.Generator(device=param.device)
            generator.manual_seed(seed * 1_000_003 + index)
            param.normal_(0.0, std, generator=generator)


def load_checkpoint(path: str | Path, *, dtype: torch.dtype, device: torch.device | str,
                    stages=None, tokenizer=None) -> LoadedModel:
    """A checkpoint folder (config.json + safetensors, tokenizer optional) or a .gguf file, loaded in ``dtype``
    onto ``device``, or with ``stages`` onto each stage's device (transformers' device_map, which accelerate
    dispatches). ``tokenizer``: one already loaded (load_tokenizer_of), so it is not read twice."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from executor.parallel.stages import device_map_for, is_multi_device

    folder = Path(path)
    if folder.suffix.lower() == ".gguf":
        return load_gguf(folder, dtype=dtype, device=device, stages=stages, tokenizer=tokenizer)
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json (expected a checkpoint folder)")
    config = AutoConfig.from_pretrained(folder)
    check_supported(config)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelLoadError(f"{folder} has no weight files (*.safetensors)")
    device_map = {"": str(device)}
    if stages is not None and is_multi_device(stages):
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        device_map = device_map_for(skeleton, stages)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map)
    model.eval()
    spec = model_spec_from_config(model.config.to_dict(), name=folder.name)
    return LoadedModel(model=model, spec=spec, tokenizer=tokenizer or load_tokenizer(folder), source=str(folder))


def load_gguf(path: Path, *, dtype: torch.dtype, device: torch.device | str, stages=None,
              tokenizer=None) -> LoadedModel:
    """A .gguf file: header checked first (planner/gguf_spec.py), then transformers' GGUF loader for the weights
    (dequantized to ``dtype``) and the tokenizer. Any failure of the loader on a damaged file is a ModelLoadError."""
    import struct

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from executor.parallel.stages import device_map_for, is_multi_device
    from planner.gguf_spec import gguf_model_spec

    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file")
    try:
        spec = gguf_model_spec(path)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    hf_logging.disable_progress_bar()
    folder, name = path.parent, path.name
    try:
        device_map = {"": str(device)}
        if stages is not None and is_multi_device(stages):
            from transformers import AutoConfig

            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=name))
            device_map = device_map_for(skeleton, stages)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, device_map=device_map)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, struct.error, IndexError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    check_supported(model.config)
    model.eval()
    return LoadedModel(model=model, spec=spec, tokenizer=tokenizer, source=str(path))


def load_tokenizer_of(path: str | Path) -> Optional[Any]:
    """The tokenizer of a checkpoint folder (None without tokenizer files) or of a .gguf file, without weights."""
    path = Path(path)
    if path.suffix.lower() != ".gguf":
        return load_tokenizer(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line, not the loader's traceback
        raise ModelLoadError(f"cannot read the tokenizer of {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def load_tokenizer(folder: Path) -> Optional[Any]:
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if not any((folder / name).exists() for name in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception:  # a broken tokenizer must not stop a run that passes token ids
        return None


@dataclass(frozen=True)
class RandomModel:
    """Picklable model factory: random weights of ``spec`` (inputs/model_loader.py build_random) on a device."""

    spec: object
    dtype_name: str
    seed: int = 0

    def __call__(self, device: torch.device):
        return build_random(self.spec, dtype=torch_dtype(self.dtype_name), device=device, seed=self.seed).model

    def sharded(self, device: torch.device, mesh):
        """This rank's shard of the same random model without the whole model ever on the device: built on meta,
        sharded there (parallel/tensor.py shard_model, no data moved), materialised on ``device``; then each
        sharded parameter is drawn whole, one at a time, from the same per-parameter generator as
        init_random_weights and this rank's block copied out. Peak: the shard + the largest matrix."""
        return build_random_sharded(self.spec, dtype=torch_dtype(self.dtype_name), device=device,
                                    seed=self.seed, mesh=mesh)


@dataclass(frozen=True)
class CheckpointModel:
    """Picklable model factory: a checkpoint folder (inputs/model_loader.py load_checkpoint) on a device."""

    path: Path
    dtype_name: str

    def __call__(self, device: torch.device):
        return load_checkpoint(self.path, dtype=torch_dtype(self.dtype_name), device=device).model
