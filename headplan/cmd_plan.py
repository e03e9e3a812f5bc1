"""headplan plan (not yet implemented)."""

DESCRIPTION = "headplan plan"


def add_arguments(parser):
    pass


def main(args) -> int:
    raise SystemExit("headplan plan: not implemented yet")
