"""Peers that hold resources: CCC without close_notify (issue 12.3), the passive range
exhausted by one address (12.8), a client that never reads its replies (12.2)."""

from __future__ import annotations

import ftplib
import os
import socket
import time
from pathlib import Path

import pytest
import support
from test_ftp_policy import _config
from test_ftps import PASSWORD

HOST = "127.0.0.1"


def _wait_eof(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the peer closed `sock` (reading and discarding), None if not in `limit`."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


# --- 12.3 CCC with no close_notify -------------------------------------------------------


def test_ccc_without_close_notify_is_closed_after_handshake_timeout(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    config, ports = _config(
        pki, tmp_path, server_extra="handshake_timeout = 2", tls_extra="allow_ccc = yes"
    )
    start_server(config)  # type: ignore[operator]
    ftp = support.explicit_client(pki, HOST, ports["explicit"])
    ftp.login("alice", PASSWORD)
    ftp.putcmd("CCC")
    assert ftp.getresp().startswith("200")
    assert ftp.sock is not None
    # the client never answers the server's close_notify: read the raw TCP stream only
    raw = socket.socket(fileno=os.dup(ftp.sock.fileno()))
    try:
        waited = _wait_eof(raw, 10.0)
    finally:
        raw.close()
        ftp.sock.close()
    assert waited is not None, "the server kept the CCC connection open"
    assert waited < 2 + 3


# --- 12.8 one address exhausts the passive range ------------------------------------------


def _free_range(count: int) -> int:
    """The first of `count` consecutive ports free on HOST right now."""
    for _ in range(50):
        low = support.free_port()
        if low + count > 65535:
            continue
        try:
            held = [socket.create_server((HOST, low + i)) for i in range(count)]
        except OSError:
            continue
        for sock in held:
            sock.close()
        return low
    raise AssertionError("no free port range")


def _client_from(pki: support.Pki, source: str, port: int) -> support.ReusingFTP_TLS:
    ftp = support.ReusingFTP_TLS(
        context=support.client_context(pki), timeout=10, source_address=(source, 0)
    )
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.prot_p()
    ftp.login("alice", PASSWORD)
    return ftp


def test_exhausted_passive_range_gives_425_never_a_port_outside(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    low = _free_range(5)
    # five ports, four listeners at most per address: a second address still gets one
    config, ports = _config(
        pki,
        tmp_path,
        server_extra=f"passive_ports = {low}-{low + 4}\nmax_passive_per_address = 4",
    )
    server = start_server(config)  # type: ignore[operator]
    clients: list[ftplib.FTP] = []
    seen: list[int] = []
    for _ in range(4):
        ftp = support.explicit_client(pki, HOST, ports["explicit"])
        ftp.login("alice", PASSWORD)
        seen.append(ftplib.parse227(ftp.sendcmd("PASV"))[1])
        clients.append(ftp)
    assert all(low <= p <= low + 4 for p in seen)
    # the per-address cap: a fifth from the same address gets 425, not a port
    hog = support.explicit_client(pki, HOST, ports["explicit"])
    hog.login("alice", PASSWORD)
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        hog.sendcmd("PASV")
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        hog.sendcmd("EPSV")
    assert server.wait_log("passive")
    # another address still gets the last port of the range
    other = _client_from(pki, "127.0.0.2", ports["explicit"])
    last = ftplib.parse227(other.sendcmd("PASV"))[1]
    assert low <= last <= low + 4
    # the range is now exhausted: 425, never a kernel port outside it
    third = _client_from(pki, "127.0.0.3", ports["explicit"])
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        third.sendcmd("PASV")
    assert server.wait_log("passive port range")
    for ftp in [*clients, hog, other, third]:
        ftp.close()


# --- 12.2 a client that never reads ---------------------------------------------------------


def _memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


@pytest.mark.parametrize("tls", [False, True])
def test_client_that_never_reads_pins_no_memory_and_is_closed(
    pki: support.Pki, tmp_path: Path, start_server: object, tls: bool
) -> None:
    idle = 3
    config, ports = _config(
        pki, tmp_path, server_extra=f"idle_timeout = {idle}\nallow_plain_ftp = yes"
    )
    server = start_server(config)  # type: ignore[operator]
    before = _memory_kib(server.pid, "VmRSS")
    raw = socket.create_connection((HOST, ports["explicit"]), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock: socket.socket = raw
    if tls:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220")
        raw.sendall(b"AUTH TLS\r\n")
        assert f.readline().startswith(b"234")
        sock = support.client_context(pki).wrap_socket(raw, server_hostname=HOST)
    payload = b"HELP\r\n" * (1024 * 1024 // 6)
    sock.settimeout(0.2)
    sent = 0
    deadline = time.monotonic() + 20
    view = memoryview(payload)
    while sent < len(payload) and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent : sent + 65536])
        except TimeoutError:
            continue  # the server stopped reading: that is the point
        except OSError:
            break  # closed by the server
    # meanwhile a real client is served
    ftp = support.explicit_client(pki, HOST, ports["explicit"])
    ftp.login("alice", PASSWORD)
    assert ftp.nlst() is not None
    ftp.quit()
    # the stuck connection is closed after idle_timeout plus a short grace
    fd = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        waited = _wait_eof(fd, idle + 15)
    finally:
        fd.close()
        sock.close()
    # the peak over everything the server did with that client's commands
    grown = _memory_kib(server.pid, "VmHWM") - before
    assert grown < 16 * 1024, f"server grew by {grown} KiB ({sent} bytes of HELP sent)"
    assert waited is not None, "the server kept a connection that cannot drain"


@pytest.mark.parametrize("tls", [False, True])
def test_pipelining_client_that_reads_late_gets_every_reply(
    pki: support.Pki, tmp_path: Path, start_server: object, tls: bool
) -> None:
    """Far more replies than the output bound, read only after everything was sent: reading
    stops and starts again (records left in the TLS buffer included), nothing is lost."""
    config, ports = _config(pki, tmp_path, server_extra="allow_plain_ftp = yes")
    start_server(config)  # type: ignore[operator]
    count = 800
    raw = socket.create_connection((HOST, ports["explicit"]), timeout=20)
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock: socket.socket = raw
    if tls:
        raw.sendall(b"AUTH TLS\r\n")
        assert reader.readline().startswith(b"234")
        sock = support.client_context(pki).wrap_socket(raw, server_hostname=HOST)
        reader = sock.makefile("rb")
    sock.sendall(b"HELP\r\n" * count)
    finals = 0
    while finals < count:
        line = reader.readline()
        assert line, f"connection closed after {finals} replies"
        if line.startswith(b"214 "):
            finals += 1
    sock.sendall(b"NOOP\r\n")
    assert reader.readline().startswith(b"200")
    sock.close()
