"""The saved-context format: the manifest (pydantic, versioned) and the checks of a context folder against it.

A saved context is a folder (headplan run --save-kv DIR):

    manifest.json        ContextManifest below; written last, by rename, so it is the commit record: a folder
                         without it (an interrupted save) is not a context
    tokens.bin           the prompt's token ids, int32 little-endian [token_count]
    seg-00000.kv ...     segment s holds tokens [s * S, min((s + 1) * S, n)) of every (layer, KV head):
                         for layer l in 0..L-1, for KV head h in 0..H_kv-1: K [t_s, d] then V [t_s, d], raw
                         ``dtype`` bytes (row-major), K after RoPE (the engine stores post-RoPE K)

The layout is per (layer, KV head), not the saving run's store layout (resident / offloaded rows, groups, chunk),
so a context loads into a run with other knobs of the same model and dtype. Segments of a fixed token count S let
a load read only the segments its common prefix needs. Each segment carries a CRC-32 per piece of
``checksum_piece_bytes`` (pieces verified in parallel; zlib.crc32 ran 7.5 GB/s on one core of the 2-core
development machine, 2026-12-01).

Nothing in the manifest is trusted: every size is recomputed from the layout and compared (sizes_problem), and
file sizes are compared with the disk before a byte is read. Plain JSON and raw bytes only: nothing unpickles.
No torch here (headplan plan reads manifests too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTEXT_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENS_NAME = "tokens.bin"
TOKEN_BYTES = 4
"""token ids are stored as int32 little-endian"""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class ContextFormatError(ValueError):
    """A folder that is not a usable saved context (missing, corrupt, truncated, of another format)."""


def segment_name(index: int) -> str:
    return f"seg-{index:05d}.kv"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelFingerprint(_Model):
    """What the KV depends on besides the token ids. Two runs may share KV only when every field matches
    (tokenizer_sha256 only where both have a tokenizer: the ids, not the text, are what is matched)."""

    architecture: str = Field(description="config model_type and architectures")
    config_sha256: str = Field(description="sha256 of the canonical JSON of the config (RoPE settings included; "
                               "private and output-switch keys left out: executor/kv/fingerprint.py)")
    weights_sha256: str = Field(description="sha256 over every parameter and buffer: name, dtype, shape, a strided "
                                "sample of its raw bits and the integer sum of all its raw bits")
    tokenizer_sha256: Optional[str] = Field(None, description="sha256 of the tokenizer's serialised vocabulary; "
                                            "None: no tokenizer (token ids given)")


class KVFileLayout(_Model):
    """Shapes of the saved KV (the model's, not the saving run's store layout)."""

    num_layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    k_after_rope: bool = Field(True, description="K is stored after the rotary embedding, as the engine stores it")
    order: str = "segment file: for layer, for KV head: K [tokens, head_dim] then V [tokens, head_dim]"

    def bytes_per_token(self, dtype_bytes: int) -> int:
        """2 (K, V) * L * H_kv * d * bytes."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * dtype_bytes


class SegmentEntry(_Model):
    index: int = Field(ge=0)
    first_token: int = Field(ge=0)
    tokens: int = Field(gt=0)
    file: str
    nbytes: int = Field(gt=0)
    piece_crc32: list[int] = Field(description="CRC-32 of each checksum_piece_bytes piece of the file, in order")


