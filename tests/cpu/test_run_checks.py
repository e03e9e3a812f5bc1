"""Faults a new user meets late, checked early (headplan/run_checks.py): an output folder that cannot be made or
written stops `run` before anything loads (exit 2, one line); `plan` and `profile` check their output files before
planning or measuring; a failing plot never costs report.json; a plan's coverage and trained-length notes reach the
run's warnings; the profile is stored in the per-user store."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from headplan import cmd_run  # noqa: E402
from headplan.cli import main as cli_main  # noqa: E402
from tests.cpu.test_run_faults import TINY_CONFIG  # noqa: E402

RUN = ["run", "--device", "cpu", "--context", "11", "--chunk-size", "4", "--heads-per-group", "1",
       "--resident-heads", "1", "--new-tokens", "2", "--dtype", "float32", "--no-progress", "--gpu-mem", "24GB"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(cmd_run, "_load_model", refuse)


def test_run_out_that_cannot_be_created_stops_before_loading(tmp_path, config, no_load, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker / "report", blocker):
        assert cli_main(RUN + ["--model", str(config), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--out" in err and str(out) in err


def test_run_host_ram_checked_before_loading(tmp_path, config, no_load, capsys, monkeypatch):
    import executor.runtime.host_memory as host_memory

    monkeypatch.setattr(host_memory, "host_available_bytes", lambda: 10)
    assert cli_main(RUN + ["--model", str(config), "--out", str(tmp_path / "o"), "--resident-heads", "0"]) == 2
    assert "host KV store needs" in capsys.readouterr().err


def test_plot_failure_keeps_report_json_with_a_warning(tmp_path, config, monkeypatch, capsys):
    import executor.report.plots as plots

    def broken(*args, **kwargs):
        raise RuntimeError("no display, no fonts, no luck")

    monkeypatch.setattr(plots, "write_plots", broken)
    monkeypatch.setattr(plots, "write_trace", broken)
    out = tmp_path / "out"
    assert cli_main(RUN + ["--model", str(config), "--out", str(out), "--trace"]) == 0
    report = json.loads((out / "report.json").read_text())
    failed = [w for w in report["warnings"] if "failed" in w]
    assert len(failed) == 2 and "plots" in failed[0] and "trace" in failed[1]
    assert "no luck" in capsys.readouterr().err
    assert "writing the plots failed" in (out / "report.md").read_text()


def test_plan_notes_become_run_warnings(tmp_path, config, capsys):
    """The tiny model's trained length (8192 by default) is short of nothing here; a config with a short trained
    length and a datasheet profile (no attention tables) give a trained-length and a coverage warning."""
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**TINY_CONFIG, "max_position_embeddings": 8}))
    out = tmp_path / "out"
    assert cli_main(RUN + ["--model", str(short), "--out", str(out), "--hw", "rtx-4090"]) == 0
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any(w.startswith("trained length:") and "11 tokens" in w and "8 tokens" in w for w in warnings)
    assert any(w.startswith("profile coverage:") for w in warnings)
    assert "warning: trained length" in capsys.readouterr().err


def test_plan_output_files_checked_before_planning(tmp_path, capsys, monkeypatch):
    import planner.solver

    monkeypatch.setattr(planner.solver, "make_plan", lambda *a, **k: pytest.fail("planned first"))
    blocker = tmp_path / "f"
    blocker.write_text("")
    for flag, path in (("--out", blocker / "plan.json"), ("--out", tmp_path), ("--plot", blocker / "x.png")):
        assert cli_main(["plan", flag, str(path)]) == 2
        assert "error" in capsys.readouterr().err


def test_profile_outputs_checked_before_measuring_and_stored(tmp_path, capsys, monkeypatch):
    import executor.profiler as profiler
    from hwprofiles.defaults import user_profile_dir

    blocker = tmp_path / "f"
    blocker.write_text("")
    monkeypatch.setattr(profiler, "run_profile", lambda *a, **k: pytest.fail("measured first"))
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--out", str(blocker / "p.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--model", "no-such-model"]) == 2
    from executor.profiler.runner import ProfileRun
    from hwprofiles import load_profile

    def fake_run(options, stream=None):  # the storing is under test, not the measuring (tests/cpu/test_profiler.py)
        measured = load_profile("h200-sxm-quick").model_copy(update={"name": options.name})
        return ProfileRun(profile=measured, datasheet=None, elapsed_s=1.0)

    monkeypatch.setattr(profiler, "run_profile", fake_run)
    out = tmp_path / "p.json"
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--out", str(out), "--quiet",
                     "--name", "box-measured"]) == 0
    stored = user_profile_dir() / "box-measured.json"
    assert out.exists() and stored.exists() and json.loads(stored.read_text())["name"] == "box-measured"
    assert str(stored) in capsys.readouterr().out
    assert cli_main(["profile", "--sizes", "tiny", "--device", "cpu", "--out", str(tmp_path / "q.json"), "--quiet",
                     "--name", "box2", "--no-store"]) == 0
    assert not (user_profile_dir() / "box2.json").exists()
