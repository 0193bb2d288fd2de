"""Shared parts of the reminder, mail and journal tests: a real aiosmtpd server on 127.0.0.1,
certificates with chosen validity made by trustme, config files, and a journal capture.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import ssl
import textwrap
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import support
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import ftps_server.journal.log as journal
from ftps_server.config.loader import load
from ftps_server.config.model import Config

UTC = dt.UTC
AT = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SMTP_USER = "alerts"
SMTP_PASSWORD = "s3cret pass-word"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (nothing listens there: "SMTP down")."""
    return support.free_port()


@dataclass
class Sink:
    """aiosmtpd handler keeping every accepted message."""

    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # as received, before any parsing
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    refuse_with: str | None = None  # e.g. "451 4.3.0 try again later": message not accepted

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_with:
            return self.refuse_with
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.raw.append(raw)
        self.messages.append(msg)  # type: ignore[arg-type]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"

    def bodies(self) -> list[str]:
        return [m.get_body(("plain",)).get_content() for m in self.messages]  # type: ignore[union-attr]

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


class SmtpServer:
    """A real SMTP server on 127.0.0.1: plain, STARTTLS (auth only over TLS) or implicit TLS."""

    def __init__(
        self, port: int | None = None, *, security: str = "none", ca: trustme.CA | None = None
    ) -> None:
        self.port = port or free_port()
        self.sink = Sink()
        kwargs: dict[str, Any] = {}
        if security != "none":
            assert ca is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            if security == "starttls":
                kwargs.update(
                    tls_context=context,
                    require_starttls=True,
                    authenticator=_authenticator,
                    auth_required=True,
                    auth_require_tls=True,
                )
            else:
                kwargs.update(
                    ssl_context=context,
                    authenticator=_authenticator,
                    auth_required=True,
                    # aiosmtpd only counts STARTTLS as TLS; this connection is TLS from the start
                    auth_require_tls=False,
                    server_hostname="127.0.0.1",
                )
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@dataclass
class CertFiles:
    cert: Path
    key: Path
    key_pem: str


def write_cert(
    directory: Path,
    name: str,
    *,
    not_after: dt.datetime,
    ca: trustme.CA | None = None,
    rsa: bool = False,
) -> CertFiles:
    """A certificate valid from 90 days before AT until `not_after`; key file mode 0600."""
    ca = ca or trustme.CA()
    key_type = trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA
    leaf = ca.issue_cert(
        "127.0.0.1",
        "ftp.example.com",
        common_name=f"{name}.example.com",
        not_before=AT - dt.timedelta(days=90),
        not_after=not_after,
        key_type=key_type,
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return CertFiles(cert, key, leaf.private_key_pem.bytes().decode())


def write_config(
    tmp: Path,
    *,
    smtp_port: int,
    certificates: str,
    addresses: str = "127.0.0.1",
    warn_days: str = "14",
    alerts: str = "",
    security: str = "none",
) -> Config:
    """Write and load a config with [server], [ports], the given certificate sections, [alerts]."""
    path = tmp / "ftps-server.ini"
    path.write_text(
        textwrap.dedent(
            f"""\
            [server]
            addresses = {addresses}
            state_dir = {tmp / "state"}

            [ports]
            explicit = 2121
            implicit = 9990

            [alerts]
            email_to = ops@example.com, pki@example.com
            email_from = ftps-server@example.com
            {"" if "transport" in alerts else "transport = smtp"}
            smtp_host = 127.0.0.1
            smtp_port = {smtp_port}
            smtp_security = {security}
            smtp_timeout = 5
            warn_days = {warn_days}
            """
        )
        + textwrap.dedent(alerts)
        + "\n"
        + textwrap.dedent(certificates)
    )
    return load(path)


class JournalCapture(logging.Handler):
    """Keeps every record as the journal fields `ftps_server.journal.log` would send."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(journal.journal_fields(record))

    def with_id(self, message_id: str) -> list[dict[str, str]]:
        return [e for e in self.entries if e.get("MESSAGE_ID") == message_id]
