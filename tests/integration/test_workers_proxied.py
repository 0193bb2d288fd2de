"""`[server] workers = 2` behind a balancer (issue 17.3 follow-up): the main process reads the
PROXY header and picks the worker by the real client's address, not the balancer's.

The "balancer" is this test on 127.0.0.1 (the node's proxy_from), writing PROXY v1/v2 headers
by hand in front of every control and data connection; the real clients are the headers'
sources, chosen with `pick` so that they map to different workers.
"""

from __future__ import annotations

import ftplib
import io
import ipaddress
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import support

from ftps_server.pki.passwords import HashParams, hash_password
from ftps_server.server import proxy_protocol as pp
from ftps_server.server.workers import pick

PASSWORD = "Steered-Horse-Battery-17"
NODE = "127.0.0.1"  # the node listens here, and the balancer connects from here
PASSIVE = (47160, 47179)  # worker 0 binds the first half, worker 1 the second
DATA = os.urandom(300_000)
_OPENED = re.compile(r"session \w+: connection from (127\.0\.0\.\d+) port \d+[^\n]* WORKER=(\d+)")


def _clients(worker: int, count: int, skip: int = 0) -> list[str]:
    """`count` loopback addresses that `pick` maps to `worker` of two (after `skip` of them)."""
    found = [f"127.0.0.{i}" for i in range(10, 250) if pick(f"127.0.0.{i}", 2) == worker]
    return found[skip : skip + count]


BALANCER_WORKER = pick(NODE, 2)
ON_0, ON_1 = _clients(0, 2), _clients(1, 2)


def proxy_header(source: str, source_port: int, port: int, version: int) -> bytes:
    """What the balancer sends: `source` dialled the VIP (NODE here) on `port`."""
    if version == 1:
        return f"PROXY TCP4 {source} {NODE} {source_port} {port}\r\n".encode()
    addresses = (
        ipaddress.ip_address(source).packed
        + ipaddress.ip_address(NODE).packed
        + struct.pack("!HH", source_port, port)
    )
    return pp.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


class BalancedFTP(support.ReusingFTP_TLS):
    """ftplib behind a hand-made balancer: each connection (control and passive data) starts
    with a PROXY header naming `client` as its source."""

    def __init__(self, pki: support.Pki, client: str, version: int, node: str = NODE) -> None:
        super().__init__(context=support.client_context(pki), timeout=10)
        self.client, self.version, self.node = client, version, node

    def _dial(self, port: int, source: str | None = None) -> socket.socket:
        sock = socket.create_connection((self.node, port), self.timeout)
        own_port = sock.getsockname()[1]
        sock.sendall(proxy_header(source or self.client, own_port, port, self.version))
        return sock

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
    ) -> str:
        self.host, self.port = host, port
        self.sock = self._dial(port)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        _host, port = self.makepasv()
        conn = self._dial(port)
        try:
            if rest is not None:
                self.sendcmd(f"REST {rest}")
            resp = self.sendcmd(cmd)
            if resp[0] == "2":
                resp = self.getresp()
            if resp[0] != "1":
                raise ftplib.error_reply(resp)
        except BaseException:
            conn.close()
            raise
        session = self.sock.session  # type: ignore[union-attr]
        return self.context.wrap_socket(conn, server_hostname=self.host, session=session), None


@dataclass
class Site:
    pki: support.Pki
    port: int
    server: support.ServerProcess


def _serve(pki: support.Pki, tmp: Path, node: str, passive: tuple[int, int]) -> Site:
    """A node on `node` with two workers behind the balancer on that same address."""
    cert = pki.server("node", NODE)
    home = tmp / "home" / "alice"
    home.mkdir(parents=True)
    (home / "data.bin").write_bytes(DATA)
    port = support.free_port(node)
    config = support.write_config(
        tmp / "ftps-server.ini",
        f"""
        [server]
        addresses = {node}
        state_dir = {tmp}/state
        root = {tmp}/home
        passive_ports = {passive[0]}-{passive[1]}
        workers = 2
        proxy_protocol = yes
        proxy_from = {node}
        handshake_timeout = 3
        max_login_failures = 2
        ban_time = 120
        [ports]
        explicit = {port}
        implicit = 0
        [certificate:node]
        cert = {cert.cert}
        key = {cert.key}
        default = yes
        [user:alice]
        home = {home}
        permissions = elradfmw
        password = {hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))}
        """,
    )
    return Site(pki, port, support.ServerProcess(config, tmp))