class ContextManifest(_Model):
    format_version: int = CONTEXT_FORMAT_VERSION
    created: str = Field(description="UTC time the save finished, ISO 8601")
    model: ModelFingerprint
    dtype: str = Field(description="torch dtype name of the KV: float32 | bfloat16 | float16")
    layout: KVFileLayout
    token_count: int = Field(gt=0, description="n: the saved prompt's tokens")
    segment_tokens: int = Field(gt=0, description="S: tokens per segment (the last one may hold fewer)")
    checksum_piece_bytes: int = Field(gt=0)
    tokens_file: str = TOKENS_NAME
    tokens_nbytes: int
    tokens_crc32: int
    kv_bytes: int = Field(description="sum of the segments' bytes: n * 2 * L * H_kv * d * dtype bytes")
    segments: list[SegmentEntry]
    save_s: Optional[float] = None
    synthetic_past_tokens: int = Field(0, ge=0, description="tokens [0, N) whose K, V are a timing probe's synthetic pattern "
                                       "(headplan run --tail-chunks), not the model's: only a benchmark that asks for "
                                       "it loads such a context (context_load.py allow_synthetic); 0: every token "
                                       "computed")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def segments_for(self, tokens: int) -> list[SegmentEntry]:
        """The segments a prefix of ``tokens`` tokens needs (whole segments: each is verified whole)."""
        return [s for s in self.segments if s.first_token < tokens]

    def bytes_for(self, tokens: int) -> int:
        """Bytes a load of a ``tokens``-token prefix reads: whole segments."""
        return sum(s.nbytes for s in self.segments_for(tokens))

    def sizes_problem(self) -> Optional[str]:
        """Why the manifest's own numbers do not add up (None: they do). Every size is recomputed."""
        if self.dtype not in DTYPE_BYTES:
            return f"unknown dtype {self.dtype!r}"
        per_token = self.layout.bytes_per_token(self.dtype_bytes)
        expected_segments = -(-self.token_count // self.segment_tokens)
        if len(self.segments) != expected_segments:
            return f"{len(self.segments)} segments listed, {expected_segments} expected"
        for index, seg in enumerate(self.segments):
            first = index * self.segment_tokens
            tokens = min(self.segment_tokens, self.token_count - first)
            pieces = -(-tokens * per_token // self.checksum_piece_bytes)
            if (seg.index, seg.first_token, seg.tokens, seg.file) != (index, first, tokens, segment_name(index)):
                return f"segment {index} is listed as {seg.file} tokens [{seg.first_token}, +{seg.tokens})"
            if seg.nbytes != tokens * per_token or len(seg.piece_crc32) != pieces:
                return f"segment {index}: {seg.nbytes} B / {len(seg.piece_crc32)} checksums, expected " \
                       f"{tokens * per_token} B / {pieces}"
        if self.synthetic_past_tokens >= self.token_count:
            return f"synthetic_past_tokens {self.synthetic_past_tokens} >= token_count {self.token_count}"
        if self.kv_bytes != self.token_count * per_token:
            return f"kv_bytes {self.kv_bytes} != {self.token_count} tokens * {per_token} B"
        if self.tokens_nbytes != self.token_count * TOKEN_BYTES or self.tokens_file != TOKENS_NAME:
            return f"tokens file {self.tokens_file} of {self.tokens_nbytes} B, expected {TOKENS_NAME} of " \
                   f"{self.token_count * TOKEN_BYTES} B"
        return None


def read_manifest(directory: Path | str) -> ContextManifest:
    """The manifest of ``directory``, checked: format version, its own sizes, and the size of every file it names
    on disk. ContextFormatError with one line saying what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ContextFormatError(f"{directory} is not a saved context (no such folder)")
    if not path.is_file():
        raise ContextFormatError(f"{directory} is not a saved context: no {MANIFEST_NAME} (an interrupted save "
                                 "leaves none)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContextFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format_version") != CONTEXT_FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise ContextFormatError(f"{path} has format_version {version!r}; this headplan reads "
                                 f"{CONTEXT_FORMAT_VERSION}")
    try:
        manifest = ContextManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ContextFormatError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    problem = manifest.sizes_problem()
    if problem:
        raise ContextFormatError(f"{path}: {problem}")
    check_file_sizes(directory, manifest)
    return manifest


def check_file_sizes(directory: Path, manifest: ContextManifest) -> None:
    """ContextFormatError unless every file the manifest names exists with exactly its size (truncated, grown)."""
    expected = [(manifest.tokens_file, manifest.tokens_nbytes)] + [(s.file, s.nbytes) for s in manifest.segments]
    for name, nbytes in expected:
        try:
            size = os.stat(directory / name).st_size
        except OSError:
            raise ContextFormatError(f"{directory / name} is missing") from None
        if size != nbytes:
            raise ContextFormatError(f"{directory / name} has {size} B, the manifest says {nbytes} B "
                                     f"({'truncated' if size < nbytes else 'grown'})")


def save_bytes_needed(tokens: int, layout: KVFileLayout, dtype_bytes: int) -> int:
    """Disk a save of ``tokens`` tokens writes: the KV, the token ids and a manifest allowance (64 KiB + 64 B per
    segment checksum line)."""
    return tokens * layout.bytes_per_token(dtype_bytes) + tokens * TOKEN_BYTES + 65536 + 64 * tokens
