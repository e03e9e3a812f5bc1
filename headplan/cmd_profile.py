"""headplan profile: measure this machine into a hardware profile file that ``headplan plan --hw`` reads.

Progress lines go to stderr while it runs; at the end a summary table (measured beside the catalog's
datasheet profile of the same GPU) and the paths written go to stdout. The default output is
hwprofiles/catalog/<name>.json with <name> from the GPU ("h100-sxm-measured", "h200-sxm-measured"); an existing
file is only replaced with --force. The profile is also stored in the per-user store (hwprofiles/defaults.py:
$HEADPLAN_PROFILE_DIR, else $XDG_DATA_HOME/headplan/profiles, else ~/.local/share/headplan/profiles), always
replaced, where `plan` and `run` look first when --hw is not given. Where the catalog folder cannot be written
(an installed package) and no --out is given, the store is the only copy. Every output path is checked before
anything is measured. ``--model X`` (repeatable) adds the head dim and GQA ratio of model X to the attention
tables and its layer shape to the replayed decode steps (the built-in models' are always measured on a GPU). Heavy imports (torch) happen inside main().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headplan.errors import UserError

DESCRIPTION = (
    "Measure this machine (GPU matmul and attention throughput, device memory and PCIe bandwidth by "
    "transfer size, pinning cost, runtime overhead, host RAM) into a hardware profile for `headplan plan "
    "--hw`, also stored as this machine's default profile. Full mode takes about 5-6 minutes on an H100, --quick "
    "about 2.5 on an H200. Without a GPU it profiles the CPU."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller grids: about 2.5 minutes on an H200")
    parser.add_argument("--sizes", choices=("default", "tiny"), default="default",
                        help="'tiny': seconds-long toy sizes for CI (figures not representative)")
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:N or cpu (default: the first GPU, else cpu)")
    parser.add_argument("--name", default=None,
                        help="profile name (default: from the GPU, e.g. h100-sxm-measured, h200-sxm-measured; "
                        "cpu-measured)")
    parser.add_argument("--out", default=None, type=Path,
                        help="output file (default: hwprofiles/catalog/<name>.json)")
    parser.add_argument("--model", action="append", default=[],
                        help="also measure the attention shapes (head dim, GQA ratio) and the replayed decode "
                        "step of this model's layer shape: a built-in name or a config.json / checkpoint folder "
                        "(repeatable)")
    parser.add_argument("--no-store", action="store_true",
                        help="do not store the profile as this machine's default (the per-user store)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--disk", default=None, type=Path, metavar="DIR",
                        help="folder whose sequential write (fsync'ed) and read bandwidth is measured, for saved "
                        "contexts (headplan run --save-kv / --load-kv; default: the working directory)")


def output_path(out: Path | None, name: str) -> Path:
    """--out, or the catalog file of ``name``."""
    if out is not None:
        return out
    from hwprofiles.catalog import CATALOG_DIR

    return CATALOG_DIR / f"{name}.json"


def _check_writable(path: Path, force: bool) -> None:
    from headplan.run_checks import check_output_file

    if path.exists() and path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name")
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to replace it, or choose --out FILE / --name NAME")
    check_output_file(path, "profile file", create_folder=True)  # write_profile makes the folder too


def _targets(args: argparse.Namespace, name: str) -> tuple[list[Path], list[str]]:
    """The files to write (checked: UserError before measuring) and warnings to print."""
    from headplan.run_checks import check_output_dir
    from hwprofiles.defaults import user_profile_dir

    targets, warnings = [], []
    primary = output_path(args.out, name)
    try:
        _check_writable(primary, args.force)
        targets.append(primary)
    except UserError as exc:
        if args.out is not None or args.no_store or primary.exists():
            raise
        warnings.append(f"{exc}: stored only in {user_profile_dir()}")  # an installed, read-only catalog
    if not args.no_store:
        store = user_profile_dir() / f"{name}.json"
        if store.resolve() not in {t.resolve() for t in targets}:
            try:
                check_output_dir(store.parent, "profile store ($HEADPLAN_PROFILE_DIR)")
                targets.append(store)
            except UserError as exc:
                if not targets:
                    raise
                warnings.append(f"{exc}; not stored as this machine's default")
    return targets, warnings


def main(args: argparse.Namespace) -> int:
    from executor.profiler import ProfileOptions, ProfileSetupError, planned_name, run_profile
    from executor.profiler.summary import summary_table
    from hwprofiles.catalog import write_profile
    from planner.model_spec import load_model_spec

    models = tuple(load_model_spec(text) for text in args.model)  # bad names: exit 2 before measuring
    if args.disk is not None and not args.disk.is_dir():
        raise UserError(f"--disk {args.disk} is not a folder")
    options = ProfileOptions(quick=args.quick, sizes=args.sizes, device=args.device, name=args.name,
                             quiet=args.quiet, models=models, disk=str(args.disk) if args.disk is not None else None)
    try:
        name = planned_name(options)  # fail before minutes of measuring, not after
    except ProfileSetupError as exc:
        raise UserError(str(exc)) from None
    targets, warnings = _targets(args, name)
    for text in warnings:
        print(f"headplan profile: warning: {text}", file=sys.stderr)
    run = run_profile(options, stream=sys.stderr)
    written = None
    for path in targets:
        written = write_profile(run.profile, path)
    print(summary_table(written, run.datasheet))
    mode = written.measurement.mode if written.measurement else "?"
    print(f"wrote {', '.join(map(str, targets))} ({mode}, {run.elapsed_s:.0f} s, hash {written.content_hash})")
    return 0
