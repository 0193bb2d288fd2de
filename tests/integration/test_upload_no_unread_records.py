"""No record an uploading client never reads (issue 18.3).

The client: Python `ssl` socket on the data connection, `sendall(20 MB)`, `close()` without
`unwrap()` and without reading. Had the server sent it anything after the handshake (TLS 1.3
NewSessionTickets), the close would make the client's kernel send a reset, and the reset
discards the end of the upload still queued at the server: a truncated file. Twenty runs,
every file byte-exact (the reply, 226 or 426 for the missing close_notify, is the business of
`[tls] upload_eof`).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from pathlib import Path

import pytest
import support

from ftps_server.pki.passwords import HashParams, hash_password

PASSWORD = "Upload-Horse-Battery-5"
HOST = "127.0.0.1"
SIZE = 20 * 1024 * 1024
RUNS = 20


@pytest.fixture
def server_site(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> tuple[support.Pki, Path, int]:
    cert = pki.server("main", HOST)
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    port = support.free_port()
    password = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))
    alice = support.section("user:alice", home=home, permissions="elradfmw", password=password)
    config = support.node_config(
        tmp_path / "ftps-server.ini", cert, alice, addresses=HOST, explicit=port
    )
    start_server(config)  # type: ignore[operator]
    return pki, home, port


def _upload_without_unwrap(ftp: support.ReusingFTP_TLS, name: str, data: bytes) -> str:
    port = ftp.makepasv()[1]
    raw = socket.create_connection((HOST, port), timeout=30)
    ftp.putcmd(f"STOR {name}")
    assert ftp.getmultiline()[:3] in ("125", "150")
    assert ftp.sock is not None
    tls = ftp.context.wrap_socket(raw, server_hostname=HOST, session=ftp.sock.session)
    assert tls.version() == "TLSv1.3" and tls.session_reused
    tls.sendall(data)
    tls.close()  # no unwrap(), nothing read
    return ftp.getmultiline()


def test_twenty_uploads_closed_without_unwrap_arrive_whole(
    server_site: tuple[support.Pki, Path, int],
) -> None:
    pki, home, port = server_site
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    ftp = support.ReusingFTP_TLS(context=support.client_context(pki), timeout=30)
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.login("alice", PASSWORD)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    bad: list[str] = []
    for run in range(RUNS):
        name = f"upload-{run}.bin"
        reply = _upload_without_unwrap(ftp, name, data)
        path = home / name  # closed before the final reply is sent
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(f"run {run}: {path.stat().st_size} of {SIZE} bytes, reply {reply!r}")
        path.unlink()
    ftp.quit()
    assert not bad, "\n".join(bad)


def test_a_client_that_uses_each_ticket_once_never_runs_out(
    server_site: tuple[support.Pki, Path, int],
) -> None:
    """Java's JSSE spends a TLS 1.3 ticket per resumption. Simulated: every data connection
    resumes with the newest session the control connection has, and none may be one an
    earlier data connection used. 20 transfers, uploads and downloads mixed."""
    pki, home, port = server_site
    ftp = support.ReusingFTP_TLS(context=support.client_context(pki), timeout=30)
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.login("alice", PASSWORD)
    ftp.prot_p()
    used: set[bytes] = set()
    data = os.urandom(100_000)
    for run in range(20):
        assert ftp.sock is not None
        session = ftp.sock.session
        assert session is not None and session.has_ticket
        assert session.id not in used, f"transfer {run}: no fresh ticket left"
        used.add(session.id)
        ftp.saved_session = session
        if run % 2:
            got = io.BytesIO()
            ftp.retrbinary("RETR once.bin", got.write)
            assert got.getvalue() == data
        else:
            ftp.storbinary("STOR once.bin", io.BytesIO(data))
        ftp.saved_session = None
    ftp.quit()
    assert (home / "once.bin").read_bytes() == data
