"""Checks `headplan run` makes before anything loads, and the writing of its outputs that never loses report.json.

Before the model loads (headplan/cmd_run.py main, small call sites):
- check_output_dir: the report folder can be created and written (a probe file is written and removed), so that a
  long run does not end in a traceback with its measurements lost;
- check_host_ram_early: the plan's host KV store fits the host RAM (the same check the store makes before it
  allocates, made before the weights load);
- plan_warnings: the plan's notes about its profile's coverage and the model's trained length, repeated as run
  warnings (they go into report.json and report.md, and to stderr).
After the run: write_run_outputs writes report.json and report.md first, then the plots and the trace; a failure
while plotting or tracing becomes a warning in the report (rewritten with it), never a lost report.
Leaves out: the checks of the plan options themselves (headplan/cmd_plan.py) and the run (executor/).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from headplan.errors import UserError

# Prefixes of the plan notes (planner/coverage.py) that a run repeats as warnings.
WARNED_NOTE_PREFIXES = ("profile coverage:", "trained length:")
_PROBE_NAME = ".headplan-write-probe"


def check_output_dir(path: Path, what: str = "--out") -> None:
    """Raise UserError (one line, exit 2) unless ``path`` is, or can be made, a writable folder.

    Creating the folder and a file in it is the only reliable test (root passes any permission check; a read-only
    file system or a file in the way does not); folders the test created are removed again, so a run refused by a
    later check leaves nothing behind (the report writer creates them for real)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: choose another folder")
    created = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / _PROBE_NAME
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be created or written: {exc.strerror or exc}") from None
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass


def check_output_file(path: Optional[Path], what: str, *, create_folder: bool = False) -> None:
    """Raise UserError unless ``path`` (a file to write later; None: not asked for) can be written: its folder
    exists (``create_folder``: or can be created) and takes a new file, and the path is not a folder."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if create_folder:
        check_output_dir(folder, f"{what} {path}: folder")  # can be made and written; left as it was
        if not folder.is_dir():
            return
    if not folder.is_dir():
        raise UserError(f"{what} {path}: folder {folder} does not exist")
    probe = folder / (_PROBE_NAME + "-" + path.name)
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None


def check_host_ram_early(plan, stated_host_bytes: Optional[int]) -> None:
    """The host KV store's check (executor/kv/host_store.py HostKVStore.check_host_ram) on the plan's figure,
    before the weights load: UserError where the plan's host KV bytes exceed what the host has."""
    memory = getattr(plan, "memory", None)
    if memory is None or not memory.host_kv_bytes:
        return
    from executor.kv.host_store import HostKVStore, HostMemoryError
    from executor.runtime.host_memory import host_available_bytes

    available = stated_host_bytes if stated_host_bytes is not None else host_available_bytes()
    try:
        HostKVStore.check_host_ram(memory.host_kv_bytes, available)
    except HostMemoryError as exc:
        raise UserError(str(exc)) from None


def plan_warnings(plan, quiet: bool = False) -> list[str]:
    """The plan's coverage and trained-length notes, printed as warnings on stderr (not with --quiet); returned
    for the report."""
    warnings = [note for note in getattr(plan, "notes", []) if note.startswith(WARNED_NOTE_PREFIXES)]
    if not quiet:
        for text in warnings:
            print(f"headplan run: warning: {text}", file=sys.stderr)
    return warnings


def write_run_outputs(report, out_dir: Path, trace_events=None, stream=None) -> Path:
    """report.json and report.md first, then the plots and (``trace_events`` given) the trace; a plot or trace
    failure is printed and added to the report's warnings (report rewritten). Returns report.json's path."""
    from executor.report.files import write_report
    from executor.report.plots import write_plots, write_trace

    path = write_report(report, out_dir)
    failed = []
    writers = [("plots", lambda: write_plots(report, out_dir))]
    if trace_events:
        writers.append(("trace", lambda: write_trace(trace_events, out_dir)))
    for what, write in writers:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - matplotlib, disk, anything: the report is already safe
            failed.append(f"writing the {what} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                          "report.json is complete")
    if failed:
        for text in failed:
            print(f"headplan run: warning: {text}", file=stream or sys.stderr)
        report = report.model_copy(update={"warnings": list(report.warnings) + failed})
        path = write_report(report, out_dir)
    return path
