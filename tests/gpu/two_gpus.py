"""What the tests on two GPUs share: their skip mark, the small Llama-shaped model and its prompt."""

from __future__ import annotations

import pytest
import torch

from planner.model_spec import ModelSpec

TWO_GPUS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                                reason="needs two CUDA GPUs")]
NEW_TOKENS = 6
SPEC = ModelSpec(name="small", model_type="llama", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=1000,
                 max_position_embeddings=4096)


def ids_of(length: int) -> torch.Tensor:
    """A fixed random prompt of ``length`` tokens of SPEC's vocabulary."""
    return torch.randint(0, SPEC.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
