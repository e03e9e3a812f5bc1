"""The --tail-chunks timing probe on CPU: execute over a synthetic past (chunks, cache length, tokens), its outputs
equal the standard forward over a cache whose first N rows are the synthetic pattern (resident and streamed heads
alike; the pattern tiles and fills in place), a capacity too small is refused; run_plan restricts the prediction to the same chunks and refuses --verify;
the CLI writes the tail block and refuses bad values with exit 2."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.generation import runner  # noqa: E402
from executor.api import run_plan  # noqa: E402
from executor.generation.tail import (PATTERN_ROWS, fill_synthetic_rows, synthetic_past_rows,  # noqa: E402
                                      synthetic_pattern, tail_split)
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402
from executor.engine.cache import OffloadCache, with_cache  # noqa: E402
from executor.report.markdown import render_markdown  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from headplan.cli import main as cli_main  # noqa: E402
from tests.cpu.test_exactness import prompt, tiny_model  # noqa: E402

PROMPT, CHUNK, PAST, NEW = 26, 4, 16, 3     # the full prompt's chunks start at 0, 4, ..., 24: the tail is 3 of 7
ALL_RESIDENT = dict(resident=4, group=1)     # tiny_model: 2 layers x 2 KV heads
STREAMED = dict(resident=1, group=1)


def tail_settings(*, resident: int, group: int, capacity: int = PROMPT + NEW) -> ExecutionSettings:
    return ExecutionSettings(chunk_size=CHUNK, heads_per_group=group, resident_kv_heads=resident,
                             capacity_tokens=capacity, attention_backend="math")


def run_tail(model, ids, *, past: int = PAST, **knobs):
    return execute(model, ids[:, past:], tail_settings(**knobs), new_tokens=NEW, device="cpu",
                   options=RunOptions(keep_logits=True, synthetic_past_tokens=past))


def synthetic_past_reference(model, tail_ids: torch.Tensor, past: int, generated: list[int],
                             device: str = "cpu") -> torch.Tensor:
    """The standard forward (the model's own attention) over a DynamicCache holding ``past`` rows of the synthetic
    pattern (generation/tail.py synthetic_past_rows) per layer and KV head, fed the same generated tokens:
    [len(generated), vocab] float32 logits (on CPU) of each step's last position."""
    from transformers import DynamicCache

    config, dtype = model.config, next(model.parameters()).dtype
    cache = DynamicCache(config=config)
    with torch.inference_mode():
        for layer in range(config.num_hidden_layers):
            keys, values = (rows.expand(1, config.num_key_value_heads, past, config.head_dim).clone()
                            for rows in synthetic_past_rows(past, config.head_dim, dtype, device))
            cache.update(keys, values, layer)
        steps = [model(tail_ids.to(device), **with_cache(model, cache), use_cache=True).logits[0, -1]]
        for token in generated[:-1]:
            ids = torch.tensor([[token]], device=device)
            steps.append(model(ids, **with_cache(model, cache), use_cache=True).logits[0, -1])
    return torch.stack(steps).float().cpu()


@pytest.mark.parametrize("knobs", [ALL_RESIDENT, STREAMED], ids=["all-resident", "streamed"])
def test_synthetic_past_runs_the_tail_chunks(monkeypatch, knobs):
    caches = []
    monkeypatch.setattr(runner, "OffloadCache", lambda *a, **k: caches.append(OffloadCache(*a, **k)) or caches[-1])
    measurement = run_tail(tiny_model(), prompt(PROMPT), **knobs)
    assert len(measurement.chunk_s) == 3 and measurement.chunk_tokens == [4, 4, 2]
    assert measurement.synthetic_past_tokens == PAST and measurement.prompt_tokens == PROMPT - PAST
    assert len(measurement.generated_token_ids) == NEW
    assert caches[0].get_seq_length() == PAST + (PROMPT - PAST) + NEW - 1
    if knobs is STREAMED:  # the streamed heads' pasts, synthetic rows included, came from the host store
        assert measurement.counters["prefill"].h2d_bytes > 0


@pytest.mark.parametrize("knobs", [ALL_RESIDENT, STREAMED], ids=["all-resident", "streamed"])
def test_synthetic_past_equals_a_cache_of_its_pattern(knobs):
    """The tail run's logits are the standard forward's over a past of the pattern's K, V rows (float32, 1e-5)."""
    model, ids = tiny_model(), prompt(PROMPT)
    measurement = run_tail(model, ids, **knobs)
    reference = synthetic_past_reference(model, ids[:, PAST:], PAST, measurement.generated_token_ids)
    assert (measurement.step_logits - reference).abs().max().item() < 1e-5
    assert measurement.generated_token_ids == reference.argmax(-1).tolist()


def test_store_placement_does_not_change_a_tail_run():
    """Resident and streamed heads read the synthetic rows from different stores (GPU resident, host): same logits;
    the same run twice is identical; the tail ids as a fresh prompt (positions from 0, no past) differ."""
    model, ids = tiny_model(), prompt(PROMPT)
    resident, streamed = run_tail(model, ids, **ALL_RESIDENT), run_tail(model, ids, **STREAMED)
    assert (resident.step_logits - streamed.step_logits).abs().max().item() < 1e-5
    assert torch.equal(run_tail(model, ids, **STREAMED).step_logits, streamed.step_logits)
    fresh = execute(model, ids[:, PAST:], tail_settings(**STREAMED), new_tokens=NEW, device="cpu",
                    options=RunOptions(keep_logits=True))
    assert (fresh.step_logits[0] - streamed.step_logits[0]).abs().max().item() > 1e-3


def test_capacity_must_hold_the_synthetic_past():
    model, ids = tiny_model(), prompt(PROMPT)
    with pytest.raises(ValueError, match="synthetic past 16"):
        execute(model, ids[:, PAST:], tail_settings(**STREAMED, capacity=PROMPT + NEW - 2), new_tokens=NEW,
                device="cpu", options=RunOptions(synthetic_past_tokens=PAST))
    with pytest.raises(ValueError, match=">= 0"):
        execute(model, ids, tail_settings(**STREAMED), new_tokens=NEW, device="cpu",
                options=RunOptions(synthetic_past_tokens=-1))


TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97}


