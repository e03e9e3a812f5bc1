"""A GGUF file's architecture as a ModelSpec, read from its header alone: no torch, no numpy, no weights.

GGUF layout (little-endian; versions 2 and 3):
    magic "GGUF", u32 version, u64 tensor count, u64 key-value count
    key-values       key (u64 length + UTF-8), u32 value type, value (scalars, strings, arrays of either)
    tensor infos     name, u32 dims, u64 per dim, u32 ggml type, u64 offset into the data section
    data section     starts at the next multiple of ``general.alignment`` (32) after the tensor infos
Keys for architecture A = ``general.architecture``: ``A.block_count`` (layers), ``A.embedding_length`` (hidden),
``A.feed_forward_length`` (intermediate), ``A.attention.head_count`` / ``head_count_kv``, ``A.attention.key_length``
(head dim; else hidden / heads), ``A.rope.freq_base``, ``A.context_length``, ``A.attention.layer_norm_rms_epsilon``,
``A.vocab_size`` (else the length of ``tokenizer.ggml.tokens``). A file without an ``output.weight`` tensor ties
lm_head to the embedding. Arrays (the 49K-token vocabulary) are skipped by seeking, so reading a 100 MB file's
header takes milliseconds. The data section's size is checked against the file's, when the gguf package's table
of block sizes is importable (it needs numpy only), so a truncated file is refused here, before any weight loads.
Leaves out: the weights and the tokenizer (transformers' GGUF loader reads those: executor/inputs/model_loader.py).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from planner.model_spec import ModelSpec, ModelSpecError, model_spec_from_config

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
# value type -> struct format; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
"""GGUF ``general.architecture`` -> transformers model_type headplan runs (Mistral GGUFs say "llama")."""


class GGUFError(ModelSpecError):
    """Not a GGUF file, a truncated one, or a GGUF of an architecture headplan does not run."""


def is_gguf_path(name_or_path: str) -> bool:
    return str(name_or_path).lower().endswith(".gguf")


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path):
        self.handle, self.path = handle, path

    def read(self, nbytes: int) -> bytes:
        data = self.handle.read(nbytes)
        if len(data) != nbytes:
            raise GGUFError(f"{self.path}: truncated GGUF header (wanted {nbytes} bytes at offset "
                            f"{self.handle.tell() - len(data)})")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        return self.read(length).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])[0]
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<IQ")
            self.skip_items(item_kind, count)
            return ("array", count)
        raise GGUFError(f"{self.path}: unknown GGUF value type {kind}")

    def skip_items(self, kind: int, count: int) -> None:
        if kind == _STRING:
            for _ in range(count):
                self.handle.seek(self.unpack("<Q")[0], 1)
        elif kind in _SCALARS:
            self.handle.seek(struct.calcsize(_SCALARS[kind]) * count, 1)
        else:
            raise GGUFError(f"{self.path}: nested GGUF arrays are not supported")


def read_gguf_metadata(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """(key-values with arrays as ("array", length), tensor names) of a GGUF file; GGUFError for a file that is
    not GGUF, is cut short, or whose tensor data runs past its end."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc}") from None
    with handle:
        reader = _Reader(handle, path)
        if reader.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        (version,) = reader.unpack("<I")
        if version not in GGUF_VERSIONS:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (versions {GGUF_VERSIONS})")
        tensor_count, kv_count = reader.unpack("<QQ")
        meta: dict[str, Any] = {}
        for _ in range(kv_count):
            key = reader.string()
            (kind,) = reader.unpack("<I")
            meta[key] = reader.value(kind)
        names, data_end = _tensor_infos(reader, tensor_count)
        alignment = int(meta.get("general.alignment", 32))
        data_start = -(-handle.tell() // alignment) * alignment
        size = handle.seek(0, 2)
    if data_end is not None and size < data_start + data_end:
        raise GGUFError(f"{path} is truncated: {size} bytes, its tensor data needs {data_start + data_end}")
    return meta, names


def _tensor_infos(reader: _Reader, count: int) -> tuple[list[str], int | None]:
    """Tensor names and the end of the last tensor's data (None without the gguf package's block-size table)."""
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        GGML_QUANT_SIZES = None
    names, end = [], 0
    for _ in range(count):
        names.append(reader.string())
        (dims,) = reader.unpack("<I")
        shape = reader.unpack(f"<{dims}Q")
        ggml_type, offset = reader.unpack("<IQ")
        if GGML_QUANT_SIZES is not None:
            elements = 1
            for extent in shape:
                elements *= extent
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise GGUFError(f"{reader.path}: tensor {names[-1]} has unknown ggml type {ggml_type}") from None
            end = max(end, offset + elements // block * block_bytes)
    return names, end if GGML_QUANT_SIZES is not None else None


def gguf_config(meta: dict[str, Any], tensor_names: list[str], path: Path) -> dict[str, Any]:
    """The transformers config.json fields of a GGUF header (the Llama-family subset headplan plans)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported; headplan runs "
                        f"{', '.join(sorted(ARCHITECTURES))} GGUF files")

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    heads, hidden = key("attention.head_count"), key("embedding_length")
    vocab = key("vocab_size")
    tokens = meta.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(tokens, tuple):
        vocab = tokens[1]
    config = {"model_type": ARCHITECTURES[arch], "hidden_size": hidden,
              "intermediate_size": key("feed_forward_length"), "num_hidden_layers": key("block_count"),
              "num_attention_heads": heads, "num_key_value_heads": key("attention.head_count_kv", heads),
              "vocab_size": vocab, "rope_theta": _f32(key("rope.freq_base", 10000.0)),
              "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon", 1e-5)),
              "max_position_embeddings": int(key("context_length", 8192)),
              "tie_word_embeddings": "output.weight" not in tensor_names,
              "attention_bias": arch == "qwen2", "_name_or_path": str(path)}
    if key("attention.key_length") is not None:
        config["head_dim"] = int(key("attention.key_length"))
    if key("attention.sliding_window") is not None:
        config["sliding_window"], config["use_sliding_window"] = key("attention.sliding_window"), True
    return config


def _f32(value: float) -> float:
    """A GGUF f32 as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(f"{float(value):.7g}")


def gguf_model_spec(path: str | Path) -> ModelSpec:
    """ModelSpec of a .gguf file's architecture (named after the file), from its header."""
    path = Path(path)
    meta, names = read_gguf_metadata(path)
    return model_spec_from_config(gguf_config(meta, names, path), name=path.stem)
