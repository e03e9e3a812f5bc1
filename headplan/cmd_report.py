"""headplan report: re-render report.md and the plots of a run folder from its report.json.
Leaves out: the trace timeline (written only by ``headplan run --trace``, from events not kept in report.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from headplan.errors import UserError

DESCRIPTION = "Re-render report.md and the PNG plots of a run report folder from its report.json."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", type=Path, help="run folder (holding report.json) or the report.json path")
    parser.add_argument("--out", type=Path, default=None, help="folder to write into (default: the report's)")


def main(args) -> int:
    from executor.report.plots import write_plots
    from executor.report.files import read_report
    from executor.report.markdown import render_markdown

    try:
        report = read_report(args.report)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    folder = args.report if args.report.is_dir() else args.report.parent
    out = args.out or folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render_markdown(report))
    made = write_plots(report, out)
    print(f"wrote {out / 'report.md'}" + "".join(f", {p.name}" for p in made))
    return 0
