"""Listener options beyond the three modes: CCC, plain FTP, NAT for PASV, limits, IPv6."""

from __future__ import annotations

import contextlib
import ftplib
import io
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftps import FAST_HASH, PASSWORD


def _config(
    pki: support.Pki,
    tmp_path: Path,
    server_extra: str = "",
    tls_extra: str = "",
    addresses: str = "127.0.0.1",
) -> tuple[Path, dict[str, int]]:
    cert = pki.server("policy", "127.0.0.1", "::1")
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True, exist_ok=True)
    ports = {"explicit": support.free_port(), "implicit": support.free_port()}
    path = support.node_config(
        tmp_path / "policy.ini",
        cert,
        support.section("user:alice", home=home, permissions="elradfmw", password=FAST_HASH),
        addresses=addresses,
        server=server_extra,
        tls=tls_extra,
        **ports,
    )
    return path, ports


def test_ccc_clears_the_control_channel_when_allowed(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    config, ports = _config(pki, tmp_path, tls_extra="allow_ccc = yes")
    start_server(config)  # type: ignore[operator]
    ftp = support.explicit_client(pki, "127.0.0.1", ports["explicit"])
    ftp.login("alice", PASSWORD)
    assert "CCC" in ftp.sendcmd("FEAT")
    ftp.saved_session = ftp.sock.session  # type: ignore[union-attr]
    assert ftp.ccc().startswith("200")
    assert ftp.sock.cipher() is None  # type: ignore[union-attr]
    assert ftp.voidcmd("NOOP").startswith("200")  # now in clear text
    data = b"x" * 100_000
    ftp.storbinary("STOR ccc.bin", io.BytesIO(data))  # data channel still PROT P
    assert (tmp_path / "home" / "alice" / "ccc.bin").read_bytes() == data
    ftp.quit()


def test_ccc_refused_by_default(pki: support.Pki, tmp_path: Path, start_server: object) -> None:
    config, ports = _config(pki, tmp_path)
    start_server(config)  # type: ignore[operator]
    ftp = support.explicit_client(pki, "127.0.0.1", ports["explicit"])
    ftp.login("alice", PASSWORD)
    assert "CCC" not in ftp.sendcmd("FEAT")
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        ftp.voidcmd("CCC")
    ftp.quit()


def test_plain_ftp_only_when_allowed_and_only_on_explicit(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    plain = "require_data_protection = no"
    config, ports = _config(pki, tmp_path, server_extra="allow_plain_ftp = yes", tls_extra=plain)
    start_server(config)  # type: ignore[operator]
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", ports["explicit"], timeout=10)
    assert ftp.login("alice", PASSWORD).startswith("230")
    assert ftp.nlst() == []
    ftp.quit()


def test_nat_rule_sets_the_pasv_address(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    nat = "nat = 10.0.0.0/8 -> 10.0.0.5, 127.0.0.0/8 -> 192.0.2.7, 0.0.0.0/0 -> 203.0.113.5"
    config, ports = _config(pki, tmp_path, server_extra=f"{nat}\npassive_ports = 50100-50110")
    start_server(config)  # type: ignore[operator]
    ftp = support.explicit_client(pki, "127.0.0.1", ports["explicit"])
    ftp.login("alice", PASSWORD)
    reply = ftp.sendcmd("PASV")
    assert "(192,0,2,7," in reply
    port = ftplib.parse227(reply)[1]
    assert 50100 <= port <= 50110
    ftp.quit()


def test_connections_per_ip_limit(pki: support.Pki, tmp_path: Path, start_server: object) -> None:
    config, ports = _config(pki, tmp_path, server_extra="max_connections_per_ip = 2")
    start_server(config)  # type: ignore[operator]
    held = [socket.create_connection(("127.0.0.1", ports["explicit"]), 5) for _ in range(2)]
    for s in held:
        assert s.makefile("rb").readline().startswith(b"220")
    third = socket.create_connection(("127.0.0.1", ports["explicit"]), 5)
    assert third.makefile("rb").readline().startswith(b"421")
    for s in [*held, third]:
        s.close()


def test_ipv6_loopback(pki: support.Pki, tmp_path: Path, start_server: object) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("::1 not configured")
    config, ports = _config(pki, tmp_path, addresses="::1")
    start_server(config)  # type: ignore[operator]
    ftp = support.implicit_client(pki, "::1", ports["implicit"])
    ftp.login("alice", PASSWORD)
    ftp.storbinary("STOR v6.bin", io.BytesIO(b"six" * 1000))
    assert ftp.nlst() == ["v6.bin"]
    ftp.quit()


def test_passive_transfers_on_a_dual_stack_listener_with_a_port_range(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    # `addresses = *` (the package default) with passive_ports: pyftpdlib binds port 0 once to
    # learn the address family; the range-exhausted refusal took that for its kernel-port
    # fallback and every PASV/EPSV killed the session (curl: response reading failed)
    low = support.free_port()
    config, ports = _config(
        pki, tmp_path, addresses="*", server_extra=f"passive_ports = {low}-{low + 9}"
    )
    start_server(config)  # type: ignore[operator]
    ftp = support.explicit_client(pki, "127.0.0.1", ports["explicit"])
    ftp.login("alice", PASSWORD)
    ftp.storbinary("STOR dual.bin", io.BytesIO(b"dual" * 1000))
    assert ftp.nlst() == ["dual.bin"]
    ftp.quit()


class _BioClient:
    """An FTPS client whose TLS runs over memory BIOs, so the test decides what goes into
    each TCP write."""

    def __init__(self, pki: support.Pki, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.clear = b""
        assert self._clear_reply().startswith(b"220")
        self.sock.sendall(b"AUTH TLS\r\n")
        assert self._clear_reply().startswith(b"234")
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = support.client_context(pki)
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        self._call(self.tls.do_handshake)
        self.text = b""

    def _clear_reply(self) -> bytes:
        while b"\r\n" not in self.clear:
            data = self.sock.recv(4096)
            assert data, "connection closed"
            self.clear += data
        line, _, self.clear = self.clear.partition(b"\r\n")
        return line

    def _call(self, step: Callable[[], Any]) -> Any:
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                data = self.sock.recv(65536)
                assert data, "connection closed"
                self.inc.write(data)
                continue
            self.sock.sendall(self.out.read())
            return result

    def cmd(self, line: str) -> bytes:
        self._call(lambda: self.tls.write(line.encode() + b"\r\n"))
        while not re.search(rb"(^|\r\n)\d{3} [^\r]*\r\n$", self.text):
            self.text += self._call(lambda: self.tls.read(4096))
        reply, self.text = self.text, b""
        return reply


def test_command_in_the_same_segment_as_the_ccc_close_notify_is_answered(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    """A client that sends its first clear-text command right behind its close_notify (one
    TCP segment, as a busy server reads it) gets its reply: no further socket event comes."""
    config, ports = _config(pki, tmp_path, tls_extra="allow_ccc = yes")
    start_server(config)  # type: ignore[operator]
    client = _BioClient(pki, ports["explicit"])
    assert client.cmd("USER alice").startswith(b"331")
    assert client.cmd(f"PASS {PASSWORD}").startswith(b"230")
    assert client.cmd("CCC").startswith(b"200")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.tls.unwrap()  # our close_notify, not yet sent
    client.sock.sendall(client.out.read() + b"NOOP\r\n")
    raw = b""
    while not re.search(rb"200 [^\r\n]*\r\n", raw):  # after the server's close_notify record
        data = client.sock.recv(4096)  # times out (10 s) when the NOOP is never answered
        assert data, raw
        raw += data
    client.sock.close()
