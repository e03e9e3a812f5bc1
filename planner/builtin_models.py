"""The built-in models: the architectures of published config.json files (each spec's ``source`` links its file),
by name. ``headplan plan --model NAME`` and planner.model_spec.load_model_spec look names up here.
Leaves out: the ModelSpec itself and reading config files (planner/model_spec.py).
"""

from __future__ import annotations

from typing import Any

from planner.model_spec import ModelSpec, gemma2_layer_types

_LLAMA3_ROPE_8K = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
_LLAMA32_ROPE = {**_LLAMA3_ROPE_8K, "factor": 32.0}
_HF = "https://huggingface.co/{}/blob/main/config.json"


def _builtin(name: str, **fields: Any) -> ModelSpec:
    return ModelSpec(name=name, **fields)


def _gemma2(name: str, **fields: Any) -> ModelSpec:
    """Gemma-2 from its published config.json: window 4096, soft-caps 50 / 30, tied embeddings, vocab 256000."""
    common = dict(model_type="gemma2", vocab_size=256000, tie_word_embeddings=True, rms_norm_eps=1e-6,
                  rope_theta=10000.0, max_position_embeddings=8192, sliding_window=4096,
                  attn_logit_softcapping=50.0, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
                  layer_types=gemma2_layer_types(fields["num_hidden_layers"]))
    return ModelSpec(name=name, **{**common, **fields})


_GEMMA2 = {
    "gemma-2-2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256.0,
                       source=_HF.format("google/gemma-2-2b")),
    "gemma-2-9b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256.0,
                       source=_HF.format("google/gemma-2-9b")),
    "gemma-2-27b": dict(hidden_size=4608, intermediate_size=36864, num_hidden_layers=46, num_attention_heads=32,
                        num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144.0,
                        source=_HF.format("google/gemma-2-27b")),
}


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _builtin("llama-3-8b", model_type="llama", hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                 source=_HF.format("meta-llama/Meta-Llama-3-8B")),
        _builtin("llama-3.1-8b", model_type="llama", hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE_8K,
                 max_position_embeddings=131072, source=_HF.format("meta-llama/Llama-3.1-8B")),
        _builtin("llama-3-70b", model_type="llama", hidden_size=8192, intermediate_size=28672,
                 num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                 source=_HF.format("meta-llama/Meta-Llama-3-70B")),
        _builtin("llama-3.2-1b", model_type="llama", hidden_size=2048, intermediate_size=8192,
                 num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                 vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=_LLAMA32_ROPE,
                 max_position_embeddings=131072, source=_HF.format("meta-llama/Llama-3.2-1B")),
        _builtin("llama-3.2-3b", model_type="llama", hidden_size=3072, intermediate_size=8192,
                 num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=_LLAMA32_ROPE,
                 max_position_embeddings=131072, source=_HF.format("meta-llama/Llama-3.2-3B")),
        _builtin("llama-2-7b", model_type="llama", hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                 vocab_size=32000, rope_theta=10000.0, max_position_embeddings=4096,
                 source=_HF.format("meta-llama/Llama-2-7b-hf")),
        # v0.2/v0.3 architecture (full attention, rope_theta 1e6); v0.1's 4096-token sliding window is not exact
        # under full-attention offload and is not the default.
        _builtin("mistral-7b", model_type="mistral", hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=32000, rope_theta=1000000.0, max_position_embeddings=32768,
                 source=_HF.format("mistralai/Mistral-7B-Instruct-v0.2")),
        _builtin("mistral-7b-v0.1", model_type="mistral", hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=32000, rope_theta=10000.0, max_position_embeddings=32768, sliding_window=4096,
                 source=_HF.format("mistralai/Mistral-7B-v0.1")),
        *(_gemma2(name, **fields) for name, fields in _GEMMA2.items()),
        _builtin("qwen2-7b", model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
                 vocab_size=152064, attention_bias=True, rms_norm_eps=1e-6, rope_theta=1000000.0,
                 max_position_embeddings=131072, source=_HF.format("Qwen/Qwen2-7B")),
        _builtin("qwen2.5-7b", model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
                 vocab_size=152064, attention_bias=True, rms_norm_eps=1e-6, rope_theta=1000000.0,
                 max_position_embeddings=131072, source=_HF.format("Qwen/Qwen2.5-7B")),
    )
}


def known_models() -> list[str]:
    """Built-in model names."""
    return sorted(BUILTIN_MODELS)
