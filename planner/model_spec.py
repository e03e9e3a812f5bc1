"""ModelSpec: the architecture of a Llama-family decoder, as the cost model and the executor need it.

The built-in names (planner/builtin_models.py) carry the architectures of the published config.json files;
``model_spec_from_config`` reads any transformers Llama-family ``config.json``, and ``load_model_spec`` takes a
built-in name, a config.json, a checkpoint folder holding one, or a .gguf file.

Parameter count (``param_count``), for D = hidden, I = intermediate, L = layers, H_q, H_kv heads of dim d,
V = vocab:
    embedding           V * D
    per layer  q, o     2 * D * H_q * d        (+ H_q * d bias on q when attention_bias)
               k, v     2 * D * H_kv * d       (+ 2 * H_kv * d bias when attention_bias)
               MLP      3 * D * I               (gate, up, down)
               norms    2 * D
    final norm          D
    lm_head             V * D unless tie_word_embeddings
Gemma-2 (``gemma2``) differs in: four RMSNorms per layer (4 * D instead of 2 * D), a tied lm_head, GeGLU (same
3 * D * I), the attention scale query_pre_attn_scalar ** -0.5, logits soft-capped (tanh) in attention and at the
output, and layer_types alternating sliding-window (window W) and full-attention layers.

Sliding-window layers (``layer_windows``): a layer with window W attends query position p to keys (p - W, p],
so it only ever needs its last W - 1 past tokens: those stay on the GPU (``window_kv_bytes``), and only the
full-attention layers hold context-length KV (``kv_head_slots``, ``kv_bytes_per_token`` count those alone).
Leaves out: anything that is not a dense decoder of these families (MoE, Gemma-3, Qwen2's per-layer windows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

MODEL_SCHEMA_VERSION = 1

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma2")

FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"


class ModelSpecError(ValueError):
    """A model name that is unknown, or a config file that is not a Llama-family decoder."""


class ModelSpec(BaseModel):
    """Architecture of one Llama-family decoder. Field names follow transformers' config.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = MODEL_SCHEMA_VERSION
    name: str
    model_type: Literal["llama", "mistral", "qwen2", "gemma2"]
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = Field(False, description="bias on q, k, v projections (Qwen2: True)")
    o_proj_bias: bool = False
    mlp_bias: bool = False
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict[str, Any]] = None
    max_position_embeddings: int = 8192
    sliding_window: Optional[int] = None
    layer_types: Optional[tuple[str, ...]] = Field(
        None, description="per layer 'full_attention' or 'sliding_attention' (Gemma-2); None: every layer is "
                          "sliding when sliding_window is set, else full")
    query_pre_attn_scalar: Optional[float] = Field(None, description="Gemma-2: attention scale = this ** -0.5")
    attn_logit_softcapping: Optional[float] = Field(None, description="scores -> cap * tanh(scores / cap)")
    final_logit_softcapping: Optional[float] = None
    hidden_activation: Optional[str] = None
    source: str = ""

    # ---- derived sizes -------------------------------------------------------------------------------------
    @property
    def query_heads_per_kv_head(self) -> int:
        """GQA ratio H_q / H_kv: query head h reads KV head h // ratio."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def layer_param_count(self) -> int:
        """Parameters of one decoder layer (attention + MLP + its two norms)."""
        d, dim = self.head_dim, self.hidden_size
        q_out, kv_out = self.num_attention_heads * d, self.num_key_value_heads * d
        attention = dim * q_out + 2 * dim * kv_out + q_out * dim
        if self.attention_bias:
            attention += q_out + 2 * kv_out
        if self.o_proj_bias:
            attention += dim
        mlp = 3 * dim * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + dim
        norms = (4 if self.model_type == "gemma2" else 2) * dim
        return attention + mlp + norms

    @property
    def embedding_param_count(self) -> int:
        """Input embedding, plus the lm_head when it is not tied to it."""
        per_matrix = self.vocab_size * self.hidden_size
        return per_matrix if self.tie_word_embeddings else 2 * per_matrix

    @property
    def param_count(self) -> int:
        """All parameters: embeddings (+ lm_head), layers, final norm."""
        return self.embedding_param_count + self.num_hidden_layers * self.layer_param_count + self.hidden_size

    @property
    def layer_shape(self) -> tuple[int, int, int, int, int]:
        """(hidden, intermediate, query heads, KV heads, head dim): what a profile's measured replayed decode step
        is matched on (hwprofiles.schema GraphDecodePoint.layer_shape)."""
        return (self.hidden_size, self.intermediate_size, self.num_attention_heads, self.num_key_value_heads,
                self.head_dim)

    # ---- attention windows -----------------------------------------------------------------------------------
    @property
    def layer_windows(self) -> tuple[Optional[int], ...]:
        """Per layer: its sliding window W (keys (p - W, p] for query p), or None for full attention."""
        return layer_windows(self.num_hidden_layers, self.layer_types, self.sliding_window)

    @property
    def full_attention_layers(self) -> int:
        """L_full: layers with full attention, the ones whose KV grows with the context (and is offloaded)."""
        return sum(window is None for window in self.layer_windows)

    @property
    def sliding_layers(self) -> int:
        """L_sw = L - L_full: layers whose KV is their window alone, resident on the GPU."""
        return self.num_hidden_layers - self.full_attention_layers

    @property
    def attention_scale(self) -> float:
        """Score scale: query_pre_attn_scalar ** -0.5 (Gemma-2), else head_dim ** -0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def window_kv_bytes(self, dtype_bytes: int = 2) -> int:
        """GPU bytes of the sliding layers' windows: sum over sliding layers of 2 (K, V) * H_kv * (W - 1) * d * b
        (the past a chunk needs), independent of the context."""
        return sum(2 * self.num_key_value_heads * (window - 1) * self.head_dim * dtype_bytes
                   for window in self.layer_windows if window is not None)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Context-length KV bytes per token: 2 (K and V) * L_full * H_kv * d * dtype_bytes (sliding layers hold
        a fixed window instead: window_kv_bytes)."""
        return 2 * self.full_attention_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def kv_bytes_per_head_token(self, dtype_bytes: int = 2) -> int:
        """KV bytes of one (layer, KV head) slot per token: 2 * d * dtype_bytes."""
        return 2 * self.head_dim * dtype_bytes

    @property
    def kv_head_slots(self) -> int:
        """Number of context-length (layer, KV head) slots: L_full * H_kv (L * H_kv without sliding layers).
        ``resident_kv_heads`` counts these; the sliding layers' windows are always resident."""
        return self.full_attention_layers * self.num_key_value_heads

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A transformers config.json dict for this architecture (what the executor builds a model from)."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "gemma2": "Gemma2ForCausalLM"}
        cfg: dict[str, Any] = {
            "architectures": [arch[self.model_type]],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
        }
        if self.model_type == "gemma2":
            cfg.update(hidden_act=self.hidden_activation or "gelu_pytorch_tanh",
                       hidden_activation=self.hidden_activation or "gelu_pytorch_tanh",
                       sliding_window=self.sliding_window, layer_types=list(self.layer_windows_types()),
                       query_pre_attn_scalar=_int_if_whole(self.query_pre_attn_scalar or self.head_dim),
                       attn_logit_softcapping=self.attn_logit_softcapping,
                       final_logit_softcapping=self.final_logit_softcapping, attention_bias=self.attention_bias)
        if self.rope_scaling is not None:
            cfg["rope_scaling"] = dict(self.rope_scaling)
        if self.model_type == "llama":
            cfg["attention_bias"] = self.attention_bias
            cfg["mlp_bias"] = self.mlp_bias
        if self.model_type in ("mistral", "qwen2"):
            cfg["sliding_window"] = self.sliding_window
        if self.model_type == "qwen2":
            cfg["use_sliding_window"] = self.sliding_window is not None
        return cfg

    def layer_windows_types(self) -> tuple[str, ...]:
        """layer_types spelled out: 'sliding_attention' where layer_windows has a window."""
        return tuple(FULL_ATTENTION if w is None else SLIDING_ATTENTION for w in self.layer_windows)


