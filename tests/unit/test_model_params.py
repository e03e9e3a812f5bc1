"""Parameter counts derived from the architecture against the published counts."""

import json

import pytest

from planner.builtin_models import BUILTIN_MODELS
from planner.model_spec import ModelSpecError, load_model_spec, model_spec_from_config


@pytest.mark.parametrize("name, published_billions", [
    ("llama-3-8b", 8.03), ("llama-3-70b", 70.6), ("llama-3.2-1b", 1.24), ("mistral-7b", 7.24),
    ("qwen2.5-7b", 7.62), ("llama-2-7b", 6.74), ("llama-3.2-3b", 3.21),
])
def test_param_count_matches_published(name, published_billions):
    count = BUILTIN_MODELS[name].param_count
    assert abs(count / 1e9 - published_billions) / published_billions < 0.005


def test_param_count_terms_by_hand():
    spec = BUILTIN_MODELS["llama-3-8b"]
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096
    assert spec.layer_param_count == layer
    assert spec.param_count == 2 * 128256 * 4096 + 32 * layer + 4096
    tied = BUILTIN_MODELS["llama-3.2-1b"]
    assert tied.embedding_param_count == 128256 * 2048
    qwen = BUILTIN_MODELS["qwen2.5-7b"]   # q, k, v biases
    assert qwen.layer_param_count == (3584 * 3584 * 2 + 3584 * 512 * 2 + 3584 + 2 * 512
                                      + 3 * 3584 * 18944 + 2 * 3584)


def test_kv_bytes_per_token():
    assert BUILTIN_MODELS["llama-3-8b"].kv_bytes_per_token(2) == 128 * 1024
    assert BUILTIN_MODELS["llama-3.2-1b"].kv_bytes_per_token(2) == 32 * 1024


def test_config_file_round_trip(tmp_path):
    spec = BUILTIN_MODELS["llama-3-8b"]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(spec.to_hf_config_dict()))
    loaded = load_model_spec(str(folder))
    assert loaded.param_count == spec.param_count
    with pytest.raises(ModelSpecError):
        model_spec_from_config({"model_type": "gpt2"})
