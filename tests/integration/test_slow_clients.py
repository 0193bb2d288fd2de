"""Slow and idle clients are dropped by the handshake and idle timeouts; others are served.

100 connections here (`FTPS_SLOW_CLIENTS=500` for the by-hand run): some never start the
handshake, some stop after `AUTH TLS`, some trickle a ClientHello a byte a second, some
trickle a command line that never ends, some log in and go idle. With timeouts of 2 and 3 s
every one must be closed by the server within a few seconds while a real client keeps
logging in and transferring.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftp_policy import _config as policy_config
from test_ftps import PASSWORD

from ftps_server.server.listeners import LISTEN_BACKLOG

HOST = "127.0.0.1"
COUNT = int(os.environ.get("FTPS_SLOW_CLIENTS", "100"))
HANDSHAKE_TIMEOUT, IDLE_TIMEOUT = 2, 3
KINDS = ("silent_implicit", "silent_after_auth", "trickle_hello", "trickle_line", "idle_login")


@dataclass
class Slow:
    kind: str
    sock: socket.socket
    pending: bytes = b""  # what is still to trickle
    closed_after: float | None = None


def _client_hello(ctx: ssl.SSLContext) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=HOST)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _open(kind: str, ports: dict[str, int], ctx: ssl.SSLContext, hello: bytes) -> Slow:
    implicit = kind in ("silent_implicit", "trickle_hello")
    sock = socket.create_connection((HOST, ports["implicit" if implicit else "explicit"]), 10)
    if kind == "idle_login":
        tls = ctx.wrap_socket(_after_auth(sock), server_hostname=HOST)
        f = tls.makefile("rb")
        tls.sendall(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
        assert f.readline().startswith(b"331") and f.readline().startswith(b"230")
        return Slow(kind, tls)
    if kind == "silent_after_auth":
        return Slow(kind, _after_auth(sock))
    if kind == "trickle_line":
        sock.recv(1024)
        return Slow(kind, sock, b"NOOP" + b"x" * 1000)
    return Slow(kind, sock, hello if kind == "trickle_hello" else b"")


def _after_auth(sock: socket.socket) -> socket.socket:
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"AUTH TLS\r\n")
    assert f.readline().startswith(b"234")
    return sock


def _real_client(pki: support.Pki, port: int, stop: threading.Event, results: list[Any]) -> None:
    data = os.urandom(200_000)
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            ftp = support.explicit_client(pki, HOST, port)
            ftp.login("alice", PASSWORD)
            ftp.storbinary("STOR real.bin", io.BytesIO(data))
            got = io.BytesIO()
            ftp.retrbinary("RETR real.bin", got.write)
            ftp.quit()
            results.append(got.getvalue() == data and time.monotonic() - t0 < 5)
        except Exception as exc:  # any failure of the real client is the finding
            results.append(repr(exc))
        stop.wait(0.3)


def _watch(slow: list[Slow], limit: float) -> None:
    """Trickle a byte a second to the tricklers; note when the server closes each one."""
    sel = selectors.DefaultSelector()
    for s in slow:
        s.sock.setblocking(False)
        sel.register(s.sock, selectors.EVENT_READ, s)
    start = time.monotonic()
    next_trickle = start
    while sel.get_map() and time.monotonic() - start < limit:
        now = time.monotonic()
        if now >= next_trickle:
            next_trickle = now + 1.0
            for s in slow:
                if s.closed_after is None and s.pending:
                    try:
                        s.sock.send(s.pending[:1])
                        s.pending = s.pending[1:]
                    except (OSError, ssl.SSLError):
                        pass  # the close shows up as a read event
        for key, _ in sel.select(0.2):
            s = key.data
            try:
                while s.sock.recv(4096):
                    pass
                gone = True  # b"": the server closed
            except (ssl.SSLWantReadError, BlockingIOError):
                gone = False
            except (OSError, ssl.SSLError):
                gone = True
            if gone:
                s.closed_after = time.monotonic() - start
                sel.unregister(s.sock)
    sel.close()


def test_slow_and_idle_clients_are_dropped_while_others_are_served(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    config, ports = policy_config(
        pki,
        tmp_path,
        server_extra=f"""handshake_timeout = {HANDSHAKE_TIMEOUT}
        idle_timeout = {IDLE_TIMEOUT}
        max_connections = {COUNT + 50}
        max_connections_per_ip = {COUNT + 50}""",
    )
    server = start_server(config)
    ctx = support.client_context(pki)
    hello = _client_hello(ctx)
    stop, results = threading.Event(), []
    real = threading.Thread(target=_real_client, args=(pki, ports["explicit"], stop, results))
    real.start()
    try:
        slow = [_open(KINDS[i % len(KINDS)], ports, ctx, hello) for i in range(COUNT)]
        _watch(slow, limit=HANDSHAKE_TIMEOUT + IDLE_TIMEOUT + 10)
    finally:
        stop.set()
        real.join(30)
    survivors = [s.kind for s in slow if s.closed_after is None]
    assert not survivors, f"{len(survivors)} slow connections still open: {set(survivors)}"
    worst = max(s.closed_after or 0 for s in slow)
    print(f"{COUNT} slow connections, all dropped within {worst:.1f} s; "
          f"real client: {results.count(True)} sessions ok")
    assert results and all(r is True for r in results), results
    assert server.proc.poll() is None
    for s in slow:
        s.sock.close()


def test_listen_backlog_takes_a_burst_of_connections(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """pyftpdlib re-listens with a backlog of 100 unless told; a burst beyond it then loses
    handshakes, whose clients wait for SYN retries (1 s, 3 s, ...) or for ever.

    The burst comes while the server is stopped (SIGSTOP), so the accept queue alone must
    hold it: the kernel completes every handshake the backlog has room for, whatever the
    server's speed. Then every client must be greeted."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed")
    burst = 300  # three times pyftpdlib's default backlog
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn < burst:
        pytest.skip(f"net.core.somaxconn is {somaxconn}, below a burst of {burst}")
    config, ports = policy_config(pki, tmp_path)
    server = start_server(config)
    out = subprocess.run([ss, "-Hltn", f"sport = :{ports['explicit']}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[2]) == min(LISTEN_BACKLOG, somaxconn), out  # Send-Q of a listener = backlog
    socks: list[socket.socket] = []
    os.kill(server.pid, signal.SIGSTOP)
    try:
        for _ in range(burst):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, ports["explicit"]))
            socks.append(sock)
        waiting = set(socks)
        deadline = time.monotonic() + 0.8  # a dropped SYN is first retried after 1 s
        while waiting and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(waiting), [], 0.05)
            waiting -= {s for s in writable if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}
    finally:
        os.kill(server.pid, signal.SIGCONT)
    try:
        assert not waiting, f"{len(waiting)} of {burst} connections found the accept queue full"
        for sock in socks:  # 220, or 421 past max_connections_per_ip: greeted either way
            sock.setblocking(True)
            sock.settimeout(20)
            assert sock.recv(64)[:4] in (b"220 ", b"421 ")
    finally:
        for sock in socks:
            sock.close()


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_memory_per_idle_tls_session_stays_under_64_kib(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """200 logged-in idle TLS sessions; a wide passive range must not cost per session."""
    count = 200
    config, ports = policy_config(
        pki, tmp_path, server_extra=f"""passive_ports = 50000-52999
        max_connections = {count + 20}
        max_connections_per_ip = {count + 20}""",
    )
    server = start_server(config)
    warm = support.explicit_client(pki, HOST, ports["explicit"])  # first-use allocations
    warm.login("alice", PASSWORD)
    time.sleep(0.5)
    before = _rss_kib(server.pid)
    held = []
    for _ in range(count):
        ftp = support.explicit_client(pki, HOST, ports["explicit"])
        ftp.login("alice", PASSWORD)
        held.append(ftp)
    time.sleep(0.5)
    per_session = (_rss_kib(server.pid) - before) / count
    print(f"server RSS per idle TLS session: {per_session:.1f} KiB")
    for ftp in [warm, *held]:
        ftp.close()
    assert per_session <= 64, f"{per_session:.1f} KiB per idle TLS session"
