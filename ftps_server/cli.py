"""Command line: parse arguments and dispatch; each subcommand lives in its own module.

Every command module is imported here by name and listed in `_COMMANDS`: its
`register(subparsers)` adds its subcommand and sets `func=run` where `run(args) -> int`
returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, daemon, demo
from .check import run as check
from .errors import FtpsServerError
from .journal.log import setup_logging
from .pki import passwords
from .reminders import command as remind
from .server import pending

__all__ = ["main"]

_COMMANDS: tuple[Callable[[Any], None], ...] = (
    daemon.register,  # serve, check-config
    demo.register,  # demo
    check.register,  # check
    passwords.register,  # hash-password
    pending.register,  # pending-certs
    remind.register,  # remind
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="ftps-server", description="FTPS server")
    parser.add_argument("--version", action="version", version=f"ftps-server {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _COMMANDS:
        register(subparsers)
    return parser


# Commands whose usage errors must not exit with argparse's 2: monitoring reads 2 as CRITICAL.
_USAGE_ERRORS: dict[str, Callable[[], int]] = {"check": check.usage_error}


def _command(argv: Sequence[str] | None) -> str | None:
    # the top-level options take no values, so the first other word is the command
    words = sys.argv[1:] if argv is None else argv
    return next((w for w in words if not w.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ftps-server` command."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        usage_error = _USAGE_ERRORS.get(_command(argv) or "")
        if exc.code == 2 and usage_error is not None:
            return usage_error()
        raise
    setup_logging(args.debug)
    try:
        return int(args.func(args))
    except FtpsServerError as exc:
        if args.debug:
            raise
        print(f"ftps-server: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
