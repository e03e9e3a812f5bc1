"""Answers from a real model (SmolLM2-135M-Instruct GGUF) through head-offloaded heads, against transformers' own
``generate`` on the same text: the CLI end to end (text, stop at end of turn, stdout = generated_text), sampling
with a seed, stop strings, the Cache that ``model.generate`` accepts, and bad input refused before weights load."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from executor.api import offloaded_cache  # noqa: E402
from executor.generation.output import TokenStream  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.inputs.model_loader import load_checkpoint  # noqa: E402
from executor.inputs.prompt import text_ids  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions, SamplingOptions  # noqa: E402
from headplan.cli import main as cli_main  # noqa: E402
from tests.cpu.real_model import gguf_path  # noqa: E402

QUESTION = "What is the capital of France?"
NEW_TOKENS = 24
# (chunk, heads per group, resident (layer, KV head) slots of 30 x 3): streamed, mixed, all resident
KNOBS = [(16, 1, 0), (8, 3, 45), (64, 1, 90)]


@pytest.fixture(scope="module")
def smol():
    return load_checkpoint(gguf_path(), dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def chat_ids(smol):
    return text_ids(smol.tokenizer, QUESTION, chat=True)


@pytest.fixture(scope="module")
def reference(smol, chat_ids):
    """transformers' own greedy generate (sdpa attention, DynamicCache), stopping at end of turn."""
    out = smol.model.generate(chat_ids, attention_mask=torch.ones_like(chat_ids), max_new_tokens=NEW_TOKENS,
                              do_sample=False, eos_token_id=list(smol.eos_token_ids))
    return out[0, chat_ids.shape[1]:].tolist()


def settings(ids, chunk, group, resident, new_tokens=NEW_TOKENS):
    return ExecutionSettings(chunk_size=chunk, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=ids.shape[1] + new_tokens, attention_backend="math")


def stream_for(smol, ids, **kwargs):
    return TokenStream(device="cpu", capacity_tokens=ids.shape[1] + NEW_TOKENS, eos_token_ids=smol.eos_token_ids,
                       tokenizer=smol.tokenizer, **kwargs)


@pytest.mark.parametrize("chunk,group,resident", KNOBS)
def test_greedy_answer_equals_generate_and_stops_at_end_of_turn(smol, chat_ids, reference, chunk, group, resident):
    stream = stream_for(smol, chat_ids)
    m = execute(smol.model, chat_ids, settings(chat_ids, chunk, group, resident), new_tokens=NEW_TOKENS,
                device="cpu", options=RunOptions(token_stream=stream))
    assert m.generated_token_ids == reference
    assert reference[-1] in smol.eos_token_ids and m.stop_reason == "eos"
    assert stream.text == smol.tokenizer.decode(reference, skip_special_tokens=True)
    assert "Paris" in stream.text


def test_generate_with_the_offloaded_cache_equals_plain_generate(smol, chat_ids, reference):
    for chunk, group, resident in KNOBS[:2]:
        with offloaded_cache(smol.model, settings(chat_ids, chunk, group, resident), device="cpu") as cache:
            out = smol.model.generate(chat_ids, attention_mask=torch.ones_like(chat_ids), past_key_values=cache,
                                      prefill_chunk_size=cache.chunk_size, max_new_tokens=NEW_TOKENS,
                                      do_sample=False, eos_token_id=list(smol.eos_token_ids))
            assert cache.engine.engines[0].counters["prefill"].attention_flops > 0  # our attention really ran
        assert out[0, chat_ids.shape[1]:].tolist() == reference
    assert smol.model.config._attn_implementation != "headplan_offload"  # restored after the block


def test_seeded_sampling_repeats_and_another_seed_differs(smol, chat_ids):
    def sample(seed):
        stream = stream_for(smol, chat_ids, ignore_eos=True)
        sampling = SamplingOptions(temperature=1.5, top_p=0.95, top_k=200, repetition_penalty=1.1, seed=seed)
        execute(smol.model, chat_ids, settings(chat_ids, 16, 1, 30), new_tokens=NEW_TOKENS, device="cpu",
                options=RunOptions(token_stream=stream, sampling=sampling))
        return stream.tokens
    first, again, other = sample(7), sample(7), sample(8)
    assert first == again and len(first) == NEW_TOKENS
    assert first != other


def test_greedy_with_repetition_penalty_equals_generate(smol, chat_ids):
    """The processors are transformers' own: greedy with a penalty gives generate's tokens."""
    out = smol.model.generate(chat_ids, attention_mask=torch.ones_like(chat_ids), max_new_tokens=12,
                              do_sample=False, repetition_penalty=1.3, eos_token_id=list(smol.eos_token_ids))
    m = execute(smol.model, chat_ids, settings(chat_ids, 8, 1, 20), new_tokens=12, device="cpu",
                options=RunOptions(sampling=SamplingOptions(repetition_penalty=1.3),
                                   token_stream=stream_for(smol, chat_ids)))
    assert m.generated_token_ids == out[0, chat_ids.shape[1]:].tolist()


