"""`ftps-server remind`: run the certificate reminders once and print what was found and done.

Exit status: 0 the run did its job: every finding logged, every due email delivered or kept
in the spool (retried next run) -- also when certificates are expiring, expired or missing,
which the emails and `check` report. 78 the configuration or state directory is unusable;
70 any other failure of the run. So the reminder unit fails only when reminding failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..config.loader import DEFAULT_CONFIG_PATH, load
from ..errors import FtpsServerError
from .findings import ReminderFinding
from .run import Report, now, parse_time, run_reminders

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

_EPILOG = """\
exit status: 0 the run did its job (emails delivered, or kept in the spool and retried next
run), whatever the certificates' condition; 78 configuration or state directory unusable;
70 the run failed otherwise."""

#: EX_SOFTWARE: an unexpected error; the unit must show it as failed
EXIT_FAILED = 70


def _when(text: str) -> Any:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or date-time (e.g. 2026-12-01 or 2026-12-01T08:00)"
        ) from None


def register(subparsers: Any) -> None:
    """Add the `remind` subcommand."""
    parser = subparsers.add_parser(
        "remind",
        help="email and log reminders about expiring, expired or missing certificates",
        description="Decide the condition of every certificate section and listener address; "
        "log it to the journal and email what is due (at most once per day and condition).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE")
    parser.add_argument(
        "--dry-run", action="store_true", help="send nothing, change no state, log nothing"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--at", type=_when, metavar="ISO-DATE", help="evaluate as of this date (UTC; default now)"
    )
    parser.set_defaults(func=run)


def _row(f: ReminderFinding, action: str) -> list[str]:
    what = f"certificate {f.name}" if f.kind == "certificate" else f"address {f.name}"
    days = "-" if f.days_left is None else str(f.days_left)
    not_after = f"{f.info.not_after:%Y-%m-%d %H:%M}" if f.info else "-"
    listeners = ",".join(str(li) for li in f.listeners) or "-"
    return [f.condition, what, days, not_after, listeners, action or "-"]


def format_report(report: Report) -> str:
    """The report as a readable table plus problem details."""
    header = ["CONDITION", "WHAT", "DAYS", "NOT AFTER (UTC)", "LISTENERS", "EMAIL"]
    rows = [header] + [_row(f, report.actions.get(f.subject, "")) for f in report.findings]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not report.findings:
        lines.append("(no certificate sections and no listeners configured)")
    lines += [f"{f.subject}: {f.problem}" for f in report.findings if f.problem]
    lines += [f"not delivered: {e}" for e in report.errors]
    if report.spooled:
        lines.append(f"{report.spooled} email(s) wait in the spool; the next run retries them")
    if report.dry_run:
        lines.append(
            f"dry run as of {report.at:%Y-%m-%d %H:%M} UTC: nothing sent, no state changed"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the reminders once; return 0, or 70 (see module docstring; 78 is raised)."""
    config = load(args.config)
    try:
        report = run_reminders(config, args.at or now(), dry_run=args.dry_run)
    except FtpsServerError:
        raise
    except Exception:
        if getattr(args, "debug", False):
            raise
        log.exception("reminder run failed")
        return EXIT_FAILED
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return report.exit_status()
