"""Certificate reminders: decide a condition per certificate section and listener address,
log one journal record per finding, and email by these rules (per calendar day in UTC):
- `expiring`: one email per `warn_days` threshold crossed (several crossed at once, e.g. after
  a missed day: one email); a new fingerprint starts afresh.
- `expired`, `missing`, `invalid`: one email every day.
- never two emails for the same certificate (or address) and condition on one day.
Undelivered emails stay in the spool (see `store`) and are retried first next run.

`ftps-server remind` exit status: 0 when the run did its job, whatever the certificates'
condition (emails delivered or safely spooled); certificate conditions are the emails' and
`check`'s business, and a failing reminder unit would only mark the host degraded.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..config.model import CertificateEntry, Config
from ..errors import ConfigError, FtpsServerError
from ..journal import message_ids
from ..pki.certs import expiry_phrase, inspect_entry, utcnow
from . import mail
from .findings import Listener, ReminderFinding
from .store import State, Store

__all__ = [
    "Listener",
    "ReminderFinding",
    "Report",
    "evaluate",
    "now",
    "parse_time",
    "run_reminders",
]

log = logging.getLogger(__name__)

#: Set to an ISO date or time to make `serve` and `remind` evaluate as of then (tests).
NOW_ENV = "FTPS_SERVER_NOW"
# How long a mailed threshold of a certificate no longer configured is remembered.
_FORGET_DAYS = 40


@dataclass
class Report:
    """What one run found and did."""

    at: dt.datetime
    findings: list[ReminderFinding]
    dry_run: bool = False
    actions: dict[str, str] = field(default_factory=dict)  # subject -> what happened
    delivered: list[str] = field(default_factory=list)  # subjects accepted by SMTP
    errors: list[str] = field(default_factory=list)
    spooled: int = 0  # emails still waiting in the spool after the run
    shared: bool = False  # decided in [alerts] shared_state_dir (one email for the fleet)
    fallback: str = ""  # why the shared directory was not usable (decided alone instead)
    locked: bool = False  # the state lock was taken (from then on, never decide twice)

    def exit_status(self) -> int:
        """0: the run did its job (a run that could not spool raised instead)."""
        return 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for `remind --json`."""
        return {
            "at": self.at.isoformat(),
            "dry_run": self.dry_run,
            "findings": [
                {**f.as_dict(), "email": self.actions.get(f.subject, "")} for f in self.findings
            ],
            "delivered": self.delivered,
            "spooled": self.spooled,
            "errors": self.errors,
            "exit_status": self.exit_status(),
        }


def parse_time(text: str) -> dt.datetime:
    """An ISO date (taken as 12:00 UTC) or date-time (UTC when no offset is given)."""
    text = text.strip()
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def now() -> dt.datetime:
    """The time reminders evaluate at: $FTPS_SERVER_NOW when set (tests), else the clock."""
    override = os.environ.get(NOW_ENV)
    return parse_time(override) if override else utcnow()


# --- evaluation ----------------------------------------------------------------------------


def _served_by(config: Config, entry: CertificateEntry) -> tuple[Listener, ...]:
    """The listeners whose connections get `entry`'s certificate."""
    ports = config.ports.enabled()
    bound = config.server.addresses
    addresses = [a for a in bound if config.resolver.for_address(a) is entry]
    if not addresses and not entry.addresses and entry.server_names:
        addresses = list(bound)  # SNI-only: any listener may serve it, by server name
    elif "*" in bound:
        # A wildcard bind serves every local address; the certificate then follows the
        # connection's local address, so the section's own addresses are listeners too.
        addresses += [a for a in entry.addresses if a != "*" and a not in addresses]
    return tuple(Listener(a, kind, port) for a in addresses for kind, port in ports)


def _certificate_finding(
    config: Config, entry: CertificateEntry, at: dt.datetime
) -> ReminderFinding:
    status = inspect_entry(entry, key_group=config.server.key_group, now=at)
    days = status.info.days_left(at) if status.info else None
    condition = status.condition
    crossed: tuple[int, ...] = ()
    if condition == "ok" and days is not None:
        crossed = tuple(t for t in config.alerts.warn_days if days <= t)
        condition = "expiring" if crossed else "ok"
    return ReminderFinding(
        kind="certificate",
        name=entry.name,
        condition=condition,
        problem=status.problem,
        listeners=_served_by(config, entry),
        entry=entry,
        info=status.info,
        days_left=days,
        crossed=crossed,
    )


