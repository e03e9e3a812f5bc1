"""headplan run --save-kv / --load-kv, headplan plan --load-kv and headplan profile --disk on CPU: the report's kv
block, the same tokens as a run without the load, and each refusal as one line with exit 2 before the run (no
report written, nothing overwritten)."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.report.markdown import render_markdown  # noqa: E402
from executor.report.schema import RunReport  # noqa: E402
from headplan.cli import main as cli_main  # noqa: E402
from tests.cpu.test_tail_chunks import TINY_CONFIG  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("kvcli")
    (root / "config.json").write_text(json.dumps(TINY_CONFIG))
    rng = random.Random(0)
    saved = [rng.randrange(97) for _ in range(100)]
    (root / "a.json").write_text(json.dumps(saved))
    (root / "b.json").write_text(json.dumps(saved[:70] + [rng.randrange(97) for _ in range(30)]))
    assert cli_run(root, "a.json", "o1", "--save-kv", str(root / "ctx"), "--kv-segment-tokens", "16") == 0
    return root


def cli_run(root, prompt, out, *extra, chunk="32", resident="1"):
    return cli_main(["run", "--device", "cpu", "--model", str(root / "config.json"), "--prompt-ids",
                     str(root / prompt), "--chunk-size", chunk, "--heads-per-group", "1", "--resident-heads",
                     resident, "--new-tokens", "3", "--dtype", "float32", "--gpu-mem", "24GB", "--out",
                     str(root / out), "--no-progress", *extra])


def report(root, out) -> RunReport:
    return RunReport.model_validate_json((root / out / "report.json").read_text())


def test_save_then_load_with_other_knobs(files, capsys):
    saved = report(files, "o1")
    assert saved.kv.save_path == str(files / "ctx") and saved.kv.saved_bytes == 100 * 2 * 2 * 2 * 16 * 4
    assert saved.kv.reused_tokens == 0 and saved.kv.prefilled_tokens == 100
    assert cli_run(files, "b.json", "ref", chunk="16", resident="2") == 0
    assert cli_run(files, "b.json", "o2", "--load-kv", str(files / "ctx"), chunk="16", resident="3") == 0
    assert "kv: loaded 70 tokens" in capsys.readouterr().err  # figures on stderr; stdout is for the answer
    loaded, reference = report(files, "o2"), report(files, "ref")
    assert loaded.generated_token_ids == reference.generated_token_ids
    assert loaded.kv.reused_tokens == 70 and loaded.kv.prefilled_tokens == 30 and loaded.kv.path == str(files / "ctx")
    assert loaded.kv.loaded_bytes == 80 * 2 * 2 * 2 * 16 * 4    # five whole 16-token segments
    assert loaded.predicted.prefill_s < reference.predicted.prefill_s  # predicted for tokens [70, 100) only
    assert "Loaded context" in render_markdown(loaded)


@pytest.mark.parametrize("extra,message", [
    (["--tail-chunks", "1"], "--load-kv needs a real prefill"),
    (["--seed", "3"], "other weights"),
    (["--dtype", "bfloat16"], "saved in float32"),
])
def test_load_refusals(files, capsys, extra, message):
    args = ["--load-kv", str(files / "ctx"), *extra]   # a later --dtype wins over cli_run's float32
    assert cli_run(files, "b.json", "refused", *args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # warnings may precede
    assert len(errors) == 1 and message in errors[0]
    assert not (files / "refused").exists()


def test_corrupt_context_is_refused(files, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(files / "ctx", bad)
    segment = bad / "seg-00001.kv"
    data = bytearray(segment.read_bytes())
    data[7] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert cli_run(files, "b.json", "refused-corrupt", "--load-kv", str(bad)) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    segment.write_bytes(bytes(data[:-1]))
    assert cli_run(files, "b.json", "refused-truncated", "--load-kv", str(bad)) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (files / "refused-truncated").exists()


def test_save_refusals(files, capsys, monkeypatch, tmp_path):
    before = (files / "ctx" / "manifest.json").read_bytes()
    assert cli_run(files, "a.json", "refused-save", "--save-kv", str(files / "ctx")) == 2
    assert "already holds a saved context" in capsys.readouterr().err
    assert (files / "ctx" / "manifest.json").read_bytes() == before
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    assert cli_run(files, "a.json", "refused-disk", "--save-kv", str(tmp_path / "new")) == 2
    err = capsys.readouterr().err
    assert "needs 0.00 GiB (123536 B)" in err and "0.00 GiB free" in err
    assert not (files / "refused-disk").exists() and not (tmp_path / "new").exists()


def test_too_little_host_ram_to_load(files, capsys, monkeypatch):
    import executor.runtime.host_memory as host_memory

    monkeypatch.setattr(host_memory, "host_available_bytes", lambda: 40_000)
    assert cli_run(files, "b.json", "refused-ram", "--load-kv", str(files / "ctx")) == 2
    assert "host RAM" in capsys.readouterr().err


def test_plan_load_kv_predicts_from_the_disk_figures(files, capsys, tmp_path):
    from hwprofiles import load_profile, write_profile

    hw = load_profile("rtx-4090")
    profile = hw.model_copy(update={"disk_read_bytes_per_s": 1e6, "disk_write_bytes_per_s": 5e5, "name": "disk"})
    write_profile(profile, tmp_path / "hw.json")
    assert cli_main(["plan", "--model", str(files / "config.json"), "--context", "100", "--dtype", "float32",
                     "--chunk-size", "32", "--hw", str(tmp_path / "hw.json"), "--load-kv", str(files / "ctx"),
                     "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    kv = plan["kv_load"]
    assert kv["reused_tokens"] == 99 and kv["load_bytes"] == 100 * 512
    assert kv["load_s"] == pytest.approx(100 * 512 / 1e6)
    assert kv["saved_s"] < 0 and "slower than the prefill" in kv["note"]   # a tiny model recomputes faster
    assert cli_main(["plan", "--model", str(files / "config.json"), "--context", "100", "--dtype", "bfloat16",
                     "--load-kv", str(files / "ctx")]) == 2


def test_profile_disk_section(tmp_path):
    """The profiler's disk section (the whole tiny profile runs it too: test_profiler.py) and --disk refusals."""
    from executor.profiler.config import TINY
    from executor.profiler.context import ProfileContext
    from executor.profiler.disk import measure_disk, probe_bytes

    result = measure_disk(ProfileContext(device=torch.device("cpu"), preset=TINY, quiet=True), tmp_path)
    assert result["disk_write_bytes_per_s"] > 0 and result["disk_read_bytes_per_s"] > 0
    assert result["disk_path"] == str(tmp_path) and result["nbytes"] == 32 * 2**20
    assert result["single_stream_write_bytes_per_s"] > 0 and result["single_stream_read_bytes_per_s"] > 0
    assert result["workers"] == {"write": 4, "read": 4}                   # the saver's and the loader's
    assert not list(tmp_path.iterdir())                                  # the probe files are gone
    assert probe_bytes("full", free_disk_bytes=8 * 2**30, available_host_bytes=None) == 2 * 2**30
    assert cli_main(["profile", "--sizes", "tiny", "--quiet", "--out", str(tmp_path / "q.json"), "--disk",
                     str(tmp_path / "missing")]) == 2
