"""Session events on a real server (issue 14.1, 14.2, 20.3): what the log says is what happened.

A real `ftps-server serve` on loopback with real ftplib sessions; the server's structured
output (the stderr form of its journal entries: ``message KEY=value ...``, see journal/log.py)
is parsed back into fields and compared with the transfers the test made: exactly those
uploads and downloads, with their byte counts, their SHA-256 where one is due, one SESSION_ID
per control connection shared by its data connections, and the same transfers in the
wu-ftpd xferlog file.
"""

from __future__ import annotations

import ftplib
import grp
import hashlib
import io
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftp_policy import _config as policy_config
from test_ftps import FAST_HASH, PASSWORD

from ftps_server.journal import message_ids

HOST = "127.0.0.1"
_FIELD = re.compile(r' ([A-Z][A-Z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def entries(log: str) -> list[dict[str, str]]:
    """Every logged line that carries a MESSAGE_ID, as its fields."""
    out = []
    for line in log.splitlines():
        if " MESSAGE_ID=" not in line:
            continue
        fields = {m.group(1): _unquote(m.group(2)) for m in _FIELD.finditer(line)}
        out.append(fields)
    return out


def of(log: str, message_id: str) -> list[dict[str, str]]:
    return [e for e in entries(log) if e.get("MESSAGE_ID") == message_id]


def wait_for(server: support.ServerProcess, message_id: str, count: int) -> list[dict[str, str]]:
    """The entries with `message_id` once there are `count` of them (bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        found = of(server.log(), message_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def site(pki: support.Pki, tmp_path: Path, start_server: Callable[..., Any]) -> Any:
    cert = pki.server("events", HOST)
    homes = tmp_path / "home"
    users = []
    for user in ("bob", "carol"):
        (homes / user).mkdir(parents=True)
        home = homes / user
        users.append(
            support.section(f"user:{user}", home=home, permissions="elradfmw", password=FAST_HASH)
        )
    port = support.free_port()
    config = support.node_config(
        tmp_path / "events.ini",
        cert,
        *users,
        support.section("log", transfer_log=tmp_path / "xferlog", upload_digest="sha256"),
        addresses=HOST,
        explicit=port,
        tls="require_data_protection = no",
    )
    server = start_server(config)
    return server, port, homes, tmp_path / "xferlog"


def _login(pki: support.Pki, port: int, user: str) -> support.ReusingFTP_TLS:
    ftp = support.explicit_client(pki, HOST, port, timeout=20)
    ftp.login(user, PASSWORD)
    return ftp


def _fetch(ftp: ftplib.FTP, name: str) -> bytes:
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write)
    return got.getvalue()


def test_transfers_file_actions_and_sessions_are_structured(pki: support.Pki, site: Any) -> None:
    server, port, homes, xferlog = site
    a, b, c = os.urandom(100_000), os.urandom(1_300_000), os.urandom(70_001)
    odd = "odd \x1b[2J name.bin"  # a space and an ESC sequence from the client

    bob = _login(pki, port, "bob")
    bob.storbinary("STOR a.bin", io.BytesIO(a))
    bob.storbinary("STOR b.bin", io.BytesIO(b))
    assert _fetch(bob, "a.bin") == a
    bob.storbinary("APPE a.bin", io.BytesIO(c))  # appended: no digest of the whole file
    bob.storbinary(f"STOR {odd}", io.BytesIO(c))
    bob.mkd("d")
    bob.rename("b.bin", "d/b2.bin")
    bob.delete(odd)
    with pytest.raises(ftplib.error_perm):
        bob.rmd("d")  # not empty: a failed action
    bob.quit()

    bob2 = _login(pki, port, "bob")  # a second session of the same user, data in clear
    bob2.prot_c()
    bob2.storbinary("STOR clear.bin", io.BytesIO(c))
    assert _fetch(bob2, "d/b2.bin") == b
    bob2.quit()

    carol = _login(pki, port, "carol")
    carol.storbinary("STOR c.bin", io.BytesIO(c))
    carol.quit()

    disconnects = wait_for(server, message_ids.SESSION_DISCONNECT, 3)
    log = server.log()
    transfers = of(log, message_ids.TRANSFER)
    made = sorted(
        (t["USER"], t["DIRECTION"], t["PATH"], int(t["BYTES"]), t["RESULT"]) for t in transfers
    )
    odd_escaped = "/odd \\x1b[2J name.bin"
    assert made == sorted(
        [
            ("bob", "upload", "/a.bin", len(a), "ok"),
            ("bob", "upload", "/b.bin", len(b), "ok"),
            ("bob", "download", "/a.bin", len(a), "ok"),
            ("bob", "upload", "/a.bin", len(c), "ok"),
            ("bob", "upload", odd_escaped, len(c), "ok"),
            ("bob", "upload", "/clear.bin", len(c), "ok"),
            ("bob", "download", "/d/b2.bin", len(b), "ok"),
            ("carol", "upload", "/c.bin", len(c), "ok"),
        ]
    )
    assert "\x1b" not in log

    # SHA256: STOR over TLS and in clear, never for APPE or a download
    digests = {
        (t["USER"], t["COMMAND"], t["PATH"]): t.get("SHA256")
        for t in transfers
        if t["DIRECTION"] == "upload"
    }
    assert digests[("bob", "STOR", "/a.bin")] == hashlib.sha256(a).hexdigest()
    assert digests[("bob", "STOR", "/b.bin")] == hashlib.sha256(b).hexdigest()
    assert digests[("bob", "STOR", "/clear.bin")] == hashlib.sha256(c).hexdigest()
    assert digests[("carol", "STOR", "/c.bin")] == hashlib.sha256(c).hexdigest()
    assert digests[("bob", "APPE", "/a.bin")] is None
    assert all("SHA256" not in t for t in transfers if t["DIRECTION"] == "download")
    assert all(int(t["DURATION_MS"]) >= 0 for t in transfers)

    # one SESSION_ID per control connection, on its connect, login, transfers and disconnect
    connects = of(log, message_ids.SESSION_CONNECT)
    assert len(connects) == 3 and len({e["SESSION_ID"] for e in connects}) == 3
    assert all(e["REMOTE_ADDR"] == HOST and int(e["REMOTE_PORT"]) > 0 for e in connects)
    logins = of(log, message_ids.LOGIN_OK)
    sessions = {e["SESSION_ID"] for e in connects}
    assert {e["SESSION_ID"] for e in logins} == sessions
    assert {e["SESSION_ID"] for e in of(log, message_ids.SESSION_TLS)} == sessions
    by_session: dict[str, list[dict[str, str]]] = {}
    for t in transfers:
        by_session.setdefault(t["SESSION_ID"], []).append(t)
    assert set(by_session) == sessions
    assert sorted(len(v) for v in by_session.values()) == [1, 2, 5]
    for sid, done in by_session.items():
        (end,) = [e for e in disconnects if e["SESSION_ID"] == sid]
        up = [t for t in done if t["DIRECTION"] == "upload"]
        down = [t for t in done if t["DIRECTION"] == "download"]
        assert int(end["UPLOADS"]) == len(up) and int(end["DOWNLOADS"]) == len(down)
        assert int(end["BYTES_UPLOADED"]) == sum(int(t["BYTES"]) for t in up)
        assert int(end["BYTES_DOWNLOADED"]) == sum(int(t["BYTES"]) for t in down)
        assert len({t["USER"] for t in done}) == 1

    tls = of(log, message_ids.SESSION_TLS)
    assert all(e["TLS_VERSION"].startswith("TLSv1.") and e["TLS_CIPHER"] for e in tls)

    actions = sorted(
        (e["ACTION"], e["PATH"], e.get("NEW_PATH", ""), e["RESULT"])
        for e in of(log, message_ids.FILE_ACTION)
    )
    assert actions == sorted(
        [
            ("mkdir", "/d", "", "ok"),
            ("rename", "/b.bin", "/d/b2.bin", "ok"),
            ("delete", odd_escaped, "", "ok"),
            ("rmdir", "/d", "", "failed"),
        ]
    )
    # pyftpdlib's free-text duplicates are gone
    for duplicate in ("FTP session opened", "FTP session closed", "logged in.", "completed="):
        assert duplicate not in log, duplicate

    # the same transfers in the xferlog file (14.2): 13 fields after the 5-word date
    lines = xferlog.read_text().splitlines()
    assert len(lines) == len(transfers)
    rows = sorted(
        (f[13], f[11], f[8], int(f[7]), f[17], f[9], f[10], f[12], f[14], f[15], f[16])
        for f in (line.split() for line in lines)
    )
    home = {"bob": homes / "bob", "carol": homes / "carol"}

    def row(user: str, direction: str, name: str, size: int) -> tuple[Any, ...]:
        path = str(home[user] / name).replace(" ", "_")
        return (user, direction, path, size, "c", "b", "_", "r", "ftp", "0", "*")

    assert rows == sorted(
        [
            row("bob", "i", "a.bin", len(a)),
            row("bob", "i", "b.bin", len(b)),
            row("bob", "o", "a.bin", len(a)),
            row("bob", "i", "a.bin", len(c)),
            row("bob", "i", "odd_\\x1b[2J_name.bin", len(c)),
            row("bob", "i", "clear.bin", len(c)),
            row("bob", "o", "d/b2.bin", len(b)),
            row("carol", "i", "c.bin", len(c)),
        ]
    )
    for line in lines:
        fields = line.split()  # the date is ctime's: "Mon Nov  3 07:11:11 2026"
        assert len(fields) == 18, line
        assert fields[6] == HOST and int(fields[5]) >= 1


def test_refused_and_failed_transfers_say_so(pki: support.Pki, site: Any) -> None:
    server, port, homes, xferlog = site
    bob = _login(pki, port, "bob")
    reply = support.refused_upload(bob, "STOR refused.bin", b"x" * 1000)
    assert reply.startswith("522"), reply
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        bob.delete("missing.bin")
    bob.quit()
    (transfer,) = wait_for(server, message_ids.TRANSFER, 1)
    assert (transfer["DIRECTION"], transfer["RESULT"], transfer["BYTES"]) == (
        "upload",
        "failed",
        "0",
    )
    assert transfer["REASON"].startswith("522")
    # the 522 reply is said once, by the transfer entry (pyftpdlib's reply line only at debug)
    assert server.log().count("Data connection must resume the TLS session") == 1
    assert "SHA256" not in transfer
    (action,) = of(server.log(), message_ids.FILE_ACTION)
    assert (action["ACTION"], action["RESULT"]) == ("delete", "failed")
    assert action["REASON"].startswith("550")
    (line,) = xferlog.read_text().splitlines()
    assert line.endswith(" bob ftp 0 * i") and " i r " in line
    assert not (homes / "bob" / "refused.bin").exists()


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_packaged_logrotate_rotates_the_transfer_log(
    pki: support.Pki, site: Any, tmp_path: Path
) -> None:
    """The real logrotate with the package's file: the next transfer goes to the new file."""
    server, port, _, xferlog = site
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    shipped = (support.ROOT / "packaging/debian/ftps-server.logrotate").read_text()
    assert "/var/log/ftps-server/xferlog {" in shipped
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        shipped.replace("/var/log/ftps-server/xferlog", str(xferlog)).replace(
            "ftps-server ftps-server", f"{user} {group}"
        )
    )
    bob = _login(pki, port, "bob")
    bob.storbinary("STOR before.bin", io.BytesIO(b"1" * 10))
    wait_for(server, message_ids.TRANSFER, 1)
    run = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    bob.storbinary("STOR after.bin", io.BytesIO(b"2" * 20))
    bob.quit()
    wait_for(server, message_ids.TRANSFER, 2)
    rotated = xferlog.with_name("xferlog.1")
    assert [line.split()[8].rsplit("/", 1)[1] for line in rotated.read_text().splitlines()] == [
        "before.bin"
    ]
    assert [line.split()[8].rsplit("/", 1)[1] for line in xferlog.read_text().splitlines()] == [
        "after.bin"
    ]


