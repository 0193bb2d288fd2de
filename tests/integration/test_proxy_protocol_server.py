"""PROXY protocol behind a real HAProxy on loopback (issue 16 item 1).

HAProxy listens on two VIPs (127.0.0.4, 127.0.0.5) and forwards control and passive ports to
one node (127.0.0.3) with `send-proxy-v2`, from 127.0.0.2 (the node's proxy_from). Clients bind
their own source addresses (127.0.0.6 ...) so bans and logs can be told apart.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
from cryptography.x509.oid import NameOID
from haproxy_support import Haproxy, need_haproxy

from ftps_server.pki.passwords import HashParams, hash_password
from ftps_server.server import proxy_protocol as pp
from ftps_server.server.workers import pick

PASSWORD = "Proxied-Horse-Battery-16"
FAST_HASH = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))
BALANCER, NODE, VIP4, VIP5 = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")


# --- what a real HAProxy sends, against headers built by hand -------------------------------


def _capture(listener: socket.socket) -> bytes:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"hello"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_real_haproxy_headers_match_the_spec(tmp_path: Path, option: str) -> None:
    need_haproxy()
    with socket.socket() as listener:
        listener.bind((NODE, 0))
        listener.listen(4)
        backend = listener.getsockname()[1]
        front = support.free_port(BALANCER)
        proxy = Haproxy(
            tmp_path,
            f"""
frontend f
    bind {BALANCER}:{front}
    default_backend b
backend b
    server s1 {NODE}:{backend} {option} source {BALANCER}
""",
            [(BALANCER, front)],
        )
        try:
            with socket.create_connection((BALANCER, front), 5, ("127.0.0.6", 0)) as client:
                client_port = client.getsockname()[1]
                client.sendall(b"hello")
                listener.settimeout(5)
                data = _capture(listener)
        finally:
            proxy.stop()
    header = pp.parse(data)
    assert header is not None
    assert header.source == ("127.0.0.6", client_port)
    assert header.destination == (BALANCER, front)
    assert data[header.length :] == b"hello"  # nothing of the stream taken with it
    if option == "send-proxy":
        expected = f"PROXY TCP4 127.0.0.6 {BALANCER} {client_port} {front}\r\n".encode()
    else:
        addresses = (
            ipaddress.ip_address("127.0.0.6").packed
            + ipaddress.ip_address(BALANCER).packed
            + struct.pack("!HH", client_port, front)
        )
        expected = pp.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 12) + addresses
    assert data[: header.length] == expected


# --- a node behind the balancer ---------------------------------------------------------------


@dataclass
class Fleet:
    pki: support.Pki
    dir: Path
    explicit: int
    implicit: int
    passive: tuple[int, int]
    server: support.ServerProcess
    proxy: Haproxy


@pytest.fixture
def fleet(
    pki: support.Pki, tmp_path: Path, start_server: object, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    need_haproxy()
    workers = getattr(request, "param", 1)  # `[server] workers` of the node
    vip4 = pki.server("vip4", VIP4)
    vip5 = pki.server("vip5", VIP5)
    node = pki.server("node", NODE)
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    explicit = support.free_port(NODE)
    implicit = support.free_port(NODE)
    low = support.free_port_range(6, (NODE, VIP4, VIP5))
    high = low + 5
    config = support.write_config(
        tmp_path / "ftps-server.ini",
        f"""
        [server]
        addresses = {NODE}
        passive_ports = {low}-{high}
        state_dir = {tmp_path}/state
        root = {tmp_path}/home
        handshake_timeout = 3
        max_login_failures = 2
        ban_time = 120
        max_connections_per_ip = 3
        proxy_protocol = yes
        proxy_from = {BALANCER}
        workers = {workers}
        [ports]
        explicit = {explicit}
        implicit = {implicit}
        [certificate:node]
        cert = {node.cert}
        key = {node.key}
        addresses = {NODE}
        [certificate:vip4]
        cert = {vip4.cert}
        key = {vip4.key}
        addresses = {VIP4}
        [certificate:vip5]
        cert = {vip5.cert}
        key = {vip5.key}
        addresses = {VIP5}
        [user:alice]
        home = {home}
        permissions = elradfmw
        password = {FAST_HASH}
        """,
    )
    server = start_server(config)  # type: ignore[operator]
    frontends = ""
    for name, port in (("explicit", explicit), ("implicit", implicit)):
        frontends += f"""