def evaluate(config: Config, at: dt.datetime) -> list[ReminderFinding]:
    """One finding per certificate section, plus one per bound address with no certificate."""
    findings = [_certificate_finding(config, entry, at) for entry in config.certificates]
    ports = config.ports.enabled()
    if not ports:
        return findings
    for address in config.server.addresses:
        if config.resolver.for_address(address) is None:
            where = "every local address (*)" if address == "*" else f"address {address}"
            findings.append(
                ReminderFinding(
                    kind="address",
                    name=address,
                    condition="missing",
                    problem=f"no [certificate:NAME] section serves {where} "
                    f"(set addresses = {address} or default = yes in one)",
                    listeners=tuple(Listener(address, kind, port) for kind, port in ports),
                )
            )
    return findings


def _describe(f: ReminderFinding, at: dt.datetime) -> str:
    where = ", ".join(str(li) for li in f.listeners) or "no enabled listener"
    if f.kind == "address":
        return f"no certificate for {where}: {f.problem}"
    if f.condition == "ok":
        return f"certificate {f.name} ok, {f.days_left} days left ({where})"
    if f.condition == "expiring" and f.info:
        return (
            f"certificate {f.name} {expiry_phrase(f.info.not_after, at)} on "
            f"{f.info.not_after:%Y-%m-%d %H:%M} UTC ({where})"
        )
    if f.condition == "expired" and f.info:
        return f"certificate {f.name} {expiry_phrase(f.info.not_after, at)}: {f.problem} ({where})"
    return f"certificate {f.name} {f.condition}: {f.problem} ({where})"


def log_findings(findings: list[ReminderFinding], at: dt.datetime) -> None:
    """One journal record per finding: warning for expiring, crit for problems."""
    for f in findings:
        level = {"ok": logging.INFO, "expiring": logging.WARNING}.get(f.condition, logging.CRITICAL)
        log.log(level, "%s", _describe(f, at), extra={"fields": f.journal_fields()})
    usable = {str(li) for f in findings if f.condition in ("ok", "expiring") for li in f.listeners}
    everything = {str(li) for f in findings for li in f.listeners}
    if everything and not usable:
        log.critical(
            "no listener has a usable server certificate: FTPS is unavailable on %s",
            ", ".join(sorted(everything)),
            extra={
                "fields": {
                    "MESSAGE_ID": message_ids.LISTENER_NO_CERT,
                    "CONDITION": "missing",
                    "LISTENER": ",".join(sorted(everything)),
                }
            },
        )


# --- deciding and sending ------------------------------------------------------------------


@dataclass(frozen=True)
class _Due:
    """A finding that needs an email, and the dedup keys that email satisfies."""

    finding: ReminderFinding
    sent_keys: list[str]
    day_keys: list[str]


def _due(
    findings: list[ReminderFinding], state: State, day: str
) -> tuple[list[_Due], dict[str, str]]:
    due, actions = [], {}
    for f in findings:
        if f.condition == "ok":
            continue
        day_key = f"{f.subject}|{f.condition}"
        if state.days.get(day_key) == day:
            actions[f.subject] = "already sent today"
            continue
        sent_keys = []
        if f.condition == "expiring":
            sent_keys = [f"{f.subject}|{f.fingerprint}|expiring|{t}" for t in f.crossed]
            if all(k in state.sent for k in sent_keys):
                actions[f.subject] = f"already sent for {min(f.crossed)} days"
                continue
        due.append(_Due(f, sent_keys, [day_key]))
    return due, actions


def _note_since(findings: list[ReminderFinding], state: State, day: str, *, shared: bool) -> None:
    # "since" = first day a condition was seen; cleared once the condition changes.
    current = {f"{f.subject}|{f.condition}" for f in findings if f.condition != "ok"}
    # In a shared state, another node's own subjects (its listener addresses) are its to clear.
    mine = {f.subject for f in findings}
    state.since = {
        k: d
        for k, d in state.since.items()
        if k in current or (shared and k.rpartition("|")[0] not in mine)
    }
    for key in current:
        state.since.setdefault(key, day)


def _attempt(
    config: Config, store: Store, entry_path: Path, message: EmailMessage, report: Report
) -> bool:
    subject = str(message["Subject"])
    try:
        mail.deliver(config.alerts, message)
    except FtpsServerError as exc:
        log.error("reminder email not delivered, kept in %s: %s", entry_path, exc)
        report.errors.append(f"{subject}: {exc}")
        return False
    store.remove(entry_path)
    report.delivered.append(subject)
    log.info("reminder email delivered to %s: %s", ", ".join(config.alerts.email_to), subject)
    return True


