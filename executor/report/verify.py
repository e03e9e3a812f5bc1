"""Verification against the standard transformers forward (the model's own attention, one prefill, DynamicCache),
fed the same generated tokens: the largest logit difference and whether the greedy tokens agree.

In bf16 or fp16 two forwards of the same weights differ by their rounding, and greedy tokens of a random model part
at near-ties, so that difference alone cannot say whether a run is exact. Where it fits, the same standard forward
also runs in float32 on the same weights (the half-precision parameters and buffers converted in place and back:
bf16 -> float32 -> bf16 is exact; tensors kept in float32, such as rotary frequencies, are not touched)
and the block gains ``float32_reference``:
    ours_error      max |ours - float32 standard|       over every step's logits
    standard_error  max |half standard - float32 standard|
    within_standard_error   ours_error <= 2 standard_error + 1e-3  (the CPU tests' bound, tests/cpu/test_exactness.py)
"""

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
    block = {"max_abs_logit_diff": float((ours - reference).abs().max()),
             "reference_max_abs_logit": float(reference.abs().max()),
             "greedy_tokens_agree": greedy == measurement.generated_token_ids,
             "first_disagreement": next((i for i, (a, b) in enumerate(zip(greedy, measurement.generated_token_ids))
                                         if a != b), None)}
    dtype = next(model.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        block["float32_reference"] = float32_reference(model, input_ids, measurement, device, reference, dtype)
    return block


def float32_reference(model, input_ids, measurement: Measurement, device, half_reference: torch.Tensor,
                      dtype: torch.dtype) -> dict:
    """The errors of ours and of the half-precision standard forward against the float32 standard forward of the
    same weights (module docstring); {"skipped": why} when the float32 model does not fit. The model is back in
    ``dtype`` on return, whatever happens."""
    halves = [t for t in (*model.parameters(), *model.buffers()) if t.dtype == dtype]
    if torch.device(device).type == "cpu":
        from executor.runtime.host_memory import host_available_bytes

        extra_bytes, available = sum(2 * t.numel() * t.element_size() for t in halves), host_available_bytes()
        if available is not None and extra_bytes > available // 2:
            return {"skipped": f"the float32 copy of the weights needs {extra_bytes / 2**30:.1f} GiB more host RAM, "
                               f"over half of the {available / 2**30:.1f} GiB available"}
    try:
        for tensor in halves:
            tensor.data = tensor.data.float()
        exact = standard_step_logits(model, input_ids, measurement.generated_token_ids, device)
    except torch.OutOfMemoryError:
        exact = None
    finally:
        for tensor in halves:
            tensor.data = tensor.data.to(dtype)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if exact is None:
        return {"skipped": "the float32 copy of the weights does not fit on this device"}
    ours_error = float((measurement.step_logits - exact).abs().max())
    standard_error = float((half_reference - exact).abs().max())
    return {"ours_error": ours_error, "standard_error": standard_error,
            "within_standard_error": ours_error <= 2.0 * standard_error + 1e-3}
