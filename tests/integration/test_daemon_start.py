"""How `serve` starts. Ready means serving (issue 13.3): a `serve` that can bind no listener
exits non-zero before READY=1; one that binds some is ready and says in STATUS= how many failed.
A fresh install (issue 13.5): no certificate configured gives one clear line, not a CRITICAL
per listener.

The ports are taken by plain listening sockets on 127.0.0.3, as another FTP server would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftps import FAST_HASH, PASSWORD

HOST = "127.0.0.3"


def _config(
    pki: support.Pki, tmp_path: Path, with_cert: bool = True
) -> tuple[Path, dict[str, int]]:
    cert = pki.server("bind", HOST)
    (tmp_path / "home" / "alice").mkdir(parents=True, exist_ok=True)
    ports = {"explicit": support.free_port(HOST), "implicit": support.free_port(HOST)}
    path = support.node_config(
        tmp_path / "bind.ini",
        cert if with_cert else None,
        support.section("user:alice", password=FAST_HASH),
        addresses=HOST,
        **ports,
    )
    return path, ports


@pytest.fixture
def taken() -> Iterator[Any]:
    """take(port): a listening socket on HOST:port held for the test."""
    sockets: list[socket.socket] = []

    def take(port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, port))
        sock.listen(1)
        sockets.append(sock)

    yield take
    for sock in sockets:
        sock.close()


def test_no_listener_bound_exits_non_zero_before_ready(
    pki: support.Pki, tmp_path: Path, taken: Any
) -> None:
    config, ports = _config(pki, tmp_path)
    taken(ports["explicit"])
    taken(ports["implicit"])
    notify_dir = Path(tempfile.mkdtemp(prefix="ftps-notify-"))
    notify_path = notify_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        proc = subprocess.run(
            [sys.executable, "-m", "ftps_server", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(support.ROOT), "NOTIFY_SOCKET": str(notify_path)},
            cwd=tmp_path,
        )
        notify.setblocking(False)
        messages: list[str] = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
    notify_path.unlink()
    notify_dir.rmdir()
    assert proc.returncode != 0, proc.stderr
    lines = [line for msg in messages for line in msg.split("\n")]
    assert "READY=1" not in lines
    status = [line for line in lines if line.startswith("STATUS=")]
    assert status and "no listener could be bound" in status[-1], messages
    assert f"{HOST}:{ports['explicit']} explicit" in status[-1]
    assert f"{HOST}:{ports['implicit']} implicit" in status[-1]
    assert "no listener could be bound" in proc.stderr


def test_some_listeners_bound_is_ready_and_status_counts_the_failed(
    pki: support.Pki, tmp_path: Path, taken: Any, start_server: Any
) -> None:
    config, ports = _config(pki, tmp_path)
    taken(ports["explicit"])
    server = start_server(config)
    assert server.status() == "1 listeners, 1 failed to bind", server.messages
    assert server.proc.poll() is None
    # The listener that did bind serves FTPS.
    ftp = support.implicit_client(pki, HOST, ports["implicit"], timeout=20)
    try:
        assert ftp.login("alice", PASSWORD).startswith("230")
    finally:
        ftp.close()


def test_no_certificate_configured_logs_one_clear_line(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    config, _ = _config(pki, tmp_path, with_cert=False)
    server = start_server(config)
    assert server.wait_log("no certificate configured yet", timeout=10), server.log()
    os.kill(server.pid, signal.SIGTERM)  # the log is complete once the server has exited
    server.proc.wait(20)
    log = server.log()
    hint = [line for line in log.splitlines() if "certificate" in line and "ready:" not in line]
    assert len(hint) == 1, log
    assert "[certificate:NAME]" in hint[0] and "systemctl reload ftps-server" in hint[0]
    assert str(config) in hint[0]
    assert "CRITICAL" not in log, log