def tiny_plan(context: int = PROMPT):
    from hwprofiles import load_profile
    from planner.model_spec import ModelSpec
    from planner.solver import make_plan

    spec = ModelSpec(name="tiny", max_position_embeddings=256, **TINY_CONFIG)
    return make_plan(spec, load_profile("h100-sxm-measured"), context_tokens=context, decode_tokens=NEW,
                     gpu_mem_bytes=24 * 10**9, dtype="float32", chunk_size=CHUNK, heads_per_group=1,
                     resident_kv_heads=1)


def test_run_plan_compares_the_tail_with_its_chunks_prediction():
    from executor.inputs.model_loader import build_random

    plan = tiny_plan()
    model, ids = build_random(plan.model, dtype=torch.float32, device="cpu", seed=0).model, prompt(PROMPT)
    assert len(plan.predicted.chunk_s) == 7
    result = run_plan(model, plan, ids, new_tokens=NEW, device="cpu", tail_chunks=3)
    report = result.report
    assert report.tail is not None
    # one untimed lead-in chunk (at 12) before the 3 timed ones (16, 20, 24)
    assert (report.tail.chunks, report.tail.total_chunks, report.tail.skipped_tokens, report.tail.lead_in) == \
        (3, 7, PAST - CHUNK, 1)
    assert report.tail.predicted_full_prefill_s == plan.predicted.prefill_s
    assert report.predicted.prefill_s == pytest.approx(sum(plan.predicted.chunk_s[-3:]))
    assert report.predicted.chunk_s == plan.predicted.chunk_s[-3:]
    assert len(report.measured.chunk_s) == 3 and len(report.error.chunk_s) == 3
    assert report.context_tokens == PROMPT and len(report.generated_token_ids) == NEW
    assert result.measurement.synthetic_past_tokens == PAST - CHUNK
    assert len(result.measurement.chunk_s) == 4                        # lead-in + 3 timed
    assert report.measured.prefill_s == pytest.approx(sum(result.measurement.chunk_s[1:]))
    assert "last 3 of 7 chunks" in render_markdown(report)


