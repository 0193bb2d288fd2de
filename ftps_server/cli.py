"""Command line: parse arguments and dispatch; each subcommand lives in its own module.

A module named in `_COMMAND_MODULES` exposes `register(subparsers)`, which adds its
subcommand and sets `func=run` where `run(args) -> int` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import FtpsServerError
from .journal import setup_logging

__all__ = ["main"]

_COMMAND_MODULES = (
    "ftps_server.daemon",  # serve, check-config
    "ftps_server.demo",  # demo
    "ftps_server.check",  # check
    "ftps_server.passwords",  # hash-password
    "ftps_server.pending",  # pending-certs
    "ftps_server.remind",  # remind
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="ftps-server", description="FTPS server")
    parser.add_argument("--version", action="version", version=f"ftps-server {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ftps-server` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
