"""The ``crypten-mpcache`` command line (also ``python -m crypten_mpcache``).

Commands, one module each: ``generate`` (private generation), ``party`` (one role of a
private generation, one process per role, on one host or several), ``eval`` (plaintext
accuracy of eviction methods on the embedded model), ``bench`` (MPC cost of a decode
step, full vs MPCache). Each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args)``; it only parses, validates and calls the code that does the work. Bad input
ends with one line ``crypten-mpcache <command>: error: ...`` and exit status 2, never a
bare traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from crypten_mpcache.assets import AssetError
from crypten_mpcache.cli import bench, generate, party
from crypten_mpcache.cli import eval as eval_command
from crypten_mpcache.cli.common import PROG, USAGE_ERROR, CLIError, Parser, UsageError, error_line
from crypten_mpcache.runtime.launcher import PartyError

COMMANDS: tuple[ModuleType, ...] = (generate, party, eval_command, bench)

# What a user can cause: one error line and exit status 2 (anything else is a bug).
USER_ERRORS = (CLIError, ValueError, FileNotFoundError, AssetError, PartyError)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Private LLM inference under MPC (CrypTen) with "
                    "MPCache KV-cache eviction.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks")
        command.add_arguments(p)
        p.set_defaults(handler=command.run, prog=p.prog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 on bad input (one error line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        if "--debug" in argv:
            raise
        print(error_line(error.prog, error), file=sys.stderr)
        return USAGE_ERROR
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(error_line(args.prog, error), file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130