def layer_windows(num_layers: int, layer_types, sliding_window: Optional[int]) -> tuple[Optional[int], ...]:
    """Per layer window (None: full attention). ``layer_types`` (Gemma-2's config): sliding where it says
    'sliding_attention'; without it every layer slides when ``sliding_window`` is set (Mistral v0.1)."""
    if sliding_window is None:
        return (None,) * num_layers
    if sliding_window < 1:
        raise ModelSpecError(f"sliding_window must be positive, got {sliding_window}")
    if layer_types is None:
        return (sliding_window,) * num_layers
    if len(layer_types) != num_layers:
        raise ModelSpecError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
    unknown = sorted(set(layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
    if unknown:
        raise ModelSpecError(f"layer_types {unknown} are not supported; supported: {FULL_ATTENTION}, "
                             f"{SLIDING_ATTENTION}")
    return tuple(sliding_window if kind == SLIDING_ATTENTION else None for kind in layer_types)


def gemma2_layer_types(num_layers: int) -> tuple[str, ...]:
    """Gemma-2's default alternation (transformers' Gemma2Config): layer 0 sliding, layer 1 full, ..."""
    return tuple(SLIDING_ATTENTION if (i + 1) % 2 else FULL_ATTENTION for i in range(num_layers))


def model_spec_from_config(config: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Build a ModelSpec from a transformers config.json dict of the Llama family."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelSpecError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if not isinstance(config.get(key), int) or config[key] <= 0]
    if missing:
        raise ModelSpecError(f"config is missing or has non-positive {', '.join(missing)}")
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise ModelSpecError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope_params = config.get("rope_parameters") or {}
    rope_theta = config.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
        rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    use_sliding = config.get("use_sliding_window", model_type in ("mistral", "gemma2"))
    sliding_window = config.get("sliding_window") if use_sliding else None
    layer_types = config.get("layer_types")
    if model_type == "gemma2" and layer_types is None:
        layer_types = gemma2_layer_types(config["num_hidden_layers"])
    if model_type == "qwen2" and sliding_window is not None:
        raise ModelSpecError("Qwen2 with use_sliding_window (windows on the layers past max_window_layers) is not "
                             "supported; sliding windows are supported for Gemma-2 and Mistral v0.1")
    if model_type == "mistral":
        layer_types = None  # Mistral applies its window to every layer
    layer_windows(config["num_hidden_layers"], layer_types, sliding_window)  # refuses unknown layer types
    gemma = model_type == "gemma2"
    return ModelSpec(
        name=name,
        model_type=model_type,
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=config["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", gemma)),
        attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        mlp_bias=bool(config.get("mlp_bias", False)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6 if gemma else 1e-5)),
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 8192)),
        sliding_window=sliding_window,
        layer_types=tuple(layer_types) if layer_types is not None and sliding_window is not None else None,
        query_pre_attn_scalar=float(config.get("query_pre_attn_scalar") or head_dim) if gemma else None,
        attn_logit_softcapping=_positive_or_none(config.get("attn_logit_softcapping")),
        final_logit_softcapping=_positive_or_none(config.get("final_logit_softcapping")),
        hidden_activation=config.get("hidden_activation") if gemma else None,
        source=config.get("_name_or_path", "") or "config.json",
    )


def _int_if_whole(value: float) -> float | int:
    """transformers' Gemma2Config declares query_pre_attn_scalar an int (strictly validated since 5.x)."""
    return int(value) if float(value).is_integer() else value


def _positive_or_none(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A built-in name, a config.json path, a checkpoint folder holding config.json, or a .gguf file (its header:
    planner/gguf_spec.py)."""
    from planner.builtin_models import BUILTIN_MODELS, known_models  # the table is built from this module

    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]
    if str(name_or_path).lower().endswith(".gguf"):
        from planner.gguf_spec import gguf_model_spec

        return gguf_model_spec(name_or_path)
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ModelSpecError(
            f"unknown model {name_or_path!r}; known: {', '.join(known_models())} (or a config.json / checkpoint folder)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"cannot read model config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelSpecError(f"model config {path} is not a JSON object")
    return model_spec_from_config(config, name=path.parent.name or path.stem)