def _send_due(
    config: Config, store: Store, state: State, due: list[_Due], report: Report, *, smtp_ok: bool
) -> None:
    day = report.at.date().isoformat()
    for item in due:
        f = item.finding
        since = state.since.get(f"{f.subject}|{f.condition}", day)
        subject, body = mail.render_reminder(config, f, at=report.at, since=since)
        if report.fallback:
            body += (
                f"\nNote: the fleet's [alerts] shared_state_dir was not usable "
                f"({report.fallback}); this node decided alone, so other nodes may send "
                "this reminder too.\n"
            )
        headers = {"X-FTPS-Server-Condition": f.condition, "X-FTPS-Server-Subject": f.subject}
        message = mail.build_message(config.alerts, subject, body, headers=headers)
        # Spool first, then record: a crash in between is reconciled from the spool next run.
        path = store.spool(message, item.sent_keys, item.day_keys, day)
        state.record(item.sent_keys, item.day_keys, day)
        store.save(state)
        # After one failure the server is down or refusing; the rest wait in the spool
        # instead of each waiting out smtp_timeout.
        delivered = smtp_ok and _attempt(config, store, path, message, report)
        smtp_ok = smtp_ok and delivered
        report.actions[f.subject] = "sent" if delivered else "queued (not delivered)"


def _retry_spool(config: Config, store: Store, state: State, report: Report) -> bool:
    """Deliver what earlier runs could not; False once the SMTP server fails."""
    for entry in store.pending():
        state.record(entry.sent_keys, entry.day_keys, entry.day)  # reconcile, idempotent
        if not _attempt(config, store, entry.path, entry.message, report):
            return False
    return True


def _store(config: Config) -> Store:
    """Where the dedup state lives: the fleet's shared directory when set, else state_dir."""
    return Store(config.alerts.shared_state_dir or config.server.state_dir)


def _decide_and_send(config: Config, store: Store, state: State, report: Report) -> None:
    day = report.at.date().isoformat()
    smtp_ok = _retry_spool(config, store, state, report)
    _note_since(report.findings, state, day, shared=report.shared)
    due, actions = _due(report.findings, state, day)
    report.actions.update(actions)
    if due and not config.alerts.email_to:
        log.warning("[alerts] email_to is empty: reminders go to the journal only")
        report.actions.update({d.finding.subject: "no email_to" for d in due})
        due = []
    _send_due(config, store, state, due, report, smtp_ok=smtp_ok)
    keep = {f"{f.subject}|{f.fingerprint}|" for f in report.findings}
    state.prune(day, keep, _FORGET_DAYS)
    store.save(state)
    report.spooled = store.count_pending()


def _run_in(config: Config, store: Store, report: Report) -> None:
    with store.locked() as state:
        report.locked = True
        _decide_and_send(config, store, state, report)
    log.info(
        "reminder run finished: %d email(s) delivered, %d waiting in %s",
        len(report.delivered),
        report.spooled,
        store.spool_dir,
    )


def _locked_run(config: Config, report: Report) -> None:
    shared = config.alerts.shared_state_dir
    if shared is not None:
        report.shared = True
        try:
            _run_in(config, Store(shared), report)
            return
        except OSError as exc:
            if report.locked:
                # Emails may be out already: deciding again alone could only duplicate them.
                raise _shared_dir_error(config, exc) from None
            # Unreachable shared storage must not silence this node: a duplicate is better.
            report.shared = False
            report.fallback = f"{shared}: {exc.strerror or exc}"
            log.error(
                "cannot use [alerts] shared_state_dir %s; this node decides alone from its "
                "state_dir %s, so other nodes may send the same reminders",
                report.fallback,
                config.server.state_dir,
            )
            report.errors.append(f"shared_state_dir unusable ({report.fallback})")
    try:
        _run_in(config, Store(config.server.state_dir), report)
    except OSError as exc:
        raise _state_dir_error(config, exc) from None


def _shared_dir_error(config: Config, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot use the shared state directory {config.alerts.shared_state_dir}: "
        f"{exc.strerror or exc}",
        file=str(config.path),
        section="alerts",
        key="shared_state_dir",
    )


def _state_dir_error(config: Config, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot use the state directory {config.server.state_dir}: {exc.strerror or exc}",
        file=str(config.path),
        section="server",
        key="state_dir",
    )


def run_reminders(
    config: Config, at: dt.datetime, *, dry_run: bool = False, send: bool = True
) -> Report:
    """Evaluate, log one journal record per finding, and email what the rules say is due.

    dry_run: no journal records, no email, no change to any file (reports what would happen).
    send=False: journal records only. Thread-safe and process-safe (an flock on the state
    directory): `serve` starting and the daily timer never both send. Raises ConfigError
    when the state directory is unusable.
    """
    report = Report(at=at, findings=evaluate(config, at), dry_run=dry_run)
    if dry_run:
        store = _store(config)
        try:
            state = store.load(set_aside=False)
        except OSError as exc:
            error = _shared_dir_error if config.alerts.shared_state_dir else _state_dir_error
            raise error(config, exc) from None
        due, report.actions = _due(report.findings, state, at.date().isoformat())
        report.actions.update({d.finding.subject: "would send" for d in due})
        report.spooled = store.count_pending()
        return report
    log_findings(report.findings, at)
    if send:
        _locked_run(config, report)
    return report