@pytest.fixture(scope="module")
def site(pki: support.Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    started = _serve(pki, tmp_path_factory.mktemp("workers-proxied"), NODE, PASSIVE)
    try:
        yield started
    finally:
        started.server.stop()


def _login(site: Site, client: str, version: int = 2, node: str = NODE) -> BalancedFTP:
    ftp = BalancedFTP(site.pki, client, version, node)
    ftp.connect(node, site.port)
    ftp.auth()
    ftp.prot_p()
    ftp.login("alice", PASSWORD)
    return ftp


def _workers_of(site: Site, expected: int) -> dict[str, set[int]]:
    """Which workers logged a session's connection, per client address (waits for `expected`
    connection lines, bounded)."""
    deadline = time.monotonic() + 10
    while True:
        found = _OPENED.findall(site.server.log())
        if len(found) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    seen: dict[str, set[int]] = {}
    for address, worker in found:
        seen.setdefault(address, set()).add(int(worker))
    return seen


def _slice(index: int) -> range:
    size = (PASSIVE[1] - PASSIVE[0] + 1) // 2
    return range(PASSIVE[0] + index * size, PASSIVE[0] + (index + 1) * size)


def test_each_real_client_is_served_by_its_own_worker(site: Site) -> None:
    assert {pick(c, 2) for c in ON_0} == {0} and {pick(c, 2) for c in ON_1} == {1}
    before = len(_OPENED.findall(site.server.log()))
    for round_ in range(2):
        for client in (*ON_0, *ON_1):
            ftp = _login(site, client, version=1 + round_ % 2)
            assert "data.bin" in ftp.nlst()
            ftp.quit()
    seen = _workers_of(site, before + 8)
    # every session of a real client on pick(real client), whatever the balancer's address
    assert {c: seen.get(c) for c in (*ON_0, *ON_1)} == {c: {pick(c, 2)} for c in (*ON_0, *ON_1)}
    assert set().union(*seen.values()) == {0, 1}  # both workers serve
    assert f"logged in from {ON_0[0]}" in site.server.log()
    # no session took the balancer's address
    assert not re.search(rf"REMOTE_ADDR={re.escape(NODE)}\s", site.server.log())


def test_passive_download_through_the_balancer_on_worker_1(site: Site) -> None:
    client, other = _clients(1, 1, skip=2)[0], _clients(0, 1, skip=2)[0]
    ftp = _login(site, client)
    try:
        # a data connection whose header names another client is refused, as with one worker
        _host, port = ftp.makepasv()
        assert port in _slice(1)  # worker 1's own slice: the data connection reaches it
        with ftp._dial(port, source=other) as thief:
            assert support.closed_without_reply(thief, 5)
        with pytest.raises(ftplib.error_temp, match=f"foreign address {other}"):
            ftp.getresp()
        got = io.BytesIO()
        ftp.retrbinary("RETR data.bin", got.write)
        assert got.getvalue() == DATA
        ftp.quit()
    finally:
        ftp.close()
    seen = _workers_of(site, 0)
    assert seen[client] == {1}
    assert other not in seen


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"USER alice\r\n", "no PROXY protocol header"),
        (b"PROXY TCP4 10.1.1.1 127.0.0.1 1 99999\r\n", "destination port '99999'"),
        (pp.V2_SIGNATURE + b"\x21\x11\xff\xff", "65535 bytes"),
    ],
)
def test_bad_header_from_the_balancer_is_refused(site: Site, payload: bytes, reason: str) -> None:
    with socket.create_connection((NODE, site.port), 5) as sock:
        sock.sendall(payload)
        started = time.monotonic()
        assert support.closed_without_reply(sock, 10)
        assert time.monotonic() - started < 2.5  # at once, not at handshake_timeout
    assert site.server.wait_log(f"closed connection from {NODE} on {NODE}:{site.port}")
    assert site.server.wait_log(reason)
    assert "Traceback" not in site.server.log()


