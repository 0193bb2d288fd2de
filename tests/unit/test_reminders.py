"""Reminders against a real aiosmtpd server on loopback; only the clock is chosen (`at`)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trustme
from reminder_support import (
    AT,
    SMTP_PASSWORD,
    SMTP_USER,
    JournalCapture,
    SmtpServer,
    free_port,
    write_cert,
    write_config,
)
from support import certificate_section

import ftps_server.journal.message_ids as message_ids
import ftps_server.reminders.command as remind
import ftps_server.reminders.run as reminders
from ftps_server.config.model import Config
from ftps_server.errors import ConfigError

DAY = dt.timedelta(days=1)
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, port: int, days: float, **kw: str) -> Config:
    files = write_cert(tmp / "tls", "main", not_after=AT + dt.timedelta(days=days))
    return write_config(
        tmp,
        smtp_port=port,
        certificates=certificate_section("main", files.cert, files.key, addresses="127.0.0.1"),
        **kw,
    )


def _remind(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    remind.register(parser.add_subparsers())
    args = parser.parse_args(["remind", *argv])
    return int(args.func(args))


def test_twenty_days_left_sends_nothing(tmp_path: Path, smtp: SmtpServer) -> None:
    config = _config(tmp_path, smtp.port, 20)
    report = reminders.run_reminders(config, AT)
    assert [f.condition for f in report.findings] == ["ok"]
    assert smtp.sink.messages == []
    assert report.exit_status() == 0


def test_expiring_once_per_threshold(tmp_path: Path, smtp: SmtpServer) -> None:
    config = _config(tmp_path, smtp.port, 13, warn_days="14, 7")
    report = reminders.run_reminders(config, AT)
    assert report.exit_status() == 0  # expiring, and the email went out: the run did its job
    assert len(smtp.sink.messages) == 1
    subject = smtp.sink.subjects()[0]
    assert subject.startswith('[ftps-server] EXPIRING: certificate "main" expires in 13 days (')
    # the same day again (the timer after serve started): nothing
    reminders.run_reminders(config, AT + dt.timedelta(hours=5))
    # following days inside the 14-day threshold: nothing new
    reminders.run_reminders(config, AT + DAY)
    reminders.run_reminders(config, AT + 2 * DAY)
    assert len(smtp.sink.messages) == 1
    # 6 days left crosses the 7-day threshold: exactly one more
    reminders.run_reminders(config, AT + 7 * DAY)
    reminders.run_reminders(config, AT + 7 * DAY + dt.timedelta(hours=3))
    reminders.run_reminders(config, AT + 8 * DAY)
    assert len(smtp.sink.messages) == 2
    assert "expires in 6 days" in smtp.sink.subjects()[1]


def test_missed_days_still_send_one_email(tmp_path: Path, smtp: SmtpServer) -> None:
    """First seen at 5 days left (both 14 and 7 crossed while no run happened): one email."""
    config = _config(tmp_path, smtp.port, 5, warn_days="14, 7")
    reminders.run_reminders(config, AT)
    reminders.run_reminders(config, AT + DAY)
    assert len(smtp.sink.messages) == 1


def test_new_fingerprint_starts_afresh(tmp_path: Path, smtp: SmtpServer) -> None:
    config = _config(tmp_path, smtp.port, 13)
    reminders.run_reminders(config, AT)
    write_cert(tmp_path / "tls", "main", not_after=AT + dt.timedelta(days=12))  # replaced
    reminders.run_reminders(config, AT)  # never twice on one day for one certificate
    assert len(smtp.sink.messages) == 1
    reminders.run_reminders(config, AT + DAY)
    reminders.run_reminders(config, AT + 2 * DAY)
    assert len(smtp.sink.messages) == 2


def test_expired_once_a_day_from_remind(tmp_path: Path, smtp: SmtpServer) -> None:
    config = _config(tmp_path, smtp.port, -3)
    for offset in range(3):
        day = (AT + offset * DAY).date().isoformat()
        assert _remind("--config", str(config.path), "--at", day) == 0
        assert _remind("--config", str(config.path), "--at", f"{day}T23:59") == 0
    assert len(smtp.sink.messages) == 3
    assert [s.split(":", 1)[0] for s in smtp.sink.subjects()] == ["[ftps-server] EXPIRED"] * 3


def test_expired_remind_and_serve_thread_at_once_send_one(tmp_path: Path, smtp: SmtpServer) -> None:
    """The timer's `remind` process and serve's start-up thread race: one email per day."""
    config = _config(tmp_path, smtp.port, -1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FTPS_SERVER_LOG": "stderr"}
    for offset in range(3):
        day = (AT + offset * DAY).date().isoformat()
        command = ["remind", "--config", str(config.path), "--at", day]
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftps_server", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        at = reminders.parse_time(day)
        threads = [
            threading.Thread(target=reminders.run_reminders, args=(config, at)) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    assert len(smtp.sink.messages) == 3


def test_missing_file_and_address_without_certificate(tmp_path: Path, smtp: SmtpServer) -> None:
    missing = tmp_path / "tls" / "gone.pem"
    config = write_config(
        tmp_path,
        smtp_port=smtp.port,
        addresses="127.0.0.1, 127.0.0.2",
        certificates=certificate_section(
            "main", missing, tmp_path / "tls" / "gone.key", addresses="127.0.0.1"
        ),
    )
    conditions = {f.subject: f.condition for f in reminders.evaluate(config, AT)}
    assert conditions == {"certificate:main": "missing", "address:127.0.0.2": "missing"}
    for offset in range(3):
        reminders.run_reminders(config, AT + offset * DAY)
        reminders.run_reminders(config, AT + offset * DAY + dt.timedelta(hours=6))
    assert len(smtp.sink.messages) == 6
    by_subject = dict(zip(smtp.sink.subjects(), smtp.sink.bodies(), strict=True))
    cert_mail = next(b for s, b in by_subject.items() if 'certificate "main"' in s)
    assert str(missing) in cert_mail
    assert "127.0.0.1 port 2121 (explicit)" in cert_mail
    assert "127.0.0.1 port 9990 (implicit)" in cert_mail
    address_subject = next(s for s in by_subject if "address" in s)
    assert "MISSING: no certificate for address 127.0.0.2 ports 2121, 9990" in address_subject
    address_mail = by_subject[address_subject]
    assert "127.0.0.2 port 2121 (explicit)" in address_mail
    assert "addresses = 127.0.0.2" in address_mail


def test_smtp_down_spools_then_delivers_exactly_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    config = _config(tmp_path, port, -2)
    report = reminders.run_reminders(config, AT)
    assert report.exit_status() == 0  # kept in the spool: retried next run, not a failed run
    assert report.spooled == 1 and report.errors
    assert "Connection refused" in report.errors[0] or "refused" in report.errors[0].lower()
    spool = list((tmp_path / "state" / "spool").glob("*.json"))
    assert len(spool) == 1
    assert "EXPIRED" in json.loads(spool[0].read_text())["message"]
    # same day, still down: the spooled mail is retried, no second mail is made
    reminders.run_reminders(config, AT + dt.timedelta(hours=1))
    assert len(list((tmp_path / "state" / "spool").glob("*.json"))) == 1
    with SmtpServer(port) as smtp:
        report = reminders.run_reminders(config, AT + dt.timedelta(hours=2))
        assert report.spooled == 0 and not report.errors
        assert len(smtp.sink.messages) == 1
        reminders.run_reminders(config, AT + dt.timedelta(hours=3))
        assert len(smtp.sink.messages) == 1
    assert list((tmp_path / "state" / "spool").glob("*.json")) == []


def test_dry_run_sends_nothing_and_keeps_no_state(
    tmp_path: Path, smtp: SmtpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, smtp.port, 13)
    assert _remind("--config", str(config.path), "--at", "2026-12-01", "--dry-run", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["findings"][0]["condition"] == "expiring"
    assert out["findings"][0]["email"] == "would send"
    assert out["exit_status"] == 0
    assert smtp.sink.messages == []
    assert not (tmp_path / "state" / "reminders.json").exists()


def test_table_output(tmp_path: Path, smtp: SmtpServer, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, smtp.port, 13)
    assert _remind("--config", str(config.path), "--at", "2026-12-01") == 0
    out = capsys.readouterr().out
    assert "expiring   certificate main  13" in out
    assert "sent" in out


def test_journal_record_per_finding(
    tmp_path: Path, smtp: SmtpServer, capture: JournalCapture
) -> None:
    expiring = write_cert(tmp_path / "tls", "soon", not_after=AT + dt.timedelta(days=10))
    expired = write_cert(tmp_path / "tls", "old", not_after=AT - dt.timedelta(days=2))
    config = write_config(
        tmp_path,
        smtp_port=smtp.port,
        addresses="127.0.0.1, 127.0.0.2, 127.0.0.3",
        certificates=(
            certificate_section("soon", expiring.cert, expiring.key, addresses="127.0.0.1")
            + certificate_section("old", expired.cert, expired.key, addresses="127.0.0.2")
        ),
    )
    reminders.run_reminders(config, AT)
    (soon,) = capture.with_id(message_ids.CERT_EXPIRING)
    assert soon["PRIORITY"] == "4"
    assert soon["CONDITION"] == "expiring"
    assert soon["CERT_NAME"] == "soon"
    assert soon["CERT_PATH"] == str(expiring.cert)
    assert len(soon["CERT_FINGERPRINT"]) == 95
    assert soon["CERT_NOT_AFTER"].startswith("2026-12-11T12:00:00")
    assert soon["DAYS_LEFT"] == "10"
    assert soon["LISTENER"] == "127.0.0.1:2121,127.0.0.1:9990"
    (old,) = capture.with_id(message_ids.CERT_EXPIRED)
    assert (old["PRIORITY"], old["CONDITION"], old["DAYS_LEFT"]) == ("2", "expired", "-2")
    (nocert,) = capture.with_id(message_ids.LISTENER_NO_CERT)
    assert (nocert["PRIORITY"], nocert["CONDITION"]) == ("2", "missing")
    assert nocert["LISTENER"] == "127.0.0.3:2121,127.0.0.3:9990"


def test_no_usable_certificate_at_all_is_crit(tmp_path: Path, capture: JournalCapture) -> None:
    config = write_config(tmp_path, smtp_port=free_port(), certificates="")
    reminders.run_reminders(config, AT, send=False)
    crit = [e for e in capture.entries if "no listener has a usable" in e["MESSAGE"]]
    assert len(crit) == 1 and crit[0]["PRIORITY"] == "2"
    assert not (tmp_path / "state").exists()  # send=False: no state, no mail


def test_no_key_material_in_mail_or_log(
    tmp_path: Path, smtp: SmtpServer, capture: JournalCapture
) -> None:
    """A key that does not match, an expired RSA certificate and a key given as `cert`."""
    good = write_cert(tmp_path / "tls", "rsa", not_after=AT - DAY, rsa=True)
    other = write_cert(tmp_path / "tls", "other", not_after=AT + 100 * DAY, rsa=True)
    config = write_config(
        tmp_path,
        smtp_port=smtp.port,
        addresses="127.0.0.1, 127.0.0.2, 127.0.0.3",
        certificates=(
            certificate_section("expired", good.cert, good.key, addresses="127.0.0.1")
            + certificate_section("mismatch", good.cert, other.key, addresses="127.0.0.2")
            + certificate_section("swapped", other.key, good.key, addresses="127.0.0.3")
        ),
    )
    report = reminders.run_reminders(config, AT)
    assert {f.name: f.condition for f in report.findings} == {
        "expired": "expired",
        "mismatch": "missing",
        "swapped": "invalid",
    }
    assert len(smtp.sink.messages) == 3
    mails = [m.as_string() for m in smtp.sink.messages]
    logs = [json.dumps(e) for e in capture.entries]
    spool_and_state = [p.read_text() for p in (tmp_path / "state").rglob("*.json")]
    key_lines = [
        line
        for pem in (good.key_pem, other.key_pem)
        for line in pem.splitlines()
        if line and not line.startswith("-----")
    ]
    assert len(key_lines) > 20
    for text in mails + logs + spool_and_state:
        for line in key_lines:
            assert line not in text
        assert "PRIVATE KEY" not in text


def test_now_honours_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reminders.NOW_ENV, "2027-01-02")
    assert reminders.now() == dt.datetime(2027, 1, 2, 12, tzinfo=dt.UTC)
    monkeypatch.setenv(reminders.NOW_ENV, "2027-01-02T03:04:05+01:00")
    assert reminders.now() == dt.datetime(2027, 1, 2, 2, 4, 5, tzinfo=dt.UTC)


def test_refused_message_is_kept_with_the_smtp_reason(
    tmp_path: Path, smtp: SmtpServer, capture: JournalCapture
) -> None:
    config = _config(tmp_path, smtp.port, -1)
    smtp.sink.refuse_with = "451 4.3.0 mailbox busy, try again later"
    report = reminders.run_reminders(config, AT)
    assert report.exit_status() == 0 and report.spooled == 1
    assert "451 4.3.0 mailbox busy" in report.errors[0]
    assert any("451 4.3.0 mailbox busy" in e["MESSAGE"] for e in capture.entries)
    smtp.sink.refuse_with = None
    report = reminders.run_reminders(config, AT + dt.timedelta(hours=1))
    assert report.exit_status() == 0  # still expired, and nothing undelivered
    assert report.spooled == 0 and not report.errors
    assert len(smtp.sink.messages) == 1


def test_spooled_but_unrecorded_email_is_not_sent_twice(tmp_path: Path, smtp: SmtpServer) -> None:
    """A crash after spooling but before saving the state: the spool entry's keys count."""
    config = _config(tmp_path, smtp.port, -1)
    port = config.alerts.smtp_port
    down = dataclasses.replace(config.alerts, smtp_port=free_port())
    reminders.run_reminders(dataclasses.replace(config, alerts=down), AT)
    (tmp_path / "state" / "reminders.json").unlink()  # as if the state save never happened
    assert config.alerts.smtp_port == port
    reminders.run_reminders(config, AT + dt.timedelta(hours=1))
    assert len(smtp.sink.messages) == 1