def test_run_plan_tail_covering_every_chunk_is_a_whole_run():
    from executor.inputs.model_loader import build_random

    plan = tiny_plan()
    model = build_random(plan.model, dtype=torch.float32, device="cpu", seed=0).model
    report = run_plan(model, plan, prompt(PROMPT), new_tokens=NEW, device="cpu", tail_chunks=7).report
    assert report.tail is None and len(report.measured.chunk_s) == 7
    assert report.predicted.prefill_s == plan.predicted.prefill_s


def test_run_plan_refuses_verify_bad_counts_and_bare_settings():
    plan, model, ids = tiny_plan(), tiny_model(), prompt(PROMPT)
    with pytest.raises(ValueError, match="--verify needs the whole prefill"):
        run_plan(model, plan, ids, new_tokens=NEW, device="cpu", tail_chunks=2, verify=True)
    with pytest.raises(ValueError, match="at least 1"):
        run_plan(model, plan, ids, new_tokens=NEW, device="cpu", tail_chunks=0)
    with pytest.raises(ValueError, match="needs a Plan"):
        run_plan(model, tail_settings(**STREAMED), ids, new_tokens=NEW, device="cpu", tail_chunks=2)


def test_tail_split():
    assert tail_split(26, 4, None) is None and tail_split(26, 4, 7) is None and tail_split(26, 4, 9) is None
    assert tail_split(26, 4, 1).skipped_tokens == 20 and tail_split(26, 4, 6).skipped_tokens == 0
    assert tail_split(26, 4, 1).run_chunks == 2 and tail_split(26, 4, 1).lead_in == 1
    assert tail_split(256, 64, 2).total_chunks == 4


def cli_run(tmp_path, *extra):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    return cli_main(["run", "--device", "cpu", "--model", str(config), "--context", "256", "--chunk-size", "64",
                     "--heads-per-group", "1", "--resident-heads", "1", "--new-tokens", "3", "--dtype", "float32",
                     "--gpu-mem", "24GB", "--out", str(tmp_path / "out"), "--no-progress", *extra])


def test_cli_tail_chunks_writes_the_tail_block(tmp_path, capsys):
    assert cli_run(tmp_path, "--tail-chunks", "2") == 0
    assert "last 2 of 4 chunks" in capsys.readouterr().err  # timings on stderr; stdout is for the answer
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["tail"]["chunks"] == 2 and report["tail"]["total_chunks"] == 4
    assert report["tail"]["skipped_tokens"] == 64 and "random pattern" in report["tail"]["description"]  # lead-in at 64
    assert len(report["measured"]["chunk_s"]) == 2 and len(report["predicted"]["chunk_s"]) == 2
    assert report["predicted"]["prefill_s"] == pytest.approx(sum(report["predicted"]["chunk_s"]))
    assert "last 2 of 4 chunks" in (tmp_path / "out" / "report.md").read_text()
    assert cli_main(["report", str(tmp_path / "out")]) == 0                 # re-rendered from report.json


@pytest.mark.parametrize("extra,message", [(["--tail-chunks", "0"], "at least 1"),
                                           (["--tail-chunks", "2", "--verify"], "--verify needs the whole prefill")])