def test_missing_header_is_closed_after_handshake_timeout(site: Site) -> None:
    with socket.create_connection((NODE, site.port), 5) as sock:
        started = time.monotonic()
        assert support.closed_without_reply(sock, 15)
        assert time.monotonic() - started >= 2.5  # handshake_timeout = 3
    assert site.server.wait_log("no complete PROXY header within handshake_timeout")


def test_local_header_is_the_balancers_own_connection(site: Site) -> None:
    local = pp.V2_SIGNATURE + b"\x20\x00\x00\x00"  # a health check: no client addresses
    before = len(_OPENED.findall(site.server.log()))
    with socket.create_connection((NODE, site.port), 5) as sock:
        sock.settimeout(5)
        sock.sendall(local)
        assert sock.makefile("rb").readline().startswith(b"220")
    assert _workers_of(site, before + 1)[NODE] == {BALANCER_WORKER}


def test_header_and_first_command_in_one_segment_reach_the_worker(site: Site) -> None:
    client = _clients(0, 1, skip=3)[0]
    with socket.create_connection((NODE, site.port), 5) as sock:
        sock.settimeout(5)
        own_port = sock.getsockname()[1]
        sock.sendall(proxy_header(client, own_port, site.port, 2) + b"FEAT\r\n")
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        assert reader.readline().startswith(b"211")  # FEAT's reply: the command survived
    assert _workers_of(site, 0)[client] == {0}


def test_ban_of_one_real_client_spares_another_on_the_other_worker(site: Site) -> None:
    banned, spared = _clients(BALANCER_WORKER ^ 1, 1, skip=4)[0], _clients(BALANCER_WORKER, 1)[0]
    for _ in range(2):
        ftp = BalancedFTP(site.pki, banned, 1)
        ftp.connect(NODE, site.port)
        ftp.auth()
        with pytest.raises(ftplib.error_perm, match="530"):
            ftp.login("alice", "wrong")
        ftp.close()
    assert site.server.wait_log(f"address {banned} banned")
    banned_line = next(
        line for line in site.server.log().splitlines() if f"address {banned} banned" in line
    )
    assert f"WORKER={pick(banned, 2)}" in banned_line  # counted where its sessions live
    refused = BalancedFTP(site.pki, banned, 2)
    try:
        with pytest.raises(ftplib.error_temp, match=f"421 Too many failed logins from {banned}"):
            refused.connect(NODE, site.port)
    finally:
        refused.close()
    ftp = _login(site, spared)  # same balancer, another worker: not banned
    assert "data.bin" in ftp.nlst()
    ftp.quit()


def test_a_balancer_on_ipv6_steers_by_the_real_client(pki: support.Pki, tmp_path: Path) -> None:
    """pyftpdlib hands IPv6 peers over as 4-tuples; the dispatch must take them as well."""
    try:
        support.free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    site = _serve(pki, tmp_path, "::1", (47180, 47199))
    try:
        for client in (ON_0[0], ON_1[0]):
            ftp = _login(site, client, node="::1")
            got = io.BytesIO()
            ftp.retrbinary("RETR data.bin", got.write)  # EPSV: the data connection on ::1 too
            assert got.getvalue() == DATA
            ftp.quit()
        seen = _workers_of(site, 2)
    finally:
        site.server.stop()
    assert {c: seen.get(c) for c in (ON_0[0], ON_1[0])} == {ON_0[0]: {0}, ON_1[0]: {1}}
