"""The model fingerprint a saved context is keyed by (kv/context_manifest.py ModelFingerprint).

    config     sha256 of the canonical JSON (sorted keys) of ``model.config.to_dict()`` without the keys that do
               not change the KV: private ones ("_name_or_path", "_attn_implementation", ...), the dtype (recorded
               and checked on its own) and output switches. RoPE settings (rope_theta, rope_parameters /
               rope_scaling), sizes, norms' eps and everything else stay in.
    weights    sha256 over every parameter and buffer, by name: dtype, shape, a strided sample of its raw bits
               (SAMPLE_ELEMENTS evenly spaced elements, the whole tensor when smaller) and the integer sum of ALL
               its raw bits (as int16 / int32 words, summed in int64 over pieces of PIECE_ELEMENTS).
    tokenizer  sha256 of the tokenizer's serialised form (fast tokenizers) or its sorted vocabulary.

Why this weight hash: hashing every byte of an 8B model with sha256 costs ~7 s of one CPU core (2.2 GB/s) plus a
16 GB device-to-host copy; the raw-bit sum reads every element once on the tensor's own device (on a GPU ~5 ms at
HBM speed, 16 GB never leaves it) and changes with any single changed element unless another change cancels it
exactly; the strided sample catches reorderings and offsetting changes the sum misses. Both are exact integers, so
the same weights give the same fingerprint on any device, run or knob setting.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import torch

from executor.kv.context_manifest import ModelFingerprint

SAMPLE_ELEMENTS = 4096
PIECE_ELEMENTS = 1 << 24
"""bounded pieces for the raw-bit sum: a CPU sum with an int64 result converts its input, so at most 128 MiB"""
CONFIG_KEYS_IGNORED = {"transformers_version", "torch_dtype", "dtype", "use_cache", "output_attentions",
                       "output_hidden_states", "return_dict", "attn_implementation"}
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def config_digest(config_dict: dict[str, Any]) -> str:
    kept = {k: v for k, v in config_dict.items() if not k.startswith("_") and k not in CONFIG_KEYS_IGNORED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _tensor_digest_parts(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample [k] of raw-bit words, sum [] int64 of all raw-bit words), both on the tensor's device."""
    flat = tensor.detach().reshape(-1)
    bits = flat.view(_BITS[flat.element_size()])
    numel = bits.numel()
    if numel <= SAMPLE_ELEMENTS:
        sample = bits
    else:  # evenly spaced, both ends included: index i * (n - 1) // (k - 1)
        index = torch.arange(SAMPLE_ELEMENTS, device=bits.device, dtype=torch.int64) * (numel - 1)
        sample = bits[index // (SAMPLE_ELEMENTS - 1)]
    total = torch.zeros((), dtype=torch.int64, device=bits.device)
    for piece in bits.split(PIECE_ELEMENTS):
        total += piece.sum(dtype=torch.int64)
    return sample.to(torch.int64), total


def weights_digest(model) -> str:
    """sha256 over the named parameters and buffers (module docstring). One device-to-host copy per tensor of
    SAMPLE_ELEMENTS + 1 words."""
    digest = hashlib.sha256()
    named = dict(model.named_parameters())
    named.update({f"buffer:{k}": v for k, v in model.named_buffers()})
    with torch.no_grad():
        for name in sorted(named):
            tensor = named[name]
            sample, total = _tensor_digest_parts(tensor)
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{int(total)}|".encode())
            digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> Optional[str]:
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(model, tokenizer=None) -> ModelFingerprint:
    config = model.config
    architecture = f"{getattr(config, 'model_type', '?')}:{','.join(getattr(config, 'architectures', None) or [])}"
    return ModelFingerprint(architecture=architecture, config_sha256=config_digest(config.to_dict()),
                            weights_sha256=weights_digest(model), tokenizer_sha256=tokenizer_digest(tokenizer))


def fingerprint_mismatch(saved: ModelFingerprint, current: ModelFingerprint) -> Optional[str]:
    """Why a context saved under ``saved`` cannot serve ``current`` (None: it can)."""
    if saved.architecture != current.architecture:
        return f"another model: saved for {saved.architecture}, this run is {current.architecture}"
    if saved.config_sha256 != current.config_sha256:
        return ("another model configuration (sizes, RoPE settings, ...): config hash "
                f"{saved.config_sha256[:12]} saved, {current.config_sha256[:12]} here")
    if saved.weights_sha256 != current.weights_sha256:
        return (f"other weights: weights hash {saved.weights_sha256[:12]} saved, {current.weights_sha256[:12]} here "
                "(another checkpoint, revision or seed)")
    if saved.tokenizer_sha256 and current.tokenizer_sha256 and saved.tokenizer_sha256 != current.tokenizer_sha256:
        return "another tokenizer: the same text would not give the saved token ids"
    return None
