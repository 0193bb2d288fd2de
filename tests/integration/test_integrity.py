"""Upload integrity: a file changes only for a transfer that can happen, an upload is complete
only when it arrived whole, and every data-connection failure after 150 gets one final reply.

Real server process, real ftplib/ssl clients on loopback; hostile endings (no close_notify,
RST, a failed handshake) are made with the socket API the way broken clients make them.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftp_policy import _config as policy_config
from test_ftps import PASSWORD

HOST = "127.0.0.1"


def _server(pki: support.Pki, tmp_path: Path, start_server: Any, tls_extra: str = "") -> Any:
    config, ports = policy_config(pki, tmp_path, tls_extra=tls_extra)
    server = start_server(config)
    return server, ports["explicit"], tmp_path / "home" / "alice"


def _login(pki: support.Pki, port: int, tls12: bool = False) -> support.ReusingFTP_TLS:
    ftp = support.explicit_client(pki, HOST, port, timeout=20)
    if tls12:
        ftp.context.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp.login("alice", PASSWORD)
    return ftp


def _tls12_client(pki: support.Pki, port: int) -> support.ReusingFTP_TLS:
    """A client that speaks TLS 1.2 only (no post-handshake tickets to leave unread)."""
    ctx = support.client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp = support.ReusingFTP_TLS(context=ctx, timeout=20)
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.prot_p()
    ftp.login("alice", PASSWORD)
    return ftp


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 18.1: nothing changes before the data connection is accepted --------------------------


@pytest.mark.parametrize("command", ["STOR", "APPE"])
def test_refused_upload_leaves_the_existing_file_byte_identical(
    pki: support.Pki, tmp_path: Path, start_server: Any, command: str
) -> None:
    """Before: `STOR precious.bin` refused with 522 left it at 0 bytes."""
    _, port, home = _server(pki, tmp_path, start_server)
    precious = home / "precious.bin"
    precious.write_bytes(os.urandom(5 * 1024 * 1024))
    before, mtime = _digest(precious), precious.stat().st_mtime_ns
    ftp = _login(pki, port)
    assert support.refused_upload(ftp, f"{command} precious.bin").startswith("522")
    assert _digest(precious) == before
    assert precious.stat().st_mtime_ns == mtime
    assert ftp.voidcmd("NOOP").startswith("200")  # one reply only: the next is NOOP's
    support.store_and_fetch(ftp, 10_000, "other.bin")  # the session goes on
    ftp.quit()


@pytest.mark.parametrize("command", ["STOR new.bin", "APPE new.bin", "STOU"])
def test_refused_upload_creates_no_file(
    pki: support.Pki, tmp_path: Path, start_server: Any, command: str
) -> None:
    _, port, home = _server(pki, tmp_path, start_server)
    ftp = _login(pki, port)
    assert support.refused_upload(ftp, command).startswith("522")
    assert sorted(p.name for p in home.iterdir()) == []
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


# --- 18.1: one final reply for every data-connection failure --------------------------------


def _pasv_port(ftp: ftplib.FTP) -> int:
    reply = ftp.sendcmd("EPSV")
    return int(reply.split("|")[-2])


def test_data_handshake_failing_before_the_command_gets_one_final_reply(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """The MLSD case: the data connection's TLS fails before the command is read.

    Before: `150`, then nothing (the passive listener was gone); the client waited out
    its own timeout. Now: one `522` naming the cause, at once.
    """
    _, port, _ = _server(pki, tmp_path, start_server)
    ftp = _login(pki, port)
    data_port = _pasv_port(ftp)
    with socket.create_connection((HOST, data_port), timeout=10) as raw:
        raw.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        raw.settimeout(10)
        while raw.recv(4096):  # the server fails the handshake and closes the connection
            pass
    ftp.sock.settimeout(5)
    start = time.monotonic()
    with pytest.raises(ftplib.error_perm, match=r"^522 .*TLS negotiation"):
        ftp.sendcmd("MLSD")
    assert time.monotonic() - start < 5
    assert ftp.voidcmd("NOOP").startswith("200")  # exactly one reply: the next is NOOP's
    assert [name for name, _ in ftp.mlsd()] == []  # and a new data connection works
    ftp.quit()


def test_active_data_handshake_failing_before_the_command_gets_522(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """The same with EPRT: the server connects, the handshake fails, the command gets 522."""
    _, port, _ = _server(pki, tmp_path, start_server)
    ftp = _login(pki, port)
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(10)
        assert ftp.sendcmd(f"EPRT |1|{HOST}|{listener.getsockname()[1]}|").startswith("200")
        raw, _ = listener.accept()
        with raw:
            raw.settimeout(10)
            raw.sendall(b"this is not a TLS ClientHello\r\n" * 4)
            while raw.recv(4096):
                pass
    ftp.sock.settimeout(5)
    with pytest.raises(ftplib.error_perm, match=r"^522 .*TLS negotiation"):
        ftp.sendcmd("MLSD")
    assert ftp.voidcmd("NOOP").startswith("200")
    assert [name for name, _ in ftp.mlsd()] == []
    ftp.quit()


def test_data_handshake_failing_after_150_gets_one_final_reply(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    _, port, _ = _server(pki, tmp_path, start_server)
    ftp = _login(pki, port)
    data_port = _pasv_port(ftp)
    ftp.putcmd("MLSD")
    assert ftp.getresp().startswith("150")
    with socket.create_connection((HOST, data_port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05hello")  # a broken ClientHello
        ftp.sock.settimeout(5)
        with pytest.raises(ftplib.error_perm, match=r"^522"):
            ftp.voidresp()
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


def test_transfer_command_without_a_data_connection_is_425_not_a_hang(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    _, port, home = _server(pki, tmp_path, start_server)
    ftp = _login(pki, port)
    ftp.sock.settimeout(5)
    for command in ("LIST", "RETR x", "STOR y"):
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.sendcmd(command)
    assert not (home / "y").exists()
    ftp.quit()


# --- 18.2: complete only when whole -------------------------------------------------------


def _upload_raw(ftp: support.ReusingFTP_TLS, name: str, data: bytes) -> ssl.SSLSocket:
    ftp.voidcmd("TYPE I")
    conn, _ = ftp.ntransfercmd(f"STOR {name}")
    assert isinstance(conn, ssl.SSLSocket)
    conn.sendall(data)
    return conn


def test_upload_ended_by_reset_is_426_and_logged_aborted(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """RST at the end (SO_LINGER 0): data still queued may be lost; never 226.

    Before: `226 Transfer complete` and completed=1 for whatever had arrived.
    """
    server, port, _ = _server(pki, tmp_path, start_server, tls_extra="upload_eof = lenient")
    ftp = _login(pki, port)
    conn = _upload_raw(ftp, "reset.bin", os.urandom(4 * 1024 * 1024))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket.close(conn)  # no close_notify, and RST instead of FIN
    conn.close()
    with pytest.raises(ftplib.error_temp, match=r"^426 .*bytes received"):
        ftp.voidresp()
    assert server.wait_log("RESULT=aborted")
    assert "RESULT=ok" not in server.log()
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


def test_clear_data_upload_ended_by_reset_is_426(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """PROT C: asyncore reported a reset as an ordinary EOF, so 226 for a cut upload."""
    server, port, _ = _server(pki, tmp_path, start_server, tls_extra="require_data_protection = no")
    ftp = _login(pki, port)
    ftp.prot_c()
    ftp.voidcmd("TYPE I")
    conn, _ = ftp.ntransfercmd("STOR clear.bin")
    conn.sendall(os.urandom(2 * 1024 * 1024))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    with pytest.raises(ftplib.error_temp, match=r"^426 .*reset"):
        ftp.voidresp()
    assert server.wait_log("RESULT=aborted")
    support.store_and_fetch(ftp, 100_000, "clear-ok.bin")  # a clean PROT C upload: 226
    ftp.quit()


def _upload_without_close_notify(pki: support.Pki, port: int, data: bytes) -> str:
    """TLS 1.2 upload whose data connection ends with a FIN but no close_notify."""
    ftp = _tls12_client(pki, port)
    conn = _upload_raw(ftp, "eof.bin", data)
    socket.socket.shutdown(conn, socket.SHUT_WR)  # TCP FIN without a TLS close_notify
    try:
        reply = ftp.voidresp()
    except ftplib.Error as err:
        reply = str(err)
    conn.close()
    ftp.quit()
    return reply


def test_upload_without_close_notify_is_426_when_strict(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    server, port, home = _server(pki, tmp_path, start_server)  # default: strict
    data = os.urandom(1024 * 1024)
    reply = _upload_without_close_notify(pki, port, data)
    assert reply.startswith("426") and "close_notify" in reply, reply
    assert server.wait_log("RESULT=aborted")
    # the partial file is kept (here it is whole) so that REST/APPE can resume it
    assert (home / "eof.bin").read_bytes() == data


def test_upload_without_close_notify_is_226_when_lenient(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    server, port, home = _server(pki, tmp_path, start_server, tls_extra="upload_eof = lenient")
    data = os.urandom(1024 * 1024)
    reply = _upload_without_close_notify(pki, port, data)
    assert reply.startswith("226"), reply
    assert (home / "eof.bin").read_bytes() == data
    assert server.wait_log("RESULT=ok")


@pytest.mark.parametrize("tls_extra", ["", "upload_eof = lenient"])
def test_close_without_unwrap_never_reports_a_short_file_complete(
    pki: support.Pki, tmp_path: Path, start_server: Any, tls_extra: str
) -> None:
    """The issue's client: sendall, close(), no unwrap, TLS 1.3; 5 runs, each bounded.

    Whatever reaches the disk, a 226 is only ever given for the whole file.
    """
    server, port, home = _server(pki, tmp_path, start_server, tls_extra=tls_extra)
    ftp = _login(pki, port)
    data = os.urandom(8 * 1024 * 1024)
    for run in range(5):
        conn = _upload_raw(ftp, f"run{run}.bin", data)
        conn.close()  # unread tickets may turn this into a RST
        try:
            reply = ftp.voidresp()
        except ftplib.error_temp as err:
            reply = str(err)
        got = (home / f"run{run}.bin").read_bytes()
        if reply.startswith("226"):
            assert got == data, f"run {run}: 226 for {len(got)} of {len(data)} bytes"
        else:
            assert reply.startswith("426"), reply
    if not tls_extra:  # strict: no close_notify was ever sent, so never 226
        assert "RESULT=ok" not in server.log()
    ftp.quit()


def test_clean_uploads_still_complete(pki: support.Pki, tmp_path: Path, start_server: Any) -> None:
    """ftplib unwraps (close_notify) after storbinary: strict accepts it, over 1.2 and 1.3."""
    _, port, home = _server(pki, tmp_path, start_server)
    for ftp in (_login(pki, port), _tls12_client(pki, port)):
        support.store_and_fetch(ftp, 3_000_001, "clean.bin")
        ftp.storbinary("STOR empty.bin", io.BytesIO(b""))
        assert (home / "empty.bin").read_bytes() == b""
        ftp.quit()
