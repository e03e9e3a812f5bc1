"""headplan report (not yet implemented)."""

DESCRIPTION = "headplan report"


def add_arguments(parser):
    pass


def main(args) -> int:
    raise SystemExit("headplan report: not implemented yet")
