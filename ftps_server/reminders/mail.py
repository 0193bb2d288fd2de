"""Reminder emails: jinja2 templates rendered to RFC 5322 messages, handed to the local MTA.

Templates ship in `ftps_server/templates/`; a file of the same name in `[alerts]
template_dir` replaces the shipped one. `[alerts] transport = sendmail` (the default) pipes
the message to `[alerts] sendmail -t -oi`, which every Debian MTA provides and which queues
and retries by itself; `transport = smtp` speaks SMTP following `smtp_security`: `none`,
`starttls` (the server certificate is verified, against `smtp_ca_file` when set) or `tls`
(implicit TLS). Every failure becomes a `DeliveryError` carrying the reason.

Whatever a message's headers say (a spooled file may have been edited by whoever owns the
state directory), it goes to `[alerts] email_to` only: the recipient headers are rewritten
before delivery and the SMTP envelope names email_to.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.policy
import email.utils
import ipaddress
import logging
import os
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2

from ..config.model import AlertsConfig, Config
from ..errors import ConfigError, DeliveryError
from ..pki.certs import expiry_phrase
from .findings import ReminderFinding

__all__ = [
    "CREDENTIAL_NAME",
    "POLICY",
    "addressed_to_alerts",
    "as_bytes",
    "build_message",
    "deliver",
    "read_password",
    "reminder_context",
    "render",
    "render_reminder",
]

log = logging.getLogger(__name__)

#: systemd credential (LoadCredential=smtp-password:...) read when no password file is set
CREDENTIAL_NAME = "smtp-password"
_TEMPLATES = Path(__file__).parent / "templates"
#: RFC 5322 allows 998 characters a line: headers stay unfolded, so the Subject is never
#: folded right after its colon and `^Subject: \[ftps-server\]` filters match.
POLICY = email.policy.default.clone(max_line_length=998)
_RECIPIENT_HEADERS = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")


def _environment(alerts: AlertsConfig) -> jinja2.Environment:
    search = [str(alerts.template_dir)] if alerts.template_dir else []
    search.append(str(_TEMPLATES))
    # Plain-text mail: escaping HTML would corrupt paths and names; StrictUndefined turns a
    # typo in an operator's template into an error instead of a silently empty line.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render(alerts: AlertsConfig, context: Mapping[str, Any]) -> tuple[str, str]:
    """Render (subject, body) from `subject.txt.j2` and `reminder.txt.j2`.

    Raises ConfigError naming `[alerts] template_dir` when a template is broken.
    """
    env = _environment(alerts)
    try:
        subject = env.get_template("subject.txt.j2").render(context)
        body = env.get_template("reminder.txt.j2").render(context)
    except jinja2.TemplateError as exc:
        where = getattr(exc, "filename", None) or getattr(exc, "name", None) or "template"
        line = getattr(exc, "lineno", None)
        raise ConfigError(
            f"email template {where}{':' + str(line) if line else ''}: {exc}",
            section="alerts",
            key="template_dir",
        ) from None
    # A subject is one line whatever the template does; newlines would forge headers.
    return " ".join(subject.split()), body


def reminder_context(
    config: Config, f: ReminderFinding, *, at: dt.datetime, since: str
) -> dict[str, Any]:
    """Everything the reminder templates may use (never key material: paths only)."""
    entry = f.entry
    return {
        "host": socket.gethostname(),
        "kind": f.kind,
        "name": f.name,
        "condition": f.condition,
        "problem": f.problem,
        "since": since,
        "checked_at": f"{at:%Y-%m-%d %H:%M} UTC",
        "config_path": str(config.path),
        "cert_path": str(entry.cert) if entry else None,
        "key_path": str(entry.key) if entry else None,
        "addresses": list(entry.addresses) if entry else [f.name],
        "default": bool(entry and entry.default),
        "server_names": list(entry.server_names) if entry else [],
        "fingerprint": f.fingerprint,
        "subject_dn": f.info.subject if f.info else None,
        "not_after": f"{f.info.not_after:%Y-%m-%d %H:%M} UTC" if f.info else None,
        "days_left": f.days_left,
        # the words for days_left, the same as check's and the journal's (certs.expiry_phrase)
        "expiry": expiry_phrase(f.info.not_after, at) if f.info else None,
        "threshold": min(f.crossed) if f.crossed else None,
        "warn_days": list(config.alerts.warn_days),
        "listeners": [dataclasses.asdict(li) for li in f.listeners],
        "ports": sorted({li.port for li in f.listeners}),
    }


def render_reminder(
    config: Config, f: ReminderFinding, *, at: dt.datetime, since: str
) -> tuple[str, str]:
    """(subject, body) for one finding; a broken template_dir falls back to the shipped text."""
    context = reminder_context(config, f, at=at, since=since)
    try:
        return render(config.alerts, context)
    except ConfigError as exc:
        if not config.alerts.template_dir:
            raise
        # A broken override must not silence the reminder.
        log.error("%s; using the built-in templates instead", exc)
        return render(dataclasses.replace(config.alerts, template_dir=None), context)


def build_message(
    alerts: AlertsConfig, subject: str, body: str, *, headers: Mapping[str, str] | None = None
) -> EmailMessage:
    """A complete message with From, To, Subject, Date, Message-ID and Auto-Submitted."""
    host = socket.gethostname()
    msg = EmailMessage(policy=POLICY)
    msg["From"] = alerts.email_from
    msg["To"] = ", ".join(alerts.email_to)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=host)
    # RFC 3834: tells vacation responders and ticket systems not to answer a robot.
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        msg[name] = value
    # Readable in any mail client's "view source" when it can be: QP only where RFC 5322 needs it.
    plain = body.isascii() and all(len(line) <= 900 for line in body.splitlines())
    msg.set_content(body, cte="7bit" if plain else "quoted-printable")
    return msg


def read_password(alerts: AlertsConfig) -> str | None:
    """The SMTP password: `smtp_password_file`, else the systemd credential, else None."""
    if alerts.smtp_password_file:
        path = alerts.smtp_password_file
        key = "smtp_password_file"
    else:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds or not (Path(creds) / CREDENTIAL_NAME).exists():
            return None
        path, key = Path(creds) / CREDENTIAL_NAME, "smtp_password_file"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # UnicodeDecodeError's text quotes the offending byte: name only the reason
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unreadable"
        raise ConfigError(
            f"cannot read password file {path}: {reason}", section="alerts", key=key
        ) from None
    # Files written by editors or `echo` end in a newline that is not part of the password.
    return text.rstrip("\r\n")


def _tls_context(alerts: AlertsConfig) -> ssl.SSLContext:
    cafile = str(alerts.smtp_ca_file) if alerts.smtp_ca_file else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"[alerts] smtp_ca_file {cafile}: cannot load: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connect(alerts: AlertsConfig) -> smtplib.SMTP:
    host, port, timeout = alerts.smtp_host, alerts.smtp_port, alerts.smtp_timeout
    if alerts.smtp_security == "tls":
        return smtplib.SMTP_SSL(host, port, timeout=timeout, context=_tls_context(alerts))
    smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        if alerts.smtp_security == "starttls":
            smtp.starttls(context=_tls_context(alerts))
    except BaseException:
        smtp.close()
        raise
    return smtp


def _login(smtp: smtplib.SMTP, alerts: AlertsConfig) -> None:
    if not alerts.smtp_user:
        return
    if alerts.smtp_security == "none" and not _is_loopback(alerts.smtp_host):
        # never send a password in clear text across a network
        raise DeliveryError(
            "[alerts] smtp_user is set but smtp_security = none: refusing to send the password "
            "unencrypted; set smtp_security = starttls or tls"
        )
    password = read_password(alerts)
    if password is None:
        raise DeliveryError(
            "[alerts] smtp_user is set but no password: set smtp_password_file or provide the "
            f"systemd credential {CREDENTIAL_NAME!r}"
        )
    smtp.login(alerts.smtp_user, password)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = exc.recipients.items()
        return "all recipients refused: " + "; ".join(
            f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in refused
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    return str(exc) or type(exc).__name__


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def addressed_to_alerts(alerts: AlertsConfig, message: EmailMessage) -> EmailMessage:
    """`message` with its recipient headers replaced by exactly `[alerts] email_to`."""
    for name in _RECIPIENT_HEADERS:
        del message[name]
    message["To"] = ", ".join(alerts.email_to)
    return message


def as_bytes(message: EmailMessage, linesep: str = "\r\n") -> bytes:
    """The message as sent: unfolded headers (see POLICY) whatever policy it was parsed with."""
    return message.as_bytes(policy=POLICY.clone(linesep=linesep))


def deliver(alerts: AlertsConfig, message: EmailMessage) -> None:
    """Hand `message` to the MTA (`[alerts] transport`); return only once it accepted it.

    It goes to `[alerts] email_to` only, whatever its headers named. Raises DeliveryError
    with the reason otherwise.
    """
    if not alerts.email_to:
        raise DeliveryError("[alerts] email_to is empty: no one to send reminders to")
    addressed_to_alerts(alerts, message)
    if alerts.transport == "sendmail":
        _sendmail(alerts, message)
    else:
        _smtp(alerts, message)


def _sendmail(alerts: AlertsConfig, message: EmailMessage) -> None:
    # -t: recipients from the (just rewritten) headers; -oi: a lone "." is not end of input
    command = [str(alerts.sendmail), "-t", "-oi"]
    where = f"{alerts.sendmail} (transport = sendmail)"
    try:
        done = subprocess.run(
            command,
            input=as_bytes(message, "\n"),
            capture_output=True,
            timeout=alerts.smtp_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"{where}: timed out after {alerts.smtp_timeout} s") from None
    except OSError as exc:
        raise DeliveryError(f"{where}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = said[-1] if said else "no message"
        raise DeliveryError(f"{where}: exit status {done.returncode}: {reason[:300]}")


def _smtp(alerts: AlertsConfig, message: EmailMessage) -> None:
    """Deliver over SMTP; some recipients refused while others were accepted counts as
    delivered (resending would duplicate it for the others)."""
    where = f"SMTP {alerts.smtp_host}:{alerts.smtp_port} ({alerts.smtp_security})"
    smtp: smtplib.SMTP | None = None
    try:
        smtp = _connect(alerts)
        _login(smtp, alerts)
        refused = smtp.sendmail(alerts.email_from, list(alerts.email_to), as_bytes(message))
    except DeliveryError as exc:
        raise DeliveryError(f"{where}: {exc}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{where}: {_reason(exc)}") from None
    finally:
        if smtp is not None:
            _close(smtp)
    for rcpt, (code, text) in refused.items():
        log.warning("%s refused recipient %s: %s %s", where, rcpt, code, _text(text))


def _close(smtp: smtplib.SMTP) -> None:
    # Once DATA was accepted, a failing QUIT must not turn into a retry (a duplicate email).
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
