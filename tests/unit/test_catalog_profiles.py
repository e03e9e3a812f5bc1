"""hwprofiles/catalog: every profile loads, datasheet ones cite a source, the measured one is reproducible."""

import importlib.util
from pathlib import Path

import pytest

from hwprofiles import known_profiles, load_profile, profile_hash

ROOT = Path(__file__).resolve().parents[2]
DATASHEET = ["rtx-4090", "rtx-3090", "a6000", "l40s", "a100-40gb", "a100-80gb", "h100-pcie", "h100-sxm", "h200"]


@pytest.mark.parametrize("name", DATASHEET)
def test_datasheet_profiles(name):
    profile = load_profile(name)
    assert profile.origin == "datasheet" and "https://" in profile.source
    assert profile.matmul_flops_per_s == pytest.approx(0.8 * profile.matmul_peak_flops_per_s, rel=1e-3)
    assert profile.hbm_bytes_per_s == pytest.approx(0.9 * profile.hbm_peak_bytes_per_s)
    assert profile.pcie_h2d_bytes_per_s in (25e9, 55e9)
    assert profile.content_hash == profile_hash(profile)


def test_measured_profile_reproducible():
    assert set(DATASHEET) | {"h100-sxm-measured", "h100-sxm-imported"} <= set(known_profiles())
    shared = ROOT.parent / "shared" / "measurements"
    if not (shared / "h100-limits-2026-11-22.json").exists():
        pytest.skip("shared measurements not present")
    spec = importlib.util.spec_from_file_location("importer", ROOT / "benchmarks" / "import_shared_measurements.py")
    importer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(importer)
    built = importer.build_profile(shared)
    stored = load_profile("h100-sxm-imported")
    assert stored.model_copy(update={"content_hash": ""}) == built
    assert stored.measurement.mode == "imported" and stored.origin == "measured"
    backends = {p.backend for p in stored.attention_table}
    assert backends == {"flash", "cudnn"}
    assert {p.direction for p in stored.transfer_table} == {"h2d", "d2h", "bidir"}


def test_profiled_h100_is_a_full_measurement():
    """The default profile is the one headplan profile wrote on the lent H100 (full mode), with its tables."""
    profile = load_profile("h100-sxm-measured")
    assert profile.origin == "measured" and profile.measurement.mode == "full"
    assert "H100" in profile.measurement.gpu_name and profile.measurement.torch_version
    assert {p.backend for p in profile.attention_table} >= {"flash", "cudnn"}
    assert {p.host_memory for p in profile.transfer_table} >= {"pinned", "registered"}
    from hwprofiles.schema import profile_hash

    assert profile.content_hash == profile_hash(profile)


# Attention efficiency per GPU architecture (fraction of the dense bf16 peak), each from a published FA2 figure
# or stated as an assumption in the profile's source.
ATTENTION_FRACTION = {"a100-40gb": 0.70, "a100-80gb": 0.70, "a6000": 0.70, "rtx-3090": 0.70,   # Ampere
                      "rtx-4090": 0.55, "l40s": 0.55,                                          # Ada
                      "h100-sxm": 0.35, "h100-pcie": 0.35, "h200": 0.35}                        # Hopper


@pytest.mark.parametrize("name", DATASHEET)
def test_datasheet_attention_by_architecture_cites_its_source(name):
    profile = load_profile(name)
    fraction = ATTENTION_FRACTION[name]
    assert profile.attention_flops_per_s == pytest.approx(fraction * profile.matmul_peak_flops_per_s, rel=1e-3)
    assert f"attention {fraction:.2f} x peak" in profile.source
    assert "arXiv" in profile.source                       # the FA2 / FA3 paper the fraction rests on or is set by
    if fraction == 0.55:
        assert "ASSUMPTION" in profile.source               # no reliable published Ada figure was found