def test_cli_tail_chunks_bad_input(tmp_path, capsys, extra, message):
    assert cli_run(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_validation_cells_and_summary_mark_the_tail(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    monkeypatch.setattr(sys, "path", list(sys.path))  # validate.py puts benchmarks/ first: undone after the test
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "validate.py"
    spec = importlib.util.spec_from_file_location("validate_for_tests", path)
    validate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate)
    assert validate.expand_cells("preset:tail-1b-2m") == ["llama-3.2-1b:2M:80GB:tail=6",
                                                            "llama-3.2-1b:2M:24GB:tail=6"]
    assert validate.cell_flags("llama-3.2-1b:2M:80GB:tail=6")[-2:] == ["--tail-chunks", "6"]
    from validation_summary import _cell_line  # importable once validate.py put benchmarks/ on the path

    report = {"settings": {"chunk_size": 8192, "heads_per_group": 1, "resident_kv_heads": 2,
                           "attention_backend": "flash"},
              "predicted": {"prefill_s": 2.0}, "measured": {"prefill_s": 2.2}}
    row = {"cell": "llama-3.2-1b:2M:80GB:tail=6", "wall_s": 300, "report": dict(report)}
    assert "(last" not in _cell_line(row) and "+10.0%" in _cell_line(row)
    row["report"]["tail"] = {"chunks": 6, "total_chunks": 256, "skipped_tokens": 2_048_000}
    assert "R=2 flash (last 6 of 256 chunks) |" in _cell_line(row)


def test_grid_summary_ranks_probes_by_their_estimated_whole_prefill(tmp_path, monkeypatch):
    """A grid of timing probes: each row stands for its configuration (the cell without tail=), its whole prefill
    the plan's whole prediction times the timed chunks' measured / predicted; the planner's probe is the choice."""
    import sys
    from pathlib import Path

    monkeypatch.setattr(sys, "path", [str(Path(__file__).resolve().parents[2] / "benchmarks")] + sys.path)
    from grid_summary import summarize_grid

    def row(cell, knobs, measured_tail_s, decode_s):
        c, g, r = knobs
        return {"cell": cell, "date": "2026-12-01", "report": {
            "new_tokens": 16, "settings": {"chunk_size": c, "heads_per_group": g, "resident_kv_heads": r},
            "predicted": {"prefill_s": 10.0, "decode_s_per_token": 0.5},
            "measured": {"prefill_s": measured_tail_s, "decode_s_per_token": decode_s},
            "tail": {"chunks": 8, "total_chunks": 128, "predicted_full_prefill_s": 100.0}}}
    path = tmp_path / "grid.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        row("m:512K:24GB:tail=8", (4096, 2, 19), 11.0, 0.5),                 # 110 + 8 = 118 s
        row("m:512K:24GB:c=8K:G=4:tail=4", (8192, 4, 40), 10.0, 0.55))) + "\n")   # 100 + 8.8 = 108.8 s
    summary, text = summarize_grid([path], "m:512K:24GB", "grid")
    assert [r["cell"] for r in summary["rows"]] == ["m:512K:24GB:c=8K:G=4", "m:512K:24GB"]
    assert summary["rows"][1]["measured_prefill_s"] == pytest.approx(110.0) and summary["choice_rank"] == 2
    assert summary["choice_over_best"] == pytest.approx(118.0 / 108.8 - 1) and "(est.)" in text


def test_the_pattern_tiles_in_place_and_clamps_to_a_window():
    """fill_synthetic_rows writes row p = pattern[p % PATTERN_ROWS] into a [h, T, d] view (doubling copies),
    leaves rows from N on untouched, and a ring shorter than N is filled whole."""
    keys, _values = synthetic_pattern(8, torch.float32)
    tokens = 2 * PATTERN_ROWS + 123
    store = torch.full((2, tokens + 5, 8), 7.0)
    fill_synthetic_rows(store, tokens, keys)
    expected = synthetic_past_rows(tokens, 8, torch.float32)[0]
    assert torch.equal(store[0, :tokens], expected) and torch.equal(store[1, :tokens], expected)
    assert torch.equal(store[:, tokens:], torch.full((2, 5, 8), 7.0))
    assert torch.equal(expected[PATTERN_ROWS + 5], keys[5]) and keys.std() > 0.5   # random, not zeros
    ring = torch.zeros(1, 100, 8)
    fill_synthetic_rows(ring, tokens, keys)
    assert torch.equal(ring[0], keys[:100])
