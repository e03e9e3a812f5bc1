"""headplan run (not yet implemented)."""

DESCRIPTION = "headplan run"


def add_arguments(parser):
    pass


def main(args) -> int:
    raise SystemExit("headplan run: not implemented yet")
