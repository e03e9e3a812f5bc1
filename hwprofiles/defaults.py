"""The profile a plan uses when --hw is not given: this machine's own, else the catalog's for its GPU, else the H100's.

Order (default_profile):
1. the per-user profile store (user_profile_dir: $HEADPLAN_PROFILE_DIR, else $XDG_DATA_HOME/headplan/profiles,
   else ~/.local/share/headplan/profiles), where `headplan profile` also writes what it measured: the profiles of
   the detected GPU (all of them where no GPU is detected), a full profile before a quick one, the newest first;
2. the catalog's measured profile of the detected GPU (same GPU name; full before quick before imported);
3. FALLBACK_PROFILE, the catalog's measured H100.
The GPU is detected with ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` (no torch: the planner
path never imports it); without nvidia-smi, or when it fails, no GPU is detected.
Leaves out: reading and validating profile files (catalog.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hwprofiles.schema import HardwareProfile

PROFILE_DIR_ENV = "HEADPLAN_PROFILE_DIR"
FALLBACK_PROFILE = "h100-sxm-measured"
_MODE_RANK = {"full": 0, "quick": 1, "imported": 2, "cpu-only": 3}
_MIB = 1024 * 1024


@dataclass(frozen=True)
class DetectedGpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class DefaultChoice:
    profile: HardwareProfile
    reason: str  # one line: why this profile (for the plan's notes)


def user_profile_dir() -> Path:
    """Where `headplan profile` stores this machine's profiles and `plan` / `run` look first."""
    explicit = os.environ.get(PROFILE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "headplan" / "profiles"


def detect_gpu(timeout_s: float = 10.0) -> Optional[DetectedGpu]:
    """The first GPU nvidia-smi lists (name, memory), or None (no nvidia-smi, no GPU, unreadable output)."""
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=timeout_s, check=True).stdout
        name, memory_mib = (field.strip() for field in output.splitlines()[0].rsplit(",", 1))
        return DetectedGpu(name=name, memory_bytes=int(float(memory_mib)) * _MIB)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def profile_gpu_name(profile: HardwareProfile) -> str:
    """The GPU the profile describes: the measured device name where there is one."""
    return profile.measurement.gpu_name if profile.measurement else profile.gpu_name


def _rank(profile: HardwareProfile, mtime_s: float = 0.0) -> tuple:
    mode = profile.measurement.mode if profile.measurement else "imported"
    return (_MODE_RANK.get(mode, 9), not profile.name.endswith("-measured"), -mtime_s, profile.name)


def user_profiles() -> list[tuple[HardwareProfile, float, Path]]:
    """(profile, modification time, path) of every readable profile in the user store."""
    from hwprofiles.catalog import ProfileError, read_profile_file

    folder, found = user_profile_dir(), []
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            found.append((read_profile_file(path), path.stat().st_mtime, path))
        except (ProfileError, OSError):
            continue  # a broken file in the store must not stop planning; load it by path to see why
    return found


def _same_gpu(profile: HardwareProfile, gpu: DetectedGpu) -> bool:
    return profile_gpu_name(profile).strip().lower() == gpu.name.strip().lower()


def default_profile(gpu: Optional[DetectedGpu] = None, *, detect: bool = True) -> DefaultChoice:
    """The profile for a plan without --hw (module docstring); ``gpu`` given: no detection."""
    from hwprofiles.catalog import known_profiles, load_profile

    if gpu is None and detect:
        gpu = detect_gpu()
    mine = [(p, t, path) for p, t, path in user_profiles() if gpu is None or _same_gpu(p, gpu)]
    if mine:
        profile, _, path = min(mine, key=lambda item: _rank(item[0], item[1]))
        where = f"the {gpu.name} detected" if gpu else "no GPU detected"
        return DefaultChoice(profile, f"this machine's own profile {path} ({where})")
    if gpu is not None:
        measured = [load_profile(name) for name in known_profiles()]
        measured = [p for p in measured if p.origin == "measured" and _same_gpu(p, gpu)]
        if measured:
            profile = min(measured, key=_rank)
            return DefaultChoice(profile, f"the catalog's measured profile of the detected {gpu.name} (no profile "
                                 f"in {user_profile_dir()}; `headplan profile` makes one)")
    why = f"no catalog profile measured on the detected {gpu.name}" if gpu else "no GPU detected"
    return DefaultChoice(load_profile(FALLBACK_PROFILE), f"the default ({why}, no profile in {user_profile_dir()})")
