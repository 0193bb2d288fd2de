"""One meaning of "days left" (issue 13.9): a certificate that expired 2 days and 5 minutes
ago is "expired 2 days ago" in check, the journal, the email and `remind`'s output."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from reminder_support import AT, JournalCapture, SmtpServer, write_cert, write_config
from support import certificate_section

import ftps_server.journal.message_ids as message_ids
import ftps_server.reminders.command as remind
from ftps_server.check.probe import Attempt, Target
from ftps_server.check.verdict import Configured, Observation, judge
from ftps_server.pki.certs import cert_info, days_left, expiry_phrase

MIN = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("offset", "days", "words"),
    [
        (-(2 * DAY + 5 * MIN), -2, "expired 2 days ago"),
        (-(DAY + 5 * MIN), -1, "expired 1 day ago"),
        (-5 * MIN, 0, "expired less than a day ago"),
        (5 * MIN, 0, "expires within a day"),
        (DAY + 5 * MIN, 1, "expires in 1 day"),
        (13 * DAY + 23 * 60 * MIN, 13, "expires in 13 days"),
    ],
)
def test_days_left_and_its_words(offset: dt.timedelta, days: int, words: str) -> None:
    assert days_left(AT + offset, AT) == days
    assert expiry_phrase(AT + offset, AT) == words


def test_expired_2_days_5_minutes_ago_reads_the_same_everywhere(
    tmp_path: Path, capture: JournalCapture, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_cert(tmp_path / "tls", "main", not_after=AT - 2 * DAY - 5 * MIN)
    with SmtpServer() as smtp:
        config = write_config(
            tmp_path,
            smtp_port=smtp.port,
            certificates=certificate_section("main", files.cert, files.key, addresses="127.0.0.1"),
        )
        parser = argparse.ArgumentParser()
        remind.register(parser.add_subparsers())
        args = parser.parse_args(["remind", "--config", str(config.path), "--at", AT.isoformat()])
        assert args.func(args) == 0
        table = capsys.readouterr().out
        args = parser.parse_args(
            ["remind", "--config", str(config.path), "--at", AT.isoformat(), "--json", "--dry-run"]
        )
        args.func(args)
        doc = json.loads(capsys.readouterr().out)
        (message,) = smtp.sink.messages
    # email: subject and body
    assert 'certificate "main" expired 2 days ago' in str(message["Subject"])
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "(expired 2 days ago)" in body and "3 days" not in body
    # journal: the message and the DAYS_LEFT field
    (record,) = capture.with_id(message_ids.CERT_EXPIRED)
    assert "certificate main expired 2 days ago" in record["MESSAGE"]
    assert record["DAYS_LEFT"] == "-2"
    # remind: table and JSON
    assert doc["findings"][0]["days_left"] == -2
    (row,) = [line for line in table.splitlines() if line.startswith("expired")]
    assert row.split()[3] == "-2", row
    # check: the verdict on a listener serving this certificate
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    seen = Attempt(with_certificate=False, stage="session", admitted=True, reply="200 ok")
    seen.leaf_der = leaf.public_bytes(Encoding.DER)
    configured = Configured(config.certificates[0], cert_info(leaf).fingerprint)
    obs = Observation(Target("127.0.0.1", "127.0.0.1", "explicit", 2121), seen, configured)
    report = judge(obs, AT, 14, "test CA")
    assert report.days_left == -2
    assert any("certificate expired 2 days ago" in f.text for f in report.findings)
