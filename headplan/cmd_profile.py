"""headplan profile: measure this machine into a hardware profile file that ``headplan plan --hw`` reads.

Progress lines go to stderr while it runs; at the end a summary table (measured beside the catalog's
datasheet profile of the same GPU) and the path written go to stdout. The default output is
hwprofiles/catalog/<name>.json with <name> from the GPU ("h100-sxm-measured"); an existing file is only
replaced with --force. Heavy imports (torch) happen inside main().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headplan.errors import UserError

DESCRIPTION = (
    "Measure this machine (GPU matmul and attention throughput, device memory and PCIe bandwidth by "
    "transfer size, pinning cost, runtime overhead, host RAM) into a hardware profile for `headplan plan "
    "--hw`. Full mode takes under 5 minutes on an H100, --quick under 1. Without a GPU it profiles the CPU."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller grids: under a minute on an H100")
    parser.add_argument("--sizes", choices=("default", "tiny"), default="default",
                        help="'tiny': seconds-long toy sizes for CI (figures not representative)")
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:N or cpu (default: the first GPU, else cpu)")
    parser.add_argument("--name", default=None,
                        help="profile name (default: from the GPU, e.g. h100-sxm-measured; cpu-measured)")
    parser.add_argument("--out", default=None, type=Path,
                        help="output file (default: hwprofiles/catalog/<name>.json)")
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
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to replace it, or choose --out FILE / --name NAME")
    if path.exists() and path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name")


def main(args: argparse.Namespace) -> int:
    from executor.profiler import ProfileOptions, ProfileSetupError, run_profile
    from executor.profiler.summary import summary_table
    from hwprofiles.catalog import write_profile

    if args.out is not None:  # fail before minutes of measuring, not after
        _check_writable(args.out, args.force)
    elif args.name is not None:
        _check_writable(output_path(None, args.name), args.force)
    if args.disk is not None and not args.disk.is_dir():
        raise UserError(f"--disk {args.disk} is not a folder")
    options = ProfileOptions(quick=args.quick, sizes=args.sizes, device=args.device, name=args.name,
                             quiet=args.quiet, disk=str(args.disk) if args.disk is not None else None)
    try:
        run = run_profile(options, stream=sys.stderr)
    except ProfileSetupError as exc:
        raise UserError(str(exc)) from None
    path = output_path(args.out, run.profile.name)
    _check_writable(path, args.force)
    written = write_profile(run.profile, path)
    print(summary_table(written, run.datasheet))
    mode = written.measurement.mode if written.measurement else "?"
    print(f"wrote {path} ({mode}, {run.elapsed_s:.0f} s, hash {written.content_hash})")
    return 0
