"""A data connection belongs to its own control connection (issue 12.1).

The thief: a client from the victim's address with no account completes TLS on a listener of
the same server, then takes the victim's data connection (PASV/EPSV: connects to its port;
PORT/EPRT: is the address the server connects to) resuming *its own* TLS session. It must
get `522` on the victim's control connection and not one byte of the victim's file, and none
of its bytes may reach the victim's upload.

Every case runs twice: against contexts shared by all control connections and bound per
connection (the normal case, tls.py), and against a context per control connection (the
fallback when tls_openssl cannot reach OpenSSL, forced with FTPS_SERVER_OPENSSL_CTYPES=0).
"""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support

from ftps_server.pki.passwords import HashParams, hash_password

PASSWORD = "Victim-Horse-Battery-7"
HOST = "127.0.0.1"
SECRET = os.urandom(300_000)
THIEF_PAYLOAD = b"stolen upload " * 20_000


@dataclass
class Site:
    pki: support.Pki
    home: Path
    ports: dict[str, int]
    server: support.ServerProcess


@pytest.fixture(scope="module", params=["shared-contexts", "own-contexts"])
def site(
    pki: support.Pki, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("binding")
    main = pki.server("main", HOST, "localhost")
    named = pki.server("named", "ftp.example.test")
    home = tmp / "home" / "alice"
    home.mkdir(parents=True)
    (home / "secret.bin").write_bytes(SECRET)
    ports = {"explicit": support.free_port(), "implicit": support.free_port()}
    password = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))
    config = support.node_config(
        tmp / "ftps-server.ini",
        main,
        support.certificate_section(
            "named", named.cert, named.key, server_names="ftp.example.test"
        ),
        support.section("user:alice", home=home, permissions="elradfmw", password=password),
        addresses=HOST,
        server="handshake_timeout = 5",
        **ports,
    )
    env = {"FTPS_SERVER_OPENSSL_CTYPES": "0"} if request.param == "own-contexts" else {}
    server = support.ServerProcess(config, tmp, env=env)
    try:
        if env:
            assert server.wait_log("every control connection gets TLS contexts of its own")
        yield Site(pki, home, ports, server)
    finally:
        server.stop()


# --- the parties ---------------------------------------------------------------------------

VERSIONS = support.RESUMPTION


def _context(site: Site, version: str) -> ssl.SSLContext:
    return support.resuming_client_context(site.pki, version)


def _victim(
    site: Site, version: str = "tls1.3", server_name: str | None = None
) -> support.ReusingFTP_TLS:
    ftp = support.ReusingFTP_TLS(context=_context(site, version), timeout=10)
    ftp.connect(HOST, site.ports["explicit"])
    if server_name is not None:  # ftplib sends the host it connected to as SNI
        ftp.host = server_name
    ftp.auth()
    ftp.login("alice", PASSWORD)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp


@dataclass
class Thief:
    ctx: ssl.SSLContext
    control: ssl.SSLSocket
    session: ssl.SSLSession


def _thief(site: Site, version: str, listener: str, server_name: str | None = None) -> Thief:
    """A client with no account: TLS on `listener`, one NOOP (so TLS 1.3 tickets are read)."""
    ctx = _context(site, version)
    raw = socket.create_connection((HOST, site.ports[listener]), timeout=10)
    if listener == "explicit":
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"AUTH TLS\r\n")
        assert reader.readline().startswith(b"234")
    tls = ctx.wrap_socket(raw, server_hostname=server_name or HOST)
    lines = tls.makefile("rb")
    if listener == "implicit":
        assert lines.readline().startswith(b"220")
    tls.sendall(b"NOOP\r\n")
    assert lines.readline().startswith(b"200")
    session = tls.session
    assert session is not None
    if version != "tls1.2-session-id":
        assert session.has_ticket  # the attack resumes by ticket in these cases
    return Thief(ctx, tls, session)


def _take_over(thief: Thief, raw: socket.socket, payload: bytes | None) -> tuple[bytes, bool]:
    """TLS on the victim's data connection resuming the thief's own session.

    Returns what it received and whether its session was resumed."""
    raw.settimeout(5)
    try:
        tls = thief.ctx.wrap_socket(raw, server_hostname=HOST, session=thief.session)
    except (ssl.SSLError, OSError):
        raw.close()
        return b"", False
    resumed = tls.session_reused
    got = bytearray()
    deadline = time.monotonic() + 10
    try:
        if payload is not None:
            tls.sendall(payload)
            tls.unwrap()
        else:
            while time.monotonic() < deadline:
                block = tls.recv(65536)
                if not block:
                    break
                got += block
    except (ssl.SSLError, OSError):
        pass
    finally:
        tls.close()
    return bytes(got), resumed


def _final_reply(ftp: ftplib.FTP) -> str:
    for _ in range(5):
        line = ftp.getmultiline()
        if not line.startswith("1"):
            return line
    raise AssertionError("no final reply")


def _data_socket(victim: ftplib.FTP, mode: str) -> tuple[socket.socket | None, socket.socket]:
    """(connected socket for passive modes, or None) and the listener for active modes."""
    if mode in ("PASV", "EPSV"):
        if mode == "PASV":
            port = ftplib.parse227(victim.sendcmd("PASV"))[1]
        else:
            port = ftplib.parse229(victim.sendcmd("EPSV"), (HOST, 0))[1]
        return socket.create_connection((HOST, port), timeout=10), socket.socket()
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    if mode == "PORT":
        victim.voidcmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}")
    else:
        victim.voidcmd(f"EPRT |1|{HOST}|{port}|")
    return None, listener


