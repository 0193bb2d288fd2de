"""max_connections_per_ip counts open connections only, also on a dual-stack `*` listener.

Regression: pyftpdlib recorded the address as accepted (::ffff:127.0.0.1 on a dual-stack
socket) but removed the session's normalised one (127.0.0.1) at close, so every closed IPv4
session stayed counted and a client was refused for good after max_connections_per_ip
sessions in total (default 20).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import support


def _dual_stack_port() -> int:
    """A port free on every address right now (the listener binds the wildcard)."""
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as s:
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, start_server: Any) -> int:
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 socket here")
    for attempt in range(3):  # other test runs on this machine may take the port meanwhile
        port = _dual_stack_port()
        config = support.node_config(
            tmp_path / f"c{attempt}.ini",
            None,
            addresses="*",
            explicit=port,
            server="max_connections_per_ip = 2",
        )
        process = start_server(config)
        if "failed to bind" not in process.status():
            return port
        process.proc.terminate()  # the start_server finaliser closes the rest
        process.proc.wait(10)
    raise RuntimeError("no free port for the dual-stack listener")


def _greeting(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    return sock.makefile("rb").readline()


def test_closed_sessions_stop_counting(server: int) -> None:
    for attempt in range(6):
        with socket.create_connection(("127.0.0.1", server), 5) as sock:
            greeting = _greeting(sock)
            assert greeting.startswith(b"220"), (attempt, greeting)
            sock.sendall(b"QUIT\r\n")
            assert sock.makefile("rb").readline().startswith(b"221")
            assert sock.recv(100) == b""  # the server closed: its count is released


def test_open_sessions_still_count(server: int) -> None:
    first = socket.create_connection(("127.0.0.1", server), 5)
    second = socket.create_connection(("127.0.0.1", server), 5)
    try:
        assert _greeting(first).startswith(b"220")
        assert _greeting(second).startswith(b"220")
        with socket.create_connection(("127.0.0.1", server), 5) as third:
            assert _greeting(third).startswith(b"421 Too many connections from the same IP")
    finally:
        first.close()
        second.close()
