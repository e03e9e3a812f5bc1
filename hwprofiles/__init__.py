"""Hardware profiles: the schema (schema.py) and the catalog of profile files (catalog.py, catalog/*.json).

The bottom of the dependency chain hwprofiles <- planner <- executor <- headplan: imports neither torch nor
any other part of headplan.
"""

from hwprofiles.catalog import ProfileError, known_profiles, load_profile, read_profile_file, write_profile
from hwprofiles.schema import (
    AttentionPoint,
    HardwareProfile,
    MatmulPoint,
    MeasurementInfo,
    PinningPoint,
    TransferPoint,
    profile_hash,
    with_hash,
)

__all__ = [
    "AttentionPoint", "HardwareProfile", "MatmulPoint", "MeasurementInfo", "PinningPoint", "ProfileError",
    "TransferPoint", "known_profiles", "load_profile", "profile_hash", "read_profile_file", "with_hash",
    "write_profile",
]
