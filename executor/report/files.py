"""report.json and report.md in a run's folder: written together, read back with the schema version checked."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from executor.report.markdown import render_markdown
from executor.report.schema import REPORT_SCHEMA_VERSION, RunReport


def write_json_and_markdown(report: BaseModel, markdown: str, out_dir: Path) -> Path:
    """``report`` as report.json and ``markdown`` as report.md in ``out_dir`` (created); returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
    (out_dir / "report.md").write_text(markdown)
    return path


def write_report(report: RunReport, out_dir: Path) -> Path:
    """Write report.json and report.md into ``out_dir`` (created); return the JSON path."""
    return write_json_and_markdown(report, render_markdown(report), out_dir)


def read_report(path: Path) -> RunReport:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"report not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read report {path}: {exc}") from None
    if data.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise ValueError(f"report {path} has schema_version {data.get('schema_version')!r}, "
                         f"this headplan reads {REPORT_SCHEMA_VERSION}")
    return RunReport.model_validate(data)