def test_no_digest_by_default(pki: support.Pki, tmp_path: Path, start_server: Any) -> None:
    """Without [log] (upload_digest = none) a transfer entry has no SHA256 and no xferlog."""
    config, ports = policy_config(pki, tmp_path)
    server = start_server(config)
    ftp = _login(pki, ports["explicit"], "alice")
    ftp.storbinary("STOR plain.bin", io.BytesIO(b"p" * 5000))
    ftp.quit()
    (transfer,) = wait_for(server, message_ids.TRANSFER, 1)
    assert (transfer["PATH"], transfer["BYTES"], transfer["RESULT"]) == ("/plain.bin", "5000", "ok")
    assert "SHA256" not in transfer
    assert not list(tmp_path.rglob("xferlog*"))


def test_file_action_with_a_line_break_is_withheld(pki: support.Pki, site: Any) -> None:
    """A bare CR in DELE's argument: what follows it may be a pipelined PASS line."""
    server, port, homes, _ = site
    bob = _login(pki, port, "bob")
    bob.sock.sendall(b"DELE x\rPASS Hunter2-pipelined\r\n")  # ftplib refuses to send it
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        bob.getresp()
    bob.sock.sendall(b"MKD e\x1bsc\r\n")  # an ESC is no line break: escaped, not withheld
    assert bob.getresp().startswith("257")
    bob.quit()
    wait_for(server, message_ids.SESSION_DISCONNECT, 1)
    log = server.log()
    assert "Hunter2-pipelined" not in log
    actions = [(e["ACTION"], e["PATH"], e["RESULT"]) for e in of(log, message_ids.FILE_ACTION)]
    assert actions[1] == ("mkdir", "/e\\x1bsc", "ok")
    assert (actions[0][0], actions[0][2]) == ("delete", "failed")
    assert re.fullmatch(r"<\d+ characters withheld: control characters in .*>", actions[0][1])
    assert (homes / "bob" / "e\x1bsc").is_dir()
