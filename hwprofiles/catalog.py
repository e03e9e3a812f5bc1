"""The catalog of hardware profiles: JSON files in hwprofiles/catalog/, looked up by name or path.

``load_profile("rtx-4090")`` reads hwprofiles/catalog/rtx-4090.json (a name not in the catalog: the per-user
store's <name>.json, hwprofiles/defaults.py); ``load_profile("some/file.json")`` reads that file. Errors are
ProfileError with one readable line (unknown name: the known names listed;
malformed file: what is wrong).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from hwprofiles.jsonfile import read_json
from hwprofiles.schema import HardwareProfile, with_hash

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"


class ProfileError(ValueError):
    """A hardware profile that cannot be found or read."""


def known_profiles() -> list[str]:
    """Names of the profiles in the catalog, sorted."""
    return sorted(p.stem for p in CATALOG_DIR.glob("*.json"))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ())) or "(top level)"
    return f"{where}: {err.get('msg')}"


def read_profile_file(path: Path) -> HardwareProfile:
    """Read and validate one profile file."""
    data = read_json(path, "hardware profile", ProfileError)
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"malformed hardware profile {path}: {_first_error(exc)}") from None


def load_profile(name_or_path: str) -> HardwareProfile:
    """Load a profile by catalog name or by file path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.exists() or "/" in name_or_path:
        return read_profile_file(candidate)
    path = CATALOG_DIR / f"{name_or_path}.json"
    if not path.exists():
        from hwprofiles.defaults import user_profile_dir

        path = user_profile_dir() / f"{name_or_path}.json"  # this machine's profiles, stored by `headplan profile`
    if not path.exists():
        raise ProfileError(
            f"unknown hardware {name_or_path!r}; known: {', '.join(known_profiles())} (or a profile file path; "
            f"this machine's profiles: {', '.join(user_profile_names()) or 'none'})"
        )
    return read_profile_file(path)


def user_profile_names() -> list[str]:
    """Names of the profiles in the per-user store (hwprofiles/defaults.py user_profile_dir), sorted."""
    from hwprofiles.defaults import user_profile_dir

    folder = user_profile_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def write_profile(profile: HardwareProfile, path: Path) -> HardwareProfile:
    """Write a profile with its content hash filled in; returns what was written."""
    profile = with_hash(profile)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(profile.model_dump(mode="json"), indent=1) + "\n")
    return profile
