"""Entry point of the ``headplan`` console script: one subcommand per module (cmd_*.py).

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int``. Expected user errors
(headplan.errors.UserError and the ValueError subclasses of the lower layers) become one line on stderr
and exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from headplan import __version__
from headplan.errors import UserError

COMMANDS = {
    "profile": ("headplan.cmd_profile", "measure this machine into a hardware profile"),
    "plan": ("headplan.cmd_plan", "plan chunk size, head groups and resident heads; predict memory and time"),
    "run": ("headplan.cmd_run", "run head-offloaded inference and report measured against predicted"),
    "chat": ("headplan.cmd_chat", "prefill a document once, then answer questions typed at a prompt"),
    "report": ("headplan.cmd_report", "re-render a run report folder (report.md and plots) from report.json"),
}


def _user_error_types() -> tuple[type[BaseException], ...]:
    """ValueError subclasses that the lower layers raise for bad input."""
    from hwprofiles.catalog import ProfileError
    from planner.model_spec import ModelSpecError
    from planner.plan import PlanFileError
    from planner.units import UnitError

    types: list[type[BaseException]] = [UserError, ProfileError, ModelSpecError, PlanFileError, UnitError]
    try:
        from planner.errors import PlanError

        types.append(PlanError)
    except ImportError:
        pass
    return tuple(types)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headplan",
        description="Exact long-context Llama inference on a small GPU: KV cache in host RAM, streamed "
        "one attention-head group at a time. Profile the machine, plan, run.",
    )
    parser.add_argument("--version", action="version", version=f"headplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text))
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except _user_error_types() as exc:
        print(f"headplan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"headplan {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
