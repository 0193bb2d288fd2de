"""SMTP delivery and templates against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from reminder_support import (
    AT,
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpServer,
    free_port,
    write_cert,
    write_config,
)
from support import certificate_section

import ftps_server.reminders.mail as mail
import ftps_server.reminders.run as reminders
from ftps_server.config.loader import load
from ftps_server.config.model import AlertsConfig, Config
from ftps_server.errors import ConfigError, DeliveryError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="SMTP test CA")


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(SMTP_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def _alerts(port: int, **kw: object) -> AlertsConfig:
    base = AlertsConfig(
        email_to=("ops@example.com", "pki@example.com"),
        email_from="ftps-server@example.com",
        transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_timeout=5,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _login_alerts(port: int, security: str, **kw: object) -> AlertsConfig:
    """Alerts over `security` (starttls or tls) that log in as SMTP_USER."""
    return _alerts(port, smtp_security=security, smtp_user=SMTP_USER, **kw)


def _message(alerts: AlertsConfig) -> email.message.EmailMessage:
    return mail.build_message(alerts, "[ftps-server] test", "body text\n")


@pytest.fixture
def starttls_server(ca: trustme.CA) -> Iterator[SmtpServer]:
    with SmtpServer(security="starttls", ca=ca) as server:
        yield server


def test_starttls_verified_and_login_with_password_file(
    starttls_server: SmtpServer, ca_file: Path, password_file: Path
) -> None:
    alerts = _login_alerts(
        starttls_server.port, "starttls", smtp_ca_file=ca_file, smtp_password_file=password_file
    )
    message = _message(alerts)
    mail.deliver(alerts, message)
    (got,) = starttls_server.sink.messages
    assert starttls_server.sink.envelopes == [
        ("ftps-server@example.com", ["ops@example.com", "pki@example.com"])
    ]
    assert got["Message-ID"] == message["Message-ID"]
    assert email.utils.parsedate_to_datetime(str(got["Date"])).tzinfo is not None
    assert got["Auto-Submitted"] == "auto-generated"


def test_starttls_refuses_an_unverified_server_certificate(
    starttls_server: SmtpServer, password_file: Path
) -> None:
    """No smtp_ca_file: the system CAs do not know the test CA, so nothing is sent."""
    alerts = _login_alerts(starttls_server.port, "starttls", smtp_password_file=password_file)
    with pytest.raises(DeliveryError, match="certificate verification failed"):
        mail.deliver(alerts, _message(alerts))
    assert starttls_server.sink.messages == []


def test_wrong_password_is_reported_with_the_smtp_reason(
    starttls_server: SmtpServer, ca_file: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    alerts = _login_alerts(
        starttls_server.port, "starttls", smtp_ca_file=ca_file, smtp_password_file=wrong
    )
    with pytest.raises(DeliveryError, match=r"535"):
        mail.deliver(alerts, _message(alerts))


def test_password_from_systemd_credential(
    starttls_server: SmtpServer,
    ca_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "smtp-password").write_text(SMTP_PASSWORD)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    alerts = _login_alerts(starttls_server.port, "starttls", smtp_ca_file=ca_file)
    mail.deliver(alerts, _message(alerts))
    assert len(starttls_server.sink.messages) == 1


def test_user_without_password_is_an_error(
    starttls_server: SmtpServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    alerts = _login_alerts(starttls_server.port, "starttls", smtp_ca_file=ca_file)
    with pytest.raises(DeliveryError, match="smtp_password_file"):
        mail.deliver(alerts, _message(alerts))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls(ca: trustme.CA, ca_file: Path, password_file: Path) -> None:
    with SmtpServer(security="tls", ca=ca) as server:
        alerts = _login_alerts(
            server.port, "tls", smtp_ca_file=ca_file, smtp_password_file=password_file
        )
        mail.deliver(alerts, _message(alerts))
        assert len(server.sink.messages) == 1


def test_server_down_and_timeout() -> None:
    alerts = _alerts(free_port())
    with pytest.raises(DeliveryError, match=r"SMTP 127\.0\.0\.1:\d+ \(none\): .*refused"):
        mail.deliver(alerts, _message(alerts))
    # a server that accepts the connection but never greets: smtp_timeout applies
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        alerts = _alerts(silent.getsockname()[1], smtp_timeout=1)
        with pytest.raises(DeliveryError, match="timed out"):
            mail.deliver(alerts, _message(alerts))


def _expiring_config(tmp_path: Path, port: int, alerts: str = "") -> Config:
    files = write_cert(tmp_path / "tls", "main", not_after=AT + dt.timedelta(days=13))
    return write_config(
        tmp_path,
        smtp_port=port,
        alerts=alerts,
        certificates=certificate_section("main", files.cert, files.key, addresses="127.0.0.1"),
    )


def test_reminder_text_names_what_and_how(tmp_path: Path) -> None:
    config = _expiring_config(tmp_path, free_port())
    (finding,) = reminders.evaluate(config, AT)
    subject, body = mail.render_reminder(config, finding, at=AT, since="2026-12-01")
    host = socket.gethostname()
    assert subject == f'[ftps-server] EXPIRING: certificate "main" expires in 13 days ({host})'
    for text in (
        "[certificate:main]",
        "127.0.0.1 port 2121 (explicit)",
        "127.0.0.1 port 9990 (implicit)",
        "2026-12-14 12:00 UTC (expires in 13 days)",
        "ftps_server_certificates:",
        "cert_src:",
        "key_content",
        "systemctl reload ftps-server",
        "ftps-server check",
        str(config.certificates[0].cert),
    ):
        assert text in body


def test_template_dir_overrides_and_broken_falls_back(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "subject.txt.j2").write_text("CERT {{ name }} {{ condition }}\n")
    config = _expiring_config(tmp_path, free_port(), alerts=f"template_dir = {templates}\n")
    (finding,) = reminders.evaluate(config, AT)
    subject, body = mail.render_reminder(config, finding, at=AT, since="2026-12-01")
    assert subject == "CERT main expiring"
    assert "HOW TO FIX" in body  # reminder.txt.j2 not overridden: the shipped one
    (templates / "subject.txt.j2").write_text("{{ no_such_variable }}")
    with pytest.raises(ConfigError, match="template_dir"):
        mail.render(config.alerts, mail.reminder_context(config, finding, at=AT, since="x"))
    subject, _ = mail.render_reminder(config, finding, at=AT, since="2026-12-01")
    assert subject.startswith("[ftps-server] EXPIRING")


@pytest.mark.parametrize(
    ("hours", "words"),
    [(5, "expires within a day"), (30, "expires in 1 day ("), (-5, "EXPIRED: certificate")],
)
def test_subject_wording_near_the_end(tmp_path: Path, hours: int, words: str) -> None:
    files = write_cert(tmp_path / "tls", "main", not_after=AT + dt.timedelta(hours=hours))
    config = write_config(
        tmp_path,
        smtp_port=free_port(),
        warn_days="14, 0",
        certificates=certificate_section("main", files.cert, files.key, addresses="127.0.0.1"),
    )
    (finding,) = reminders.evaluate(config, AT)
    subject, _ = mail.render_reminder(config, finding, at=AT, since="2026-12-01")
    assert words in subject
    if hours < 0:  # the same words as `check` (issue 13.9)
        assert "expired less than a day ago" in subject


# --- transport = sendmail (a real executable standing in for the MTA's sendmail) -----------


def _fake_sendmail(tmp: Path, status: int = 0, stderr: str = "") -> tuple[Path, Path]:
    """A real script: records its arguments and stdin, answers with `status`."""
    record = tmp / "sendmail-record"
    script = tmp / "sendmail"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" > "{record}.args"\n'
        f'cat > "{record}"\n' + (f'echo "{stderr}" >&2\n' if stderr else "") + f"exit {status}\n"
    )
    script.chmod(0o755)
    return script, record


def test_sendmail_transport_pipes_the_message_with_t_oi(tmp_path: Path) -> None:
    script, record = _fake_sendmail(tmp_path)
    alerts = _alerts(free_port(), transport="sendmail", sendmail=script)
    mail.deliver(alerts, _message(alerts))
    assert Path(f"{record}.args").read_text() == "-t -oi\n"
    received = email.message_from_bytes(record.read_bytes())
    assert received["To"] == "ops@example.com, pki@example.com"
    assert received["Subject"] == "[ftps-server] test"
    assert b"\r\n" not in record.read_bytes()  # sendmail wants local line ends


def test_sendmail_failure_and_absence_are_delivery_errors(tmp_path: Path) -> None:
    script, _ = _fake_sendmail(tmp_path, status=75, stderr="queue directory full")
    alerts = _alerts(free_port(), transport="sendmail", sendmail=script)
    with pytest.raises(DeliveryError, match=r"exit status 75: queue directory full"):
        mail.deliver(alerts, _message(alerts))
    alerts = _alerts(free_port(), transport="sendmail", sendmail=tmp_path / "no-such-sendmail")
    with pytest.raises(DeliveryError, match=r"no-such-sendmail .*No such file"):
        mail.deliver(alerts, _message(alerts))


def test_default_transport_is_sendmail(tmp_path: Path) -> None:
    path = tmp_path / "a.ini"
    path.write_text("[alerts]\nemail_to = ops@example.com\n")
    alerts = load(path).alerts
    assert (alerts.transport, alerts.sendmail) == ("sendmail", Path("/usr/sbin/sendmail"))
    path.write_text("[alerts]\ntransport = carrier-pigeon\n")
    with pytest.raises(ConfigError, match=r"\[alerts\] transport"):
        load(path)


def test_recipient_headers_are_replaced_by_email_to(tmp_path: Path) -> None:
    """A spooled message naming other recipients goes to [alerts] email_to only."""
    script, record = _fake_sendmail(tmp_path)
    alerts = _alerts(free_port(), transport="sendmail", sendmail=script)
    message = _message(alerts)
    del message["To"]
    message["To"] = "victim@example.net"
    message["Cc"] = "cc@example.net"
    message["Bcc"] = "bcc@example.net"
    message["Resent-To"] = "resent@example.net"
    mail.deliver(alerts, message)
    text = record.read_text()
    assert "example.net" not in text
    assert "To: ops@example.com, pki@example.com" in text


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 9, 20, 60, 150])
def test_subject_is_never_folded_after_the_colon(extra: int) -> None:
    alerts = _alerts(free_port())
    subject = f'[ftps-server] EXPIRED: certificate "{"x " * extra}main" expired 2 days ago (h)'
    message = mail.build_message(alerts, subject, "body\n")
    for raw in (mail.as_bytes(message), message.as_string().encode()):
        assert re.search(rb"^Subject: \[ftps-server\] EXPIRED", raw, re.MULTILINE), raw[:200]
