"""Protocol abuse: FTP bounce through PORT/EPRT, foreign PASV connections, path traversal."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftp_policy import _config as policy_config
from test_ftps import PASSWORD

HOST = "127.0.0.1"
FOREIGN = "127.0.0.2"  # another loopback address: "another host" as far as the server knows


@pytest.fixture
def session(pki: support.Pki, tmp_path: Path, start_server: Any) -> ftplib.FTP_TLS:
    config, ports = policy_config(pki, tmp_path)
    start_server(config)
    ftp = support.explicit_client(pki, HOST, ports["explicit"])
    ftp.login("alice", PASSWORD)
    return ftp


@pytest.mark.parametrize(
    "command",
    [
        f"PORT {FOREIGN.replace('.', ',')},195,80",  # bounce to another host
        "PORT 10,0,0,1,195,80",
        "PORT 127,0,0,1,0,25",  # privileged port on the client's own address
        "PORT 127,0,0,1,3,255",  # 1023
        f"EPRT |1|{FOREIGN}|50000|",
        "EPRT |1|127.0.0.1|80|",
        "EPRT |1|0.0.0.0|50000|",
    ],
)
def test_port_and_eprt_bounce_refused(session: ftplib.FTP_TLS, command: str) -> None:
    with pytest.raises(ftplib.error_perm, match=r"^50[14]"):
        session.sendcmd(command)
    assert session.voidcmd("NOOP").startswith("200")  # the session goes on


def test_port_to_the_clients_own_unprivileged_port_works(session: ftplib.FTP_TLS) -> None:
    session.set_pasv(False)  # ftplib sends PORT with its own address: allowed
    assert session.nlst() == []
    session.quit()


def test_pasv_connection_from_a_foreign_address_refused(session: ftplib.FTP_TLS) -> None:
    reply = session.sendcmd("PASV")
    port = ftplib.parse227(reply)[1]
    intruder = socket.create_connection((HOST, port), 5, source_address=(FOREIGN, 0))
    intruder.settimeout(5)
    try:
        closed = intruder.recv(1) == b""
    except ConnectionResetError:
        closed = True
    intruder.close()
    assert closed, "the server kept a data connection from a foreign address"
    with pytest.raises(ftplib.error_temp, match=r"^425 Rejected data connection from foreign"):
        session.getresp()
    # the listening socket stays for the real client, which still gets its data
    data = os.urandom(50_000)
    session.storbinary("STOR after.bin", io.BytesIO(data))
    got = io.BytesIO()
    session.retrbinary("RETR after.bin", got.write)
    assert got.getvalue() == data
    session.quit()


# --- path traversal ------------------------------------------------------------------------


def _outcome(call: Callable[[], Any]) -> str:
    """The reply code a call ended with ('2xx' for success without a reply string)."""
    try:
        result = call()
    except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply) as exc:
        return str(exc)[:3]
    return result[:3] if isinstance(result, str) else "2xx"


def test_path_traversal_refused_in_every_path_command(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    config, ports = policy_config(pki, tmp_path)
    home = tmp_path / "home" / "alice"
    outside = tmp_path / "home" / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not for alice")
    (outside / "victim").mkdir()
    (home / "link").symlink_to(outside)  # a symlink out of the jail
    (home / "mine.txt").write_bytes(b"alice's")
    before = sorted(p.name for p in outside.rglob("*"))
    start_server(config)
    ftp = support.explicit_client(pki, HOST, ports["explicit"])
    ftp.login("alice", PASSWORD)
    sink: list[bytes] = []
    failures: list[str] = []
    for target in ("../outside/secret.txt", "/../outside/secret.txt", "link/secret.txt",
                   "../../../../../../etc/passwd", "./../outside/secret.txt"):
        folder = target.rsplit("/", 1)[0]
        attempts: dict[str, Callable[[], Any]] = {
            "CWD": lambda f=folder: ftp.cwd(f),
            "RETR": lambda t=target: ftp.retrbinary(f"RETR {t}", sink.append),
            "STOR": lambda t=target: ftp.storbinary(f"STOR {t}", io.BytesIO(b"x")),
            "APPE": lambda t=target: ftp.storbinary(f"APPE {t}", io.BytesIO(b"x")),
            "STOU": lambda f=folder: ftp.storbinary(f"STOU {f}/new", io.BytesIO(b"x")),
            "DELE": lambda t=target: ftp.delete(t),
            "RNFR": lambda t=target: ftp.sendcmd(f"RNFR {t}"),
            "RNTO": lambda t=target: ftp.rename("mine.txt", t),
            "MKD": lambda f=folder: ftp.mkd(f"{f}/newdir"),
            "RMD": lambda f=folder: ftp.rmd(f"{f}/victim"),
            "SIZE": lambda t=target: ftp.sendcmd(f"SIZE {t}"),
            "MDTM": lambda t=target: ftp.sendcmd(f"MDTM {t}"),
            "MFMT": lambda t=target: ftp.sendcmd(f"MFMT 20200101000000 {t}"),
            "MLST": lambda t=target: ftp.sendcmd(f"MLST {t}"),
            "MLSD": lambda f=folder: list(ftp.mlsd(f)),
            "LIST": lambda f=folder: ftp.retrlines(f"LIST {f}", lambda _: None),
            "NLST": lambda f=folder: ftp.nlst(f),
            "STAT": lambda f=folder: ftp.sendcmd(f"STAT {f}"),
            "SITE CHMOD": lambda t=target: ftp.sendcmd(f"SITE CHMOD 777 {t}"),
        }
        for name, call in attempts.items():
            code = _outcome(call)
            if not code.startswith("5"):
                failures.append(f"{name} {target}: {code}")
            ftp.cwd("/")
    assert not failures, failures
    assert sink == [], "RETR delivered bytes from outside the home"
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert (outside / "secret.txt").read_bytes() == b"not for alice"
    assert (outside / "secret.txt").stat().st_mode & 0o777 != 0o777
    assert (home / "mine.txt").exists()
    assert ftp.pwd() == "/"
    ftp.quit()


# --- hostile bytes in command lines (found by the fuzzer) -----------------------------------


def test_nul_byte_in_a_path_is_a_syntax_error_not_a_dropped_session(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    config, ports = policy_config(pki, tmp_path)
    server = start_server(config)
    ftp = support.explicit_client(pki, HOST, ports["explicit"])
    ftp.login("alice", PASSWORD)
    for command in ("CWD a\x00b", "SIZE x\x00", "MKD \x00", "DELE ../\x00/etc", "STAT a\x00"):
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.sendcmd(command)
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()
    assert "Traceback" not in server.log()


def test_control_characters_cannot_forge_log_lines_or_leak_a_pipelined_password(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    server, tls = _tls_before_login(pki, tmp_path, start_server)
    # a client with bare-LF line ends: the LF and everything behind it land in one argument
    tls.sendall(f"CWD x\n<3>ERROR forged line\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
    f = tls.makefile("rb")
    assert f.readline().startswith(b"530")
    assert f.readline().startswith(b"221")
    tls.close()
    assert server.wait_log("characters withheld"), server.log()
    log = server.log()
    assert PASSWORD not in log
    assert "forged line" not in log


def test_no_bidi_override_or_c1_control_reaches_a_log_line(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    # pyftpdlib logs CWD with its argument: U+202E would show the line reordered, NEL and
    # U+2028 break it in viewers that honour them
    server, tls = _tls_before_login(pki, tmp_path, start_server)
    tls.sendall("CWD gpj\u202eexe\r\nCWD a\x85b\u2028c\r\nQUIT\r\n".encode())
    f = tls.makefile("rb")
    assert f.readline().startswith(b"530")
    assert f.readline().startswith(b"530")
    assert f.readline().startswith(b"221")
    tls.close()
    assert server.wait_log("characters withheld"), server.log()
    log = server.log()
    assert not any(c in log for c in "\u202e\x85\u2028"), log


def _tls_before_login(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> tuple[support.ServerProcess, ssl.SSLSocket]:
    """A server and a raw TLS control connection to it, after AUTH TLS, before USER."""
    config, ports = policy_config(pki, tmp_path)
    server = start_server(config)
    raw = socket.create_connection((HOST, ports["explicit"]), 5)
    return server, support.client_context(pki).wrap_socket(_after_auth(raw), server_hostname=HOST)


def _after_auth(sock: socket.socket) -> socket.socket:
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"AUTH TLS\r\n")
    assert f.readline().startswith(b"234")
    return sock