def _attack(site: Site, version: str, listener: str, command: str, mode: str) -> None:
    victim = _victim(site)
    thief = _thief(site, version, listener)
    upload = f"upload-{version}-{listener}-{mode}.bin"
    connected, active = _data_socket(victim, mode)
    if connected is None:  # the server connects when it gets PORT/EPRT
        active.settimeout(10)
        connected, _ = active.accept()
    active.close()
    # the command first, then the thief's TLS: the transfer is bound to that connection
    victim.putcmd("RETR secret.bin" if command == "RETR" else f"STOR {upload}")
    assert victim.getmultiline()[:3] in ("125", "150")
    got, resumed = _take_over(thief, connected, THIEF_PAYLOAD if command == "STOR" else None)
    reply = _final_reply(victim)
    assert not resumed, "the thief resumed its own session on the victim's data connection"
    assert got == b"", f"{len(got)} bytes of the victim's file reached the thief"
    assert reply.startswith("522"), reply
    if command == "STOR":
        stored = site.home / upload
        assert not stored.exists() or THIEF_PAYLOAD[:16] not in stored.read_bytes()
    assert (site.home / "secret.bin").read_bytes() == SECRET
    assert site.server.wait_log("TLS session not resumed")
    assert site.server.wait_log(f"for the session of user alice from {HOST}")
    # the victim's own data connections still work on the same control connection
    assert victim.nlst() == sorted(victim.nlst())
    victim.quit()
    thief.control.close()


@pytest.mark.parametrize("version", ["tls1.2-ticket", "tls1.3"])
def test_thief_before_the_command_leaves_nothing_queued(site: Site, version: str) -> None:
    """The thief's TLS completes before the victim's RETR: the RETR gets the 522 at once (no
    transfer waiting to be handed to the next data connection) and not a byte leaks."""
    victim = _victim(site)
    thief = _thief(site, version, "implicit")
    connected, _ = _data_socket(victim, "PASV")
    assert connected is not None
    got, resumed = _take_over(thief, connected, None)
    assert (got, resumed) == (b"", False)
    with pytest.raises(ftplib.error_perm, match=r"^522 .*resume the TLS session"):
        victim.sendcmd("RETR secret.bin")
    with pytest.raises(ftplib.error_temp, match=r"^425 No data connection"):
        victim.sendcmd("RETR secret.bin")  # one reply per refused connection, then none
    assert victim.nlst() == sorted(victim.nlst())  # TYPE A lines, not the secret file
    victim.quit()
    thief.control.close()


@pytest.mark.parametrize("command", ["RETR", "STOR"])
@pytest.mark.parametrize("listener", ["implicit", "explicit"])
@pytest.mark.parametrize("version", list(VERSIONS))
def test_thief_on_passive_port_gets_522_and_no_byte(
    site: Site, version: str, listener: str, command: str
) -> None:
    _attack(site, version, listener, command, "PASV")


@pytest.mark.parametrize("command", ["RETR", "STOR"])
@pytest.mark.parametrize("mode", ["EPSV", "PORT", "EPRT"])
@pytest.mark.parametrize("version", ["tls1.2-ticket", "tls1.3"])
def test_thief_in_other_data_modes_gets_522_and_no_byte(
    site: Site, version: str, mode: str, command: str
) -> None:
    _attack(site, version, "implicit", command, mode)


# --- what must keep working ----------------------------------------------------------------


@pytest.mark.parametrize("version", list(VERSIONS))
def test_own_session_resumes_on_every_data_connection(site: Site, version: str) -> None:
    ftp = _victim(site, version)
    for n in range(3):
        support.store_and_fetch(ftp, 200_000 + n, f"own-{version}-{n}.bin")
    ftp.quit()


def test_implicit_session_resumes(site: Site) -> None:
    ftp = support.implicit_client(site.pki, HOST, site.ports["implicit"])
    ftp.login("alice", PASSWORD)
    support.store_and_fetch(ftp, 100_000, "implicit-own.bin")
    ftp.quit()


@pytest.mark.parametrize("version", ["tls1.2-ticket", "tls1.3"])
def test_sni_chosen_certificate_resumes_and_thief_is_refused(site: Site, version: str) -> None:
    ftp = _victim(site, version, server_name="ftp.example.test")
    assert "ftp.example.test" in str(ftp.sock.getpeercert())
    support.store_and_fetch(ftp, 100_000, f"sni-{version}.bin")
    ftp.quit()
    # a thief that also names the SNI certificate cannot resume on the victim's connection
    victim = _victim(site, version, server_name="ftp.example.test")
    thief = _thief(site, version, "implicit", server_name="ftp.example.test")
    connected, _ = _data_socket(victim, "PASV")
    assert connected is not None
    victim.putcmd("RETR secret.bin")
    assert victim.getmultiline()[:3] in ("125", "150")
    got, resumed = _take_over(thief, connected, None)
    assert (got, resumed) == (b"", False)
    assert _final_reply(victim).startswith("522")
    victim.quit()
    thief.control.close()


def test_sessions_survive_reload_and_thieves_still_fail(site: Site) -> None:
    before = _victim(site, "tls1.3")
    thief_before = _thief(site, "tls1.3", "implicit")
    site.server.reload()
    support.store_and_fetch(before, 100_000, "reload-before.bin")  # still resumes
    after = _victim(site, "tls1.3")
    # a session made before the reload is not a key to a session made after it, nor back
    for victim in (after, before):
        connected, _ = _data_socket(victim, "PASV")
        assert connected is not None
        victim.putcmd("RETR secret.bin")
        assert victim.getmultiline()[:3] in ("125", "150")
        got, resumed = _take_over(thief_before, connected, None)
        assert (got, resumed) == (b"", False)
        assert _final_reply(victim).startswith("522")
    support.store_and_fetch(after, 100_000, "reload-after.bin")
    for ftp in (before, after):
        ftp.quit()
    thief_before.control.close()
