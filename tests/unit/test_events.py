"""events: the fields of every session event, from plain values (no sockets, no pyftpdlib)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from ftps_server.journal import message_ids
from ftps_server.journal.log import record_fields
from ftps_server.pki.certs import fingerprint
from ftps_server.server.events import FileAction, SessionLog, Transfer, transfer_result


@dataclass
class View:
    remote_ip: str = "192.0.2.7"
    listener_name: str = "192.0.2.1:21 explicit"
    username: str = ""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def caught(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="ftps_server.server.events")
    return caplog


def fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [record_fields(r) for r in caplog.records if r.name == "ftps_server.server.events"]


def _transfer(**kw: object) -> Transfer:
    base: dict[str, object] = dict(
        command="STOR",
        upload=True,
        path="/in/x.bin",
        real_path="/srv/ftp/bob/in/x.bin",
        size=5000,
        seconds=0.0204,
        result="ok",
    )
    base.update(kw)
    return Transfer(**base)  # type: ignore[arg-type]


def test_transfer_result_names() -> None:
    assert transfer_result(True, "226 Transfer complete.") == "ok"
    assert transfer_result(False, "") == "aborted"  # ABOR, or the control connection went
    assert transfer_result(False, "426 Upload incomplete: reset; 10 bytes received") == "aborted"
    assert transfer_result(False, "421 Data connection timed out.") == "aborted"
    for reply in ("522 Data connection must resume", "452 Cannot write file", "553 Cannot open"):
        assert transfer_result(False, reply) == "failed", reply


def test_transfer_fields() -> None:
    t = _transfer(tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384", sha256="ab" * 32)
    assert t.fields() == {
        "DIRECTION": "upload",
        "PATH": "/in/x.bin",
        "BYTES": "5000",
        "DURATION_MS": "20",
        "RESULT": "ok",
        "COMMAND": "STOR",
        "TLS_VERSION": "TLSv1.3",
        "TLS_CIPHER": "TLS_AES_256_GCM_SHA384",
        "SHA256": "ab" * 32,
    }
    down = _transfer(command="RETR", upload=False, result="aborted", reply="426 Transfer aborted.")
    assert down.fields()["DIRECTION"] == "download"
    assert down.fields()["REASON"] == "426 Transfer aborted."
    # a failed upload (e.g. a write error) says nothing about what the file holds
    assert "SHA256" not in _transfer(result="failed", sha256="ab" * 32).fields()
    assert _transfer(result="aborted", sha256="cd" * 32).fields()["SHA256"] == "cd" * 32


def test_client_text_is_escaped() -> None:
    t = _transfer(path="/a\nFORGED MESSAGE_ID=x\x1b[2J\u202e\udcff.bin")
    path = t.fields()["PATH"]
    assert "\n" not in path and "\x1b" not in path and "\u202e" not in path
    assert path == "/a\\x0aFORGED MESSAGE_ID=x\\x1b[2J\\u202e\\udcff.bin"
    path.encode("utf-8")  # the journal takes it as it is


def test_session_entries_share_one_session_id(caught: pytest.LogCaptureFixture) -> None:
    view, clock = View(), Clock()
    session = SessionLog(view, clock=clock)
    other = SessionLog(View(), clock=clock)
    assert session.id != other.id and len(session.id) == 16
    session.connected(40123)
    view.username = "bob"
    session.transfer(_transfer())
    session.transfer(_transfer(command="RETR", upload=False, size=7))
    session.transfer(_transfer(size=3, result="aborted"))
    clock.now += 2.5
    session.disconnected()
    session.disconnected()  # once only (close() may run twice)
    got = fields(caught)
    assert [f["MESSAGE_ID"] for f in got] == [
        message_ids.SESSION_CONNECT,
        message_ids.TRANSFER,
        message_ids.TRANSFER,
        message_ids.TRANSFER,
        message_ids.SESSION_DISCONNECT,
    ]
    assert {f["SESSION_ID"] for f in got} == {session.id}
    assert got[0]["REMOTE_PORT"] == "40123" and "USER" not in got[0]
    assert got[0]["REMOTE_ADDR"] == "192.0.2.7" and got[0]["LISTENER"] == "192.0.2.1:21 explicit"
    assert all(f["USER"] == "bob" for f in got[1:])
    end = got[-1]
    assert (end["UPLOADS"], end["DOWNLOADS"]) == ("2", "1")
    assert (end["BYTES_UPLOADED"], end["BYTES_DOWNLOADED"]) == ("5003", "7")
    assert end["DURATION_MS"] == "2500"
    levels = [r.levelno for r in caught.records]
    assert levels[3] == logging.WARNING  # the aborted transfer


def test_no_disconnect_without_connect(caught: pytest.LogCaptureFixture) -> None:
    SessionLog(View()).disconnected()  # a connection that failed inside pyftpdlib's __init__
    assert fields(caught) == []


def test_tls_established_names_the_client_certificate(caught: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("bob@example.test", common_name="bob\nFORGED")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    session = SessionLog(View())
    session.tls_established("TLSv1.3", "TLS_AES_128_GCM_SHA256", False, None)
    session.tls_established("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", True, cert)
    plain, with_cert = fields(caught)
    assert plain["MESSAGE_ID"] == message_ids.SESSION_TLS
    assert (plain["TLS_VERSION"], plain["TLS_RESUMED"]) == ("TLSv1.3", "no")
    assert "CLIENT_CERT_SUBJECT" not in plain
    assert with_cert["TLS_RESUMED"] == "yes"
    assert with_cert["CLIENT_CERT_FINGERPRINT"] == fingerprint(cert)
    assert "CN=bob\\x0aFORGED" in with_cert["CLIENT_CERT_SUBJECT"]


def test_tls_failed_control_and_data(caught: pytest.LogCaptureFixture) -> None:
    session = SessionLog(View())
    session.tls_failed("no shared cipher")
    session.tls_failed("session not resumed", data=True, data_peer="192.0.2.8")
    control, data = fields(caught)
    assert control["MESSAGE_ID"] == data["MESSAGE_ID"] == message_ids.SESSION_TLS_FAILED
    assert (control["CHANNEL"], control["REASON"]) == ("control", "no shared cipher")
    assert (data["CHANNEL"], data["DATA_REMOTE_ADDR"]) == ("data", "192.0.2.8")
    assert caught.records[0].getMessage().startswith("TLS handshake from 192.0.2.7 on ")


def test_file_commands(caught: pytest.LogCaptureFixture) -> None:
    session = SessionLog(View(username="bob"))
    assert not session.command("CWD", "/x", 250, "ok")  # not a file action: pyftpdlib logs it
    assert session.command("MKD", "/d", 257, '"/d" directory created.')
    assert session.command("RNFR", "/a", 350, "Ready for destination name.")  # no entry yet
    assert session.command("RNTO", "/d/b", 250, "Renaming ok.")
    assert session.command("RNTO", "/c", 503, "Bad sequence of commands: use RNFR first.")
    assert session.command("RNFR", "/nope", 550, "No such file or directory.")
    assert session.command("DELE", "/x", 550, "No such file or directory.")
    assert session.command("XRMD", "/d", 250, "Directory removed.")
    got = [
        (f["ACTION"], f["PATH"], f.get("NEW_PATH"), f["RESULT"], f.get("REASON"))
        for f in fields(caught)
    ]
    assert got == [
        ("mkdir", "/d", None, "ok", None),
        ("rename", "/a", "/d/b", "ok", None),
        ("rename", "", "/c", "failed", "503 Bad sequence of commands: use RNFR first."),
        ("rename", "/nope", None, "failed", "550 No such file or directory."),
        ("delete", "/x", None, "failed", "550 No such file or directory."),
        ("rmdir", "/d", None, "ok", None),
    ]
    assert all(f["MESSAGE_ID"] == message_ids.FILE_ACTION for f in fields(caught))
    assert FileAction("delete", "/x", 250).ok and not FileAction("delete", "/x", 550).ok


def test_transfer_writes_the_xferlog_line(tmp_path: Path) -> None:
    xferlog = tmp_path / "xferlog"
    session = SessionLog(View(username="bob"), transfer_log=xferlog)
    session.transfer(_transfer(path="/in/a b.bin", real_path="/srv/ftp/bob/in/a b.bin"))
    session.transfer(_transfer(upload=False, command="RETR", binary=False, result="aborted"))
    first, second = xferlog.read_text().splitlines()
    assert first.split(" ")[-13:] == [
        "1",  # whole seconds, at least 1
        "192.0.2.7",
        "5000",
        "/srv/ftp/bob/in/a_b.bin",
        "b",
        "_",
        "i",
        "r",
        "bob",
        "ftp",
        "0",
        "*",
        "c",
    ]
    assert second.endswith(" a _ o r bob ftp 0 * i")


def test_no_xferlog_when_off(tmp_path: Path, caught: pytest.LogCaptureFixture) -> None:
    SessionLog(View()).transfer(_transfer())
    assert list(tmp_path.iterdir()) == []


def test_fields_for_other_log_calls() -> None:
    view = View()
    session = SessionLog(view)
    assert session.fields() == {
        "fields": {
            "SESSION_ID": session.id,
            "REMOTE_ADDR": "192.0.2.7",
            "LISTENER": "192.0.2.1:21 explicit",
        }
    }
    view.username = "bob"
    assert session.fields()["fields"]["USER"] == "bob"
