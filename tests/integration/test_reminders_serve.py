"""Reminders from `ftps-server serve` starting and from `ftps-server remind`, on the same
state directory: one email per certificate, condition and day, whichever runs first.

Real processes, a real aiosmtpd server on 127.0.0.1; the clock is set with FTPS_SERVER_NOW.
"""

from __future__ import annotations

import datetime as dt
import email
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
import trustme
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]
AT = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


class _Sink:
    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        message = email.message_from_bytes(envelope.content)  # type: ignore[attr-defined]
        self.subjects.append(str(message["Subject"]))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, _Sink]]:
    sink = _Sink()
    port = support.free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, sink
    controller.stop()


def _write(tmp: Path, smtp_port: int) -> Path:
    ca = trustme.CA()
    leaf = ca.issue_cert(
        "127.0.0.1", not_before=AT - dt.timedelta(days=90), not_after=AT - dt.timedelta(days=1)
    )
    cert, key = tmp / "main.pem", tmp / "main.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return support.write_config(
        tmp / "ftps-server.ini",
        f"""
        [server]
        addresses = 127.0.0.1
        state_dir = {tmp / "state"}
        root = {tmp}

        [ports]
        explicit = {support.free_port()}
        implicit = 0

        [certificate:main]
        cert = {cert}
        key = {key}
        default = yes

        [alerts]
        email_to = ops@example.com
        transport = smtp
        smtp_host = 127.0.0.1
        smtp_port = {smtp_port}
        smtp_security = none
        """,
    )


def _serve_once(config: Path, tmp: Path, day: str) -> str:
    """Start the server as of `day`, wait for its start-up reminder run, stop it."""
    server = support.ServerProcess(config, tmp, env={"FTPS_SERVER_NOW": day})
    try:
        deadline = time.monotonic() + 30
        while "reminder run finished" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        return server.log()
    finally:
        server.stop()


def _remind(config: Path, day: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["remind", "--config", str(config), "--at", day]
    return subprocess.run(
        [sys.executable, "-m", "ftps_server", *command], env=env, capture_output=True, check=False
    ).returncode


def test_expired_one_email_a_day_from_serve_and_remind(
    tmp_path: Path, smtp: tuple[int, _Sink]
) -> None:
    port, sink = smtp
    config = _write(tmp_path, port)
    log = _serve_once(config, tmp_path, "2026-12-01")
    assert "certificate main expired" in log
    assert len(sink.subjects) == 1
    assert _remind(config, "2026-12-01") == 0  # the timer later that day: nothing new
    assert len(sink.subjects) == 1
    assert _remind(config, "2026-12-02") == 0  # the next day the timer comes first
    _serve_once(config, tmp_path, "2026-12-02")  # ... and a restart sends nothing more
    assert len(sink.subjects) == 2
    _serve_once(config, tmp_path, "2026-12-03")
    assert _remind(config, "2026-12-03") == 0
    assert len(sink.subjects) == 3
    assert all("EXPIRED" in s for s in sink.subjects)
