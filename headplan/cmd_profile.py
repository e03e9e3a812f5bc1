"""headplan profile (not yet implemented)."""

DESCRIPTION = "headplan profile"


def add_arguments(parser):
    pass


def main(args) -> int:
    raise SystemExit("headplan profile: not implemented yet")
