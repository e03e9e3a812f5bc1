"""Load the model a run executes: a real checkpoint from disk, or the exact architecture with random weights.

- ``load_checkpoint(path, dtype, device)``: config.json + safetensors (transformers' from_pretrained), and the
  tokenizer when the folder has one.
- ``build_random(spec, dtype, device, seed)``: the architecture of a ModelSpec (a built-in name or any
  Llama-family config.json) with random weights created directly on the device in the run's dtype.
Both refuse sliding-window attention (head offload here is exact full attention only) and models outside
the Llama family (Llama, Mistral, Qwen2). Leaves out: quantized checkpoints, sharding across GPUs, hub downloads.
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
    uses_window = getattr(config, "use_sliding_window", model_type == "mistral")
    if window is not None and uses_window:
        raise ModelLoadError(f"sliding-window attention (window {window}) is not supported: headplan runs exact "
                             "full attention; use a config without sliding_window")


def build_random(spec: ModelSpec, *, dtype: torch.dtype, device: torch.device | str, seed: int) -> LoadedModel:
    """Random weights of ``spec``'s architecture, created on ``device`` in ``dtype`` (deterministic in ``seed``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = spec.to_hf_config_dict()
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    check_supported(config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return LoadedModel(model=model, spec=spec, tokenizer=None, source=f"random weights, seed {seed}")


def load_checkpoint(path: str | Path, *, dtype: torch.dtype, device: torch.device | str) -> LoadedModel:
    """A checkpoint folder (config.json + safetensors, tokenizer optional) loaded in ``dtype`` onto ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json (expected a checkpoint folder)")
    config = AutoConfig.from_pretrained(folder)
    check_supported(config)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelLoadError(f"{folder} has no weight files (*.safetensors)")
    try:
        import accelerate  # noqa: F401  (from_pretrained's device_map needs it)

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": str(device)})
    except ImportError:  # load on the host, then move
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    model.eval()
    spec = model_spec_from_config(model.config.to_dict(), name=folder.name)
    return LoadedModel(model=model, spec=spec, tokenizer=load_tokenizer(folder), source=str(folder))


def load_tokenizer(folder: Path) -> Optional[Any]:
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if not any((folder / name).exists() for name in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception:  # a broken tokenizer must not stop a run that passes token ids
        return None
