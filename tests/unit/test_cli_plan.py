"""`headplan plan`: every option, and every bad input -> exit 2 with one line on stderr and no traceback."""

import json
import subprocess
import sys

import pytest

from headplan.cli import main


def run(capsys, *argv):
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_runs_the_main_job(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    assert "llama-3-8b on h100-sxm-measured" in out and "128K" in out
    assert "GPU memory (peak)" in out and "alternatives" in out and "bound by" in out


def test_every_option(capsys, tmp_path):
    config = tmp_path / "config.json"
    from planner.builtin_models import BUILTIN_MODELS

    config.write_text(json.dumps(BUILTIN_MODELS["llama-3.2-1b"].to_hf_config_dict()))
    out_file = tmp_path / "plan.json"
    code, out, _ = run(capsys, "--model", str(config), "--hw", "rtx-4090", "--context", "256K", "--gpu-mem",
                       "24GB", "--host-mem", "200GiB", "--decode-tokens", "32", "--dtype", "bfloat16",
                       "--chunk-size", "8K", "--heads-per-group", "2", "--resident-heads", "auto",
                       "--strategy", "head-offload", "--json", "--out", str(out_file))
    assert code == 0
    data = json.loads(out)
    assert data == json.loads(out_file.read_text())
    assert (data["context_tokens"], data["decode_tokens"], data["chunk_size"], data["heads_per_group"],
            data["strategy"]) == (262144, 32, 8192, 2, "head-offload")
    assert data["memory"]["gpu_budget_bytes"] == 24 * 10**9
    assert data["memory"]["host_budget_bytes"] == 200 * 2**30


def test_resident_heads_number(capsys):
    code, out, _ = run(capsys, "--gpu-mem", "24GB", "--resident-heads", "0", "--heads-per-group", "8", "--json")
    assert code == 0 and json.loads(out)["strategy"] == "layer-offload"


def test_decode_graphs_on_by_default_and_turned_off(capsys):
    code, out, _ = run(capsys, "--context", "8K", "--gpu-mem", "80GB", "--json")
    assert code == 0 and json.loads(out)["decode_graphs"] is True       # all resident on one GPU
    code, out, _ = run(capsys, "--context", "8K", "--gpu-mem", "80GB", "--no-decode-graphs", "--json")
    assert code == 0 and json.loads(out)["decode_graphs"] is False
    code, out, _ = run(capsys, "--context", "512K", "--gpu-mem", "24GB", "--json")
    assert code == 0 and json.loads(out)["decode_graphs"] is False      # heads streamed: eager decode


def test_max_context_json(capsys, tmp_path):
    code, out, _ = run(capsys, "--max-context", "--gpu-mem", "24GB", "--json")
    assert code == 0
    tokens = json.loads(out)["max_context_tokens"]
    assert set(tokens) == {"standard", "chunked", "layer-offload", "head-offload"}
    code, out, _ = run(capsys, "--max-context", "--hw", "rtx-4090", "--host-mem", "512GiB")
    assert code == 0 and "head-offload" in out


def test_sweep_plot_and_roofline(capsys, tmp_path):
    sweep_png, roof_png = tmp_path / "sweep.png", tmp_path / "roof.png"
    code, out, _ = run(capsys, "--sweep", "32K,128K,4M", "--gpu-mem", "24GB", "--plot", str(sweep_png),
                       "--roofline", str(roof_png))
    assert code == 0 and "32K" in out and "4M" in out and "host RAM" in out
    assert sweep_png.stat().st_size > 1000 and roof_png.stat().st_size > 1000
    code, out, _ = run(capsys, "--sweep", "32K:128K", "--json")
    assert code == 0 and [r["context_tokens"] for r in json.loads(out)["rows"]] == [32768, 65536, 131072]
    plot = tmp_path / "r.png"
    code, _, _ = run(capsys, "--gpu-mem", "24GB", "--plot", str(plot))
    assert code == 0 and plot.stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--context", "0"], "positive"),
    (["--context", "lots"], "cannot parse"),
    (["--gpu-mem=-3GB"], "cannot parse"),
    (["--gpu-mem", "0"], "positive"),
    (["--host-mem", "12 parsecs"], "unit"),
    (["--gpu-mem", "8GB"], "minimum"),
    (["--context", "4M"], "longest context that fits"),
    (["--model", "no-such-model"], "known: "),
    (["--hw", "no-such-gpu"], "known: "),
    (["--heads-per-group", "3"], "divide"),
    (["--heads-per-group", "0"], "positive"),
    (["--resident-heads=-1"], "zero or more"),
    (["--resident-heads", "1000"], "between 0 and"),
    (["--chunk-size", "x"], "cannot parse"),
    (["--decode-tokens=-2"], "zero or more"),
    (["--sweep", "1M:32K"], "ends before"),
    (["--plot", "out.jpg"], ".png"),
    (["--gpu-mem", "24GB", "--resident-heads", "256"], "GPU budget"),
])
def test_bad_input_exit_2_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("headplan plan: error:")


def test_bad_files(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for option in ("--model", "--hw"):
        code, _, err = run(capsys, option, str(bad))
        assert code == 2 and err.count("\n") == 1
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"name": "x"}))
    code, _, err = run(capsys, "--hw", str(profile))
    assert code == 2 and "malformed" in err


def test_console_script_no_traceback():
    result = subprocess.run([sys.executable, "-m", "headplan.cli", "plan", "--gpu-mem", "1GB"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