def test_broken_state_file_is_set_aside(tmp_path: Path, smtp: SmtpServer) -> None:
    config = _config(tmp_path, smtp.port, -1)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "reminders.json").write_text("{not json")
    report = reminders.run_reminders(config, AT)
    assert len(smtp.sink.messages) == 1 and report.spooled == 0
    assert (tmp_path / "state" / "reminders.json.broken").read_text() == "{not json"
    reminders.run_reminders(config, AT)
    assert len(smtp.sink.messages) == 1


def test_unusable_state_dir_names_the_key(tmp_path: Path, smtp: SmtpServer) -> None:
    config = _config(tmp_path, smtp.port, -1)
    (tmp_path / "state").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match=r"\[server\] state_dir"):
        reminders.run_reminders(config, AT)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_run_as_root_keeps_files_owned_by_the_service_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`remind` by hand as root must not lock the service user out of its own state."""
    monkeypatch.setenv("FTPS_SERVER_SERVICE_USER", "4242")
    config = _config(tmp_path, free_port(), -1)  # SMTP down: a spool file is written too
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4243)
    reminders.run_reminders(config, AT)
    files = [state / "reminders.json", state / "reminders.lock", state / "spool"]
    files += list((state / "spool").iterdir())
    assert len(files) == 4
    assert {(p.stat().st_uid, p.stat().st_gid) for p in files} == {(4242, 4243)}


def test_listeners_of_wildcard_default_and_sni_only_sections(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    files = {n: write_cert(tls, n, not_after=AT + 90 * DAY) for n in ("a", "dflt", "sni")}
    config = write_config(
        tmp_path,
        smtp_port=free_port(),
        addresses="*",
        certificates=(
            certificate_section("a", files["a"].cert, files["a"].key, addresses="192.0.2.10")
            + certificate_section("dflt", files["dflt"].cert, files["dflt"].key, default="yes")
            + certificate_section(
                "sni", files["sni"].cert, files["sni"].key, server_names="ftp.example.org"
            )
        ),
    )
    served = {f.name: [str(li) for li in f.listeners] for f in reminders.evaluate(config, AT)}
    assert served == {
        "a": ["192.0.2.10:2121", "192.0.2.10:9990"],
        "dflt": ["*:2121", "*:9990"],
        "sni": ["*:2121", "*:9990"],
    }


def test_end_to_end_starttls_and_password_file_from_config(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    password = tmp_path / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n")
    with SmtpServer(security="starttls", ca=ca) as server:
        config = _config(
            tmp_path,
            server.port,
            13,
            security="starttls",
            alerts=f"smtp_user = {SMTP_USER}\n"
            f"smtp_password_file = {password}\nsmtp_ca_file = {ca_file}\n",
        )
        report = reminders.run_reminders(config, AT)
        assert report.delivered and not report.errors
        assert len(server.sink.messages) == 1
        assert server.sink.envelopes[0][1] == ["ops@example.com", "pki@example.com"]


# --- issue 19.5 / 13.4: broken state, exit status, spool recipients ------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"sent": {"certificate:main|x|expiring|14": null}}',
        '{"days": ["not", "a", "map"]}',
        '{"since": {"k": 3}}',
        '["a list"]',
    ],
)
def test_ill_typed_state_file_is_set_aside(tmp_path: Path, smtp: SmtpServer, text: str) -> None:
    config = _config(tmp_path, smtp.port, -1)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "reminders.json").write_text(text)
    report = reminders.run_reminders(config, AT)
    assert len(smtp.sink.messages) == 1 and report.spooled == 0
    assert (tmp_path / "state" / "reminders.json.broken").read_text() == text
    assert json.loads((tmp_path / "state" / "reminders.json").read_text())["days"]


def test_expired_and_smtp_down_is_a_successful_run(tmp_path: Path) -> None:
    """The reminder unit fails only when reminding failed, not when a certificate did."""
    config = _config(tmp_path, free_port(), -3)
    assert _remind("--config", str(config.path), "--at", "2026-12-01") == 0
    assert len(list((tmp_path / "state" / "spool").glob("*.json"))) == 1


def _cli(*argv: str) -> int:
    from ftps_server import cli

    return cli.main(list(argv))


def test_run_that_cannot_spool_fails_with_78(tmp_path: Path) -> None:
    config = _config(tmp_path, free_port(), -3)
    (tmp_path / "state").write_text("a file, not a directory")
    assert _cli("remind", "--config", str(config.path), "--at", "2026-12-01") == 78


def test_unexpected_error_in_a_run_fails_the_unit(
    tmp_path: Path, smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    # not a jinja2.TemplateError: an error the run does not expect
    (templates / "subject.txt.j2").write_text("{{ 1 // 0 }}")
    config = _config(tmp_path, smtp.port, -3, alerts=f"template_dir = {templates}\n")
    status = _cli("remind", "--config", str(config.path), "--at", "2026-12-01")
    assert status == remind.EXIT_FAILED
    assert "reminder run failed" in caplog.text
    unit = (ROOT / "systemd" / "ftps-server-remind.service").read_text()
    success = {
        int(code)
        for line in unit.splitlines()
        if line.startswith("SuccessExitStatus=")
        for code in line.split("=", 1)[1].split()
        if code.isdigit()
    }
    assert not success & {1, remind.EXIT_FAILED, 78}


def test_spooled_message_goes_to_email_to_only(tmp_path: Path, smtp: SmtpServer) -> None:
    """Whoever can write the spool cannot make `remind` mail anyone else."""
    config = _config(tmp_path, smtp.port, 90)
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    planted = (
        "From: ftps-server@example.com\nTo: victim@example.net\nCc: cc@example.net\n"
        "Bcc: bcc@example.net\nSubject: [ftps-server] hello\n\nbody\n"
    )
    (spool / "0-planted.json").write_text(json.dumps({"message": planted, "day": "2026-12-01"}))
    report = reminders.run_reminders(config, AT)
    assert report.spooled == 0
    assert smtp.sink.envelopes == [
        ("ftps-server@example.com", ["ops@example.com", "pki@example.com"])
    ]
    assert b"example.net" not in smtp.sink.raw[0]


def test_subject_arrives_unfolded_after_the_spool(tmp_path: Path) -> None:
    # Python's folder puts a 71..77 character value on its own line, right after "Subject:"
    frame = f'[ftps-server] EXPIRED: certificate "" expired 2 days ago ({socket.gethostname()})'
    name = "c" * max(1, 75 - len(frame))
    files = write_cert(tmp_path / "tls", name, not_after=AT - DAY * 2)
    section = certificate_section(name, files.cert, files.key, addresses="127.0.0.1")
    port = free_port()
    config = write_config(tmp_path, smtp_port=port, certificates=section)
    reminders.run_reminders(config, AT)  # SMTP down: spooled, read back from the file next run
    with SmtpServer(port) as smtp:
        reminders.run_reminders(config, AT + dt.timedelta(hours=1))
        (raw,) = smtp.sink.raw
    assert re.search(rb"^Subject: \[ftps-server\] EXPIRED:", raw, re.MULTILINE), raw[:300]


def test_sendmail_transport_end_to_end(tmp_path: Path) -> None:
    record = tmp_path / "mta-input"
    script = tmp_path / "sendmail"
    script.write_text(f'#!/bin/sh\ncat >> "{record}"\n')
    script.chmod(0o755)
    config = _config(
        tmp_path, free_port(), -1, alerts=f"transport = sendmail\nsendmail = {script}\n"
    )
    report = reminders.run_reminders(config, AT)
    assert report.spooled == 0 and report.delivered
    assert re.search(r"^Subject: \[ftps-server\] EXPIRED:", record.read_text(), re.MULTILINE)
