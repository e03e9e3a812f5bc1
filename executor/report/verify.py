"""Verification against the standard transformers forward (the model's own attention, one prefill, DynamicCache),
fed the same generated tokens: the largest logit difference and whether the greedy tokens agree."""

from __future__ import annotations

from typing import Union

import torch

from executor.engine.cache import with_cache
from executor.generation.measurement import Measurement


def standard_step_logits(model, input_ids: torch.Tensor, generated_ids: list[int],
                         device: Union[str, torch.device]) -> torch.Tensor:
    """The standard transformers forward (the model's own attention, one prefill, DynamicCache), fed the
    same generated tokens: [len(generated_ids), vocab] float32 logits of each step's last position."""
    from transformers import DynamicCache

    steps = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids.to(device), **with_cache(model, cache), use_cache=True, logits_to_keep=1)
        steps.append(out.logits[0, -1].float())
        for token in generated_ids[:-1]:
            ids = torch.tensor([[token]], device=device)
            out = model(ids, **with_cache(model, cache), use_cache=True)
            steps.append(out.logits[0, -1].float())
    return torch.stack(steps).cpu()


def verify_against_standard(model, input_ids, measurement: Measurement, device) -> dict:
    """Largest logit difference against the standard forward and whether greedy tokens agree."""
    try:
        reference = standard_step_logits(model, input_ids, measurement.generated_token_ids, device)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"skipped": "the standard forward does not fit on this GPU"}
    ours = measurement.step_logits
    greedy = reference.argmax(-1).tolist()
    return {"max_abs_logit_diff": float((ours - reference).abs().max()),
            "reference_max_abs_logit": float(reference.abs().max()),
            "greedy_tokens_agree": greedy == measurement.generated_token_ids,
            "first_disagreement": next((i for i, (a, b) in enumerate(zip(greedy, measurement.generated_token_ids))
                                        if a != b), None)}