def test_stop_string_cuts_before_it(smol, chat_ids, reference):
    full = smol.tokenizer.decode(reference, skip_special_tokens=True)
    assert " is " in full
    stream = stream_for(smol, chat_ids, stop_strings=[" is "])
    m = execute(smol.model, chat_ids, settings(chat_ids, 16, 1, 0), new_tokens=NEW_TOKENS, device="cpu",
                options=RunOptions(token_stream=stream))
    assert m.stop_reason == "stop"
    assert stream.text == full[:full.index(" is ")]
    assert len(m.generated_token_ids) < len(reference)


def test_cli_answers_in_text_on_stdout(tmp_path, capsys, reference, smol):
    prompt = tmp_path / "question.txt"
    prompt.write_text(QUESTION + "\n")
    out_dir = tmp_path / "run"
    code = cli_main(["run", "--device", "cpu", "--model-path", str(gguf_path()), "--prompt", str(prompt), "--chat",
                     "--dtype", "float32", "--new-tokens", str(NEW_TOKENS), "--chunk-size", "16",
                     "--heads-per-group", "1", "--resident-heads", "30", "--out", str(out_dir), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["generated_text"] == smol.tokenizer.decode(reference, skip_special_tokens=True)
    assert captured.out == report["generated_text"] + "\n"  # the stream is the answer, nothing else
    assert report["stop_reason"] == "eos" and report["prompt_tokens"] > 0
    assert "report:" in captured.err and "report:" not in captured.out
    assert "Paris" in (out_dir / "report.md").read_text()


def test_cli_stop_and_quiet(tmp_path, capsys):
    prompt = tmp_path / "question.txt"
    prompt.write_text(QUESTION)
    out_dir = tmp_path / "run"
    code = cli_main(["run", "--device", "cpu", "--model-path", str(gguf_path()), "--prompt", str(prompt), "--chat",
                     "--dtype", "float32", "--new-tokens", str(NEW_TOKENS), "--stop", "Paris", "--quiet",
                     "--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--out", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert captured.out == report["generated_text"] + "\n"
    assert "Paris" not in report["generated_text"]
    assert report["stop_reason"] in ("stop", "eos", "length")
    assert report["sampling"]["temperature"] == 0.7 and report["sampling"]["stop"] == ["Paris"]
    assert "report:" not in captured.err


def _no_weights(monkeypatch):
    """Make any weight load fail loudly: the refusals below must come before it."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _run_args(tmp_path, *extra, model=None):
    return ["run", "--device", "cpu", "--model-path", str(model or gguf_path()), "--out", str(tmp_path / "o"),
            "--dtype", "float32", *extra]


@pytest.mark.parametrize("extra,message", [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--system", "be brief"], "--system needs --chat"),
    (["--chat"], "--chat needs --prompt"),
])
def test_bad_generation_options_refused_before_weights(tmp_path, capsys, monkeypatch, extra, message):
    _no_weights(monkeypatch)
    code = cli_main(_run_args(tmp_path, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_empty_prompt_and_too_long_prompt_refused_before_weights(tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert cli_main(_run_args(tmp_path, "--prompt", str(empty))) == 2
    assert "is empty" in capsys.readouterr().err
    plan = tmp_path / "plan.json"
    assert cli_main(["plan", "--model", str(gguf_path()), "--context", "8", "--json", "--out", str(plan)]) == 0
    capsys.readouterr()
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("word " * 40)
    assert cli_main(_run_args(tmp_path, "--prompt", str(long_prompt), "--plan", str(plan))) == 2
    assert "plan again" in capsys.readouterr().err


def test_chat_without_a_template_refused(tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path().parent, gguf_file=gguf_path().name)
    tokenizer.chat_template = None
    monkeypatch.setattr("executor.inputs.model_loader.load_tokenizer_of", lambda path: tokenizer)
    _no_weights(monkeypatch)
    prompt = tmp_path / "q.txt"
    prompt.write_text(QUESTION)
    assert cli_main(_run_args(tmp_path, "--prompt", str(prompt), "--chat")) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_damaged_and_foreign_gguf_files_refused_before_weights(tmp_path, capsys, monkeypatch):
    import gguf

    _no_weights(monkeypatch)
    truncated = tmp_path / "cut.gguf"
    with open(gguf_path(), "rb") as source:
        truncated.write_bytes(source.read(5_000_000))
    foreign = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(foreign), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 4), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    for path, message in ((truncated, "truncated"), (foreign, "architecture 'gpt2' is not supported"),
                          (not_gguf, "not a GGUF file")):
        assert cli_main(_run_args(tmp_path, model=path)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    copy = tmp_path / "model.gguf"
    shutil.copy(gguf_path(), copy)
    assert cli_main(["plan", "--model", str(copy), "--context", "4K", "--gpu-mem", "24GB"]) == 0
    assert capsys.readouterr().out.startswith("headplan plan: model on ")  # planned from the header alone


# --- many questions over one prefilled document ----------------------------------------------------------------

DOCUMENT = "Alice lives in Paris and works as a baker. Bob lives in Rome and teaches music."
QUESTIONS = ["Where does Bob live?", "What does Alice do?"]


def test_questions_over_one_prefill_equal_one_shot_generate(smol):
    """Each answer after the once-prefilled document equals transformers' generate over [document, question]."""
    from executor.generation.document import DocumentEngine
    from executor.inputs.prompt import document_ids, question_ids

    doc = document_ids(smol.tokenizer, DOCUMENT, chat=True)
    asked = [question_ids(smol.tokenizer, q, document=DOCUMENT, chat=True) for q in QUESTIONS]
    capacity = doc.shape[1] + max(q.shape[1] for q in asked) + NEW_TOKENS
    knobs = ExecutionSettings(chunk_size=16, heads_per_group=1, resident_kv_heads=30, capacity_tokens=capacity,
                              attention_backend="math")
    with DocumentEngine(smol.model, knobs, device="cpu") as engine:
        engine.prefill_document(doc)
        answers = [engine.answer(q, new_tokens=NEW_TOKENS, stream=stream_for(smol, torch.cat([doc, q], 1)))
                   for q in asked * 2]  # each question twice: the second round starts from the document again
    for question, answer in zip(asked * 2, answers):
        joined = torch.cat([doc, question], dim=1)
        out = smol.model.generate(joined, attention_mask=torch.ones_like(joined), max_new_tokens=NEW_TOKENS,
                                  do_sample=False, eos_token_id=list(smol.eos_token_ids))
        assert answer.token_ids == out[0, joined.shape[1]:].tolist()
    assert answers[0].token_ids == answers[2].token_ids and answers[1].token_ids == answers[3].token_ids


def test_cpu_share_switched_between_answers_keeps_them_exact(smol):
    """One prefilled document asked at F 0.5, then F 0, then F 1: every answer equals generate over [document,
    question], and the decode counters show the host share on and off (the stores are not rebuilt)."""
    from executor.generation.document import DocumentEngine
    from executor.inputs.prompt import document_ids, question_ids

    doc = document_ids(smol.tokenizer, DOCUMENT, chat=True)
    question = question_ids(smol.tokenizer, QUESTIONS[0], document=DOCUMENT, chat=True)
    joined = torch.cat([doc, question], dim=1)
    expected = smol.model.generate(joined, attention_mask=torch.ones_like(joined), max_new_tokens=NEW_TOKENS,
                                   do_sample=False, eos_token_id=list(smol.eos_token_ids))[0, joined.shape[1]:]
    knobs = ExecutionSettings(chunk_size=16, heads_per_group=2, resident_kv_heads=9,
                              capacity_tokens=joined.shape[1] + NEW_TOKENS, attention_backend="math", cpu_share=0.5)
    host_bytes = []
    with DocumentEngine(smol.model, knobs, device="cpu") as engine:
        engine.prefill_document(doc)
        for share in (0.5, 0.0, 1.0):
            engine.set_cpu_share(share)
            before = engine.engine.counters.get("decode")
            before_bytes = before.host_attention_bytes if before else 0
            answer = engine.answer(question, new_tokens=NEW_TOKENS, stream=stream_for(smol, joined))
            assert answer.token_ids == expected.tolist(), f"F {share}"
            assert 0 < answer.decode_steps < NEW_TOKENS and answer.decode_s > 0
            host_bytes.append(engine.engine.counters["decode"].host_attention_bytes - before_bytes)
        with pytest.raises(ValueError, match="cpu_share"):
            engine.set_cpu_share(1.5)
    assert host_bytes[0] > 0 and host_bytes[1] == 0 and host_bytes[2] > host_bytes[0]


def test_cli_questions_and_chat_give_the_same_answers(tmp_path, capsys, monkeypatch):
    import io

    document = tmp_path / "doc.txt"
    document.write_text(DOCUMENT)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps(QUESTIONS))
    common = ["--device", "cpu", "--model-path", str(gguf_path()), "--prompt", str(document), "--chat",
              "--dtype", "float32", "--new-tokens", "16", "--chunk-size", "16", "--heads-per-group", "1",
              "--resident-heads", "30", "--quiet"]
    assert cli_main(["run", *common, "--questions", str(questions), "--out", str(tmp_path / "q")]) == 0
    asked = capsys.readouterr().out
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert [q["question"] for q in report["questions"]] == QUESTIONS
    assert report["document_tokens"] > 0 and all(q["answer"] and q["seconds"] > 0 for q in report["questions"])
    for q in report["questions"]:
        assert f"Q: {q['question']}\nA: {q['answer']}" in asked
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(QUESTIONS) + "\n\n"))
    assert cli_main(["chat", *common, "--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out == asked  # the same answers, each from the document again


def test_questions_refusals(tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps(QUESTIONS))
    assert cli_main(_run_args(tmp_path, "--questions", str(questions))) == 2
    assert "questions need --prompt" in capsys.readouterr().err
    questions.write_text("[]")
    document = tmp_path / "doc.txt"
    document.write_text(DOCUMENT)
    assert cli_main(_run_args(tmp_path, "--questions", str(questions), "--prompt", str(document))) == 2
    assert "JSON list of non-empty strings" in capsys.readouterr().err