frontend {name}
    bind {VIP4}:{port}
    bind {VIP5}:{port}
    default_backend {name}
backend {name}
    server node {NODE}:{port} send-proxy-v2 source {BALANCER}
"""
    frontends += f"""
frontend passive
    bind {VIP4}:{low}-{high}
    bind {VIP5}:{low}-{high}
    default_backend passive
backend passive
    server node {NODE} send-proxy-v2 source {BALANCER}
"""
    proxy = Haproxy(tmp_path, frontends, [(VIP4, explicit), (VIP5, implicit), (VIP5, high)])
    try:
        yield Fleet(pki, tmp_path, explicit, implicit, (low, high), server, proxy)
    finally:
        proxy.stop()


def _curl(
    fleet: Fleet, url: str, source: str, *args: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[bytes]:
    cmd = ["curl", "-sS", "--max-time", "30", "--cacert", str(fleet.pki.ca_file)]
    cmd += ["--interface", source, "--user", f"alice:{password}", *args, url]
    return subprocess.run(cmd, capture_output=True, timeout=60)


def _url(fleet: Fleet, vip: str, scheme: str, path: str = "") -> tuple[str, list[str]]:
    if scheme == "implicit":
        return f"ftps://{vip}:{fleet.implicit}/{path}", []
    return f"ftp://{vip}:{fleet.explicit}/{path}", ["--ssl-reqd"]


@pytest.mark.parametrize("scheme", ["explicit", "implicit"])
def test_each_vip_serves_its_certificate_and_passive_data_goes_through(
    fleet: Fleet, tmp_path: Path, scheme: str
) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(700_000))
    for vip, passive in ((VIP4, "--ftp-pasv"), (VIP5, "--disable-epsv")):
        # curl verifies the certificate against the IP it dialled: the node's own or the
        # other VIP's would fail; --disable-epsv makes the server name the address (PASV)
        url, extra = _url(fleet, vip, scheme, f"up-{vip}.bin")
        r = _curl(fleet, url, "127.0.0.6", *extra, passive, "-T", str(src))
        assert r.returncode == 0, (r.stderr, fleet.server.log()[-3000:])
        stored = fleet.dir / "home" / "alice" / f"up-{vip}.bin"
        assert stored.read_bytes() == src.read_bytes(), f"{stored.stat().st_size} bytes stored"
        out = tmp_path / f"down-{vip}.bin"
        r = _curl(fleet, url, "127.0.0.6", *extra, passive, "-o", str(out))
        assert r.returncode == 0, (r.stderr, fleet.server.log()[-3000:])
        assert out.read_bytes() == src.read_bytes()
        listing = _curl(fleet, _url(fleet, vip, scheme)[0], "127.0.0.6", *extra, "--list-only")
        assert f"up-{vip}.bin".encode() in listing.stdout, listing.stderr
        cert = support.served_certificate(vip, getattr(fleet, scheme), scheme == "explicit")
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == f"vip{vip[-1]}"
    assert fleet.server.wait_log("user alice logged in from 127.0.0.6")
    assert f"from {BALANCER}" not in fleet.server.log()


@pytest.mark.parametrize("fleet", [2], indirect=True)
def test_two_workers_behind_haproxy_serve_each_client_on_its_own(
    fleet: Fleet, tmp_path: Path
) -> None:
    # one client address per worker of two; HAProxy connects to the node from BALANCER alone
    clients = [
        next(f"127.0.0.{i}" for i in range(20, 250) if pick(f"127.0.0.{i}", 2) == w) for w in (0, 1)
    ]
    (fleet.dir / "home" / "alice" / "both.bin").write_bytes(data := os.urandom(400_000))
    for client in clients:
        url, extra = _url(fleet, VIP4, "explicit", "both.bin")
        out = tmp_path / f"down-{client}.bin"
        r = _curl(fleet, url, client, *extra, "--ftp-pasv", "-o", str(out))
        assert r.returncode == 0, (r.stderr, fleet.server.log()[-3000:])
        assert out.read_bytes() == data  # the passive data connection went through HAProxy too
    for client in clients:
        assert fleet.server.wait_log(f"user alice logged in from {client}")
    for client in clients:
        lines = [
            line for line in fleet.server.log().splitlines() if f"REMOTE_ADDR={client} " in line
        ]
        assert lines and all(f"WORKER={pick(client, 2)}" in line for line in lines), lines


def _ftplib(fleet: Fleet, vip: str, source: str) -> support.ReusingFTP_TLS:
    ftp = support.ReusingFTP_TLS(context=support.client_context(fleet.pki), timeout=10)
    ftp.connect(vip, fleet.explicit, source_address=(source, 0))
    ftp.auth()
    ftp.prot_p()
    ftp.login("alice", PASSWORD)
    return ftp


def test_ftplib_tls13_upload_through_the_balancer(fleet: Fleet) -> None:
    ftp = _ftplib(fleet, VIP5, "127.0.0.6")
    assert ftp.sock.version() == "TLSv1.3"  # type: ignore[union-attr]
    for _ in range(3):
        support.store_and_fetch(ftp, 1_500_000, "ftplib.bin")
    ftp.quit()


def test_active_mode_connects_to_the_real_client(fleet: Fleet) -> None:
    # PORT names the client's own address; the check against the control connection's
    # address passes because that is the header's source, not the balancer's. (curl 7.88
    # fails on its own with --interface and --ftp-port: "sa_addr inet_ntop() failed".)
    ftp = _ftplib(fleet, VIP4, "127.0.0.6")
    ftp.set_pasv(False)
    support.store_and_fetch(ftp, 200_000, "active.bin")
    ftp.quit()
    assert fleet.server.wait_log("127.0.0.6")
    assert "Rejected data connection" not in fleet.server.log()


def test_ban_hits_the_real_client_not_the_balancer(fleet: Fleet) -> None:
    url, extra = _url(fleet, VIP4, "explicit")
    for _ in range(2):
        r = _curl(fleet, url, "127.0.0.7", *extra, "--list-only", password="wrong")
        assert r.returncode == 67, r.stderr  # login denied
    assert fleet.server.wait_log("address 127.0.0.7 banned")
    with socket.create_connection((VIP4, fleet.explicit), 5, ("127.0.0.7", 0)) as sock:
        greeting = sock.makefile("rb").readline()
    assert greeting.startswith(b"421 Too many failed logins from 127.0.0.7"), greeting
    # another client behind the same balancer is not affected
    r = _curl(fleet, url, "127.0.0.8", *extra, "--list-only")
    assert r.returncode == 0, (r.stderr, fleet.server.log()[-3000:])


def test_balancer_connection_without_header_is_closed_after_handshake_timeout(
    fleet: Fleet,
) -> None:
    with socket.create_connection((NODE, fleet.explicit), 5, (BALANCER, 0)) as sock:
        started = time.monotonic()
        assert support.closed_without_reply(sock, 15)
        assert time.monotonic() - started >= 2.5  # handshake_timeout = 3
    assert fleet.server.wait_log("no complete PROXY header within handshake_timeout")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"USER alice\r\n", "no PROXY protocol header"),
        (b"PROXY TCP4 10.1.1.1 127.0.0.4 1 99999\r\n", "destination port '99999'"),
        (pp.V2_SIGNATURE + b"\x21\x11\xff\xff", "65535 bytes"),
    ],
)
def test_balancer_connection_with_a_bad_header_is_closed(
    fleet: Fleet, payload: bytes, reason: str
) -> None:
    with socket.create_connection((NODE, fleet.implicit), 5, (BALANCER, 0)) as sock:
        sock.sendall(payload)
        started = time.monotonic()
        assert support.closed_without_reply(sock, 10)
        assert time.monotonic() - started < 2.5  # at once, not at the timeout
    assert fleet.server.wait_log(reason)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 10.9.9.9 127.0.0.4 1 21\r\n",
        pp.V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12),
    ],
)
def test_header_from_outside_proxy_from_is_refused(fleet: Fleet, header: bytes) -> None:
    with socket.create_connection((NODE, fleet.explicit), 5, ("127.0.0.9", 0)) as sock:
        assert sock.recv(100).startswith(b"220")
        sock.sendall(header)
        sock.settimeout(5)
        rest = b""
        while chunk := sock.recv(1000):
            rest += chunk
        assert b"230" not in rest and b"331" not in rest
    assert fleet.server.wait_log("PROXY protocol header from an address not in [server] proxy_from")
    assert "10.9.9.9" not in fleet.server.log()


def test_header_in_pieces_then_tls_at_once(fleet: Fleet) -> None:
    """A header split over segments, the ClientHello right behind it: nothing of TLS is lost."""
    header = f"PROXY TCP4 192.0.2.99 {VIP5} 40000 {fleet.implicit}\r\n".encode()
    ctx = support.client_context(fleet.pki)
    with socket.create_connection((NODE, fleet.implicit), 5, (BALANCER, 0)) as raw:
        for piece in (header[:3], header[3:20], header[20:]):
            raw.sendall(piece)
            time.sleep(0.05)
        with ctx.wrap_socket(raw, server_hostname=VIP5) as tls:  # verifies VIP5's certificate
            assert tls.recv(100).startswith(b"220")
    assert fleet.server.wait_log("192.0.2.99")


def test_command_pipelined_behind_a_v2_header_is_kept(fleet: Fleet) -> None:
    payload = (
        ipaddress.ip_address("192.0.2.98").packed
        + ipaddress.ip_address(VIP4).packed
        + struct.pack("!HH", 40001, fleet.explicit)
    )
    header = pp.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(payload)) + payload
    with socket.create_connection((NODE, fleet.explicit), 5, (BALANCER, 0)) as sock:
        sock.sendall(header + b"FEAT\r\n")  # one segment: header and the first command
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        assert reader.readline().startswith(b"211")  # FEAT's reply: the command survived


def test_per_address_limit_counts_the_real_clients(fleet: Fleet) -> None:
    def connect(source: str) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection((VIP4, fleet.explicit), 5, (source, 0))
        sock.settimeout(5)
        return sock, sock.makefile("rb").readline()

    opened = []
    try:
        for _ in range(3):
            sock, greeting = connect("127.0.0.11")
            opened.append(sock)
            assert greeting.startswith(b"220"), greeting
        sock, greeting = connect("127.0.0.11")
        opened.append(sock)
        assert greeting.startswith(b"421 Too many connections from the same IP"), greeting
        # all of them came from the balancer's address, yet another client is still welcome
        sock, greeting = connect("127.0.0.12")
        opened.append(sock)
        assert greeting.startswith(b"220"), greeting
    finally:
        for sock in opened:
            sock.close()


def test_hostile_headers_from_the_balancer_address(fleet: Fleet) -> None:
    """Random and mutated headers on real sockets: closed or served, never a crash (bounded)."""
    rng = random.Random(1616)
    valid = [
        f"PROXY TCP4 192.0.2.50 {VIP4} 1234 {fleet.explicit}\r\n".encode(),
        pp.V2_SIGNATURE
        + b"\x21\x11\x00\x0c"
        + ipaddress.ip_address("192.0.2.51").packed
        + ipaddress.ip_address(VIP4).packed
        + struct.pack("!HH", 1, fleet.explicit),
    ]
    served = closed = 0
    deadline = time.monotonic() + 60
    for i in range(150):
        if time.monotonic() > deadline:
            break
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(0, 3)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        if i % 7 == 0:
            data = bytearray(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        with socket.create_connection((NODE, fleet.explicit), 5, (BALANCER, 0)) as sock:
            try:
                sock.sendall(bytes(data))
                if i % 5 == 0:
                    sock.shutdown(socket.SHUT_WR)  # and half-close at once
            except OSError:  # already refused and closed by the node
                pass
            sock.settimeout(8)
            try:
                first = sock.recv(5)
            except (ConnectionResetError, TimeoutError):
                first = b""
            if first.startswith(b"220"):
                served += 1
            else:
                assert first == b"", first
                closed += 1
    assert served and closed
    assert "Traceback" not in fleet.server.log()
    with socket.create_connection((VIP4, fleet.explicit), 5, ("127.0.0.6", 0)) as sock:
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"220")
