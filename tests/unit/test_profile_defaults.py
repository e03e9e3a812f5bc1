"""hwprofiles/defaults.py: the profile a plan uses without --hw (this machine's stored profile, else the catalog's
measured profile of the detected GPU, else the measured H100), the store's location, GPU detection without torch."""

from __future__ import annotations

import json
import subprocess

import pytest

import hwprofiles.defaults as defaults
from headplan.cli import main as cli_main
from hwprofiles import load_profile, write_profile
from hwprofiles.defaults import DetectedGpu, default_profile, user_profile_dir

REAL_DETECT = defaults.detect_gpu   # tests/conftest.py replaces it with "no GPU" during each test
H200 = DetectedGpu("NVIDIA H200", 143771 * 2**20)


def test_store_location_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADPLAN_PROFILE_DIR", str(tmp_path / "mine"))
    assert user_profile_dir() == tmp_path / "mine"
    monkeypatch.delenv("HEADPLAN_PROFILE_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_profile_dir() == tmp_path / "xdg" / "headplan" / "profiles"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_profile_dir() == tmp_path / "home" / ".local" / "share" / "headplan" / "profiles"


def test_detect_gpu_reads_nvidia_smi_and_tolerates_its_absence(monkeypatch):
    def fake_run(cmd, **kwargs):
        assert cmd[0] == "nvidia-smi" and "--query-gpu=name,memory.total" in cmd
        return subprocess.CompletedProcess(cmd, 0, stdout="NVIDIA H200, 143771\nNVIDIA H200, 143771\n")

    monkeypatch.setattr(defaults.subprocess, "run", fake_run)
    assert REAL_DETECT() == H200

    def missing(cmd, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(defaults.subprocess, "run", missing)
    assert REAL_DETECT() is None
    monkeypatch.setattr(defaults.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="garbage\n"))
    assert REAL_DETECT() is None


def test_fallback_is_the_measured_h100_without_a_gpu():
    choice = default_profile(detect=False)
    assert choice.profile.name == "h100-sxm-measured" and "no GPU detected" in choice.reason


def test_catalog_profile_of_the_detected_gpu_full_before_quick(monkeypatch):
    choice = default_profile(H200)
    assert choice.profile.name == "h200-sxm-measured"         # the catalog's full H200 profile, before its quick one
    assert "detected NVIDIA H200" in choice.reason
    import hwprofiles.catalog as catalog

    monkeypatch.setattr(catalog, "known_profiles", lambda: ["h100-sxm-measured", "h200-sxm-quick"])
    assert default_profile(H200).profile.name == "h200-sxm-quick"  # the only H200 measurement left: the quick one
    assert default_profile(DetectedGpu("NVIDIA B200", 2**40)).profile.name == "h100-sxm-measured"


def test_own_profile_first_and_only_of_the_detected_gpu(tmp_path):
    store = user_profile_dir()
    mine = load_profile("h200-sxm-quick").model_copy(update={"name": "my-h200"})
    write_profile(mine, store / "my-h200.json")
    other = load_profile("h100-sxm-measured").model_copy(update={"name": "my-old-h100"})
    write_profile(other, store / "my-old-h100.json")
    (store / "broken.json").write_text("{not json")
    assert default_profile(H200).profile.name == "my-h200"
    assert "this machine's own profile" in default_profile(H200).reason
    assert default_profile(DetectedGpu("NVIDIA H100 80GB HBM3", 80 * 2**30)).profile.name == "my-old-h100"
    assert load_profile("my-h200").name == "my-h200"         # names resolve in the store too


def test_plan_without_hw_names_the_stored_profile_first(capsys, monkeypatch):
    write_profile(load_profile("h200-sxm-quick").model_copy(update={"name": "my-h200"}),
                  user_profile_dir() / "my-h200.json")
    assert cli_main(["plan", "--gpu-mem", "24GB"]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("headplan plan: llama-3-8b on my-h200 (NVIDIA H200, measured)")
    assert "note: hardware profile my-h200: this machine's own profile" in text
    assert cli_main(["plan", "--gpu-mem", "24GB", "--hw", "h100-sxm-measured", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hardware"]["name"] == "h100-sxm-measured"
    assert not any(n.startswith("hardware profile") for n in data["notes"])


def test_unknown_name_lists_the_store(capsys):
    assert cli_main(["plan", "--hw", "nope"]) == 2
    assert "this machine's profiles: none" in capsys.readouterr().err
