"""The pending-certificate store and `ftps-server pending-certs`."""

from __future__ import annotations

import datetime as dt
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from auth_fakes import load, make_pki, write_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ftps_server.server.pending as pending
from ftps_server import cli
from ftps_server.pki.certs import fingerprint
from ftps_server.server.pending import PendingStore, suggestion

T0 = dt.datetime(2026, 11, 27, 2, 0, tzinfo=dt.UTC)


def test_record_deduplicates_and_is_private(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    store = PendingStore(tmp_path / "state")
    assert store.record("dave", pki.stranger, "127.0.0.1", "l1", T0)
    assert not store.record("dave", pki.stranger, "127.0.0.2", "l2", T0 + dt.timedelta(1))
    assert store.record("carol", pki.stranger, "127.0.0.1", "l1", T0)
    store.flush()
    entries = PendingStore(tmp_path / "state").load()  # as written to the file
    assert [(e.user, e.attempts) for e in entries] == [("carol", 1), ("dave", 2)]
    dave = entries[1]
    assert dave.first_seen == "2026-11-27T02:00:00+00:00"
    assert dave.last_seen == "2026-11-28T02:00:00+00:00" and dave.peer == "127.0.0.2"
    assert dave.issuer.startswith("OU=Testing CA") and dave.common_name == "alice-laptop"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640


def test_stores_of_two_workers_keep_each_others_entries(tmp_path: Path) -> None:
    """`[server] workers = 2`: each worker has its own store on the same file; what one
    recorded survives the other's write, and what one pruned is not written back by it."""
    pki = make_pki(tmp_path)
    first, second = PendingStore(tmp_path / "state"), PendingStore(tmp_path / "state")
    first.record("dave", pki.stranger, "127.0.0.2", "l1", T0)
    first.flush()
    second.record("carol", pki.stranger, "127.0.0.3", "l1", T0 + dt.timedelta(1))
    second.flush()
    first.record("dave", pki.stranger, "127.0.0.2", "l1", T0 + dt.timedelta(2))
    first.flush()
    entries = PendingStore(tmp_path / "state").load()
    assert [(e.user, e.attempts) for e in entries] == [("carol", 1), ("dave", 2)]
    pinned = fingerprint(pki.stranger)
    cfg = type("Cfg", (), {"users": [type("U", (), {"certificates": (pinned,)})()]})()
    assert first.prune(cfg) == 1  # type: ignore[arg-type]
    first.flush()  # dave is not written back; carol, recorded by the other worker, stays
    assert [e.user for e in PendingStore(tmp_path / "state").load()] == ["carol"]
    assert second.prune(cfg) >= 1  # type: ignore[arg-type]  # every worker prunes on reload
    second.flush()
    assert PendingStore(tmp_path / "state").load() == []


def test_corrupt_file_reads_as_empty(tmp_path: Path) -> None:
    store = PendingStore(tmp_path)
    store.path.write_text("{not json")
    assert store.load() == []


def test_suggestion_keeps_existing_pins(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    cfg = load(write_config(tmp_path, pki))
    store = PendingStore(cfg.server.state_dir)
    store.record("alice", pki.stranger, "127.0.0.1", "l", T0)
    hint = suggestion(cfg, store.load()[0])
    new = fingerprint(pki.stranger)
    old = fingerprint(pki.alice)
    assert hint["section"] == "[user:alice]"
    assert hint["config_line"] == f"certificates = sha256:{old}, sha256:{new}"
    assert hint["ansible"] == {
        "ftps_server_users": [{"name": "alice", "certificates": [f"sha256:{old}", f"sha256:{new}"]}]
    }


def test_cli_lists_and_line_registers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path)
    path = write_config(tmp_path, pki)
    cfg = load(path)
    store = PendingStore(cfg.server.state_dir)
    store.record("dave", pki.stranger, "127.0.0.1", "l", T0)
    store.flush()
    assert cli.main(["pending-certs", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"fingerprint: sha256:{fingerprint(pki.stranger)}" in text
    line = next(x.strip() for x in text.splitlines() if x.strip().startswith("certificates ="))
    # paste the line into dave's section: the config loads and pins the certificate
    original = path.read_text()
    start = original.index("[user:dave]")
    end = original.index("[user:erin]")
    section = original[start:end]
    new_section = "\n".join(
        line if x.startswith("certificates =") else x for x in section.splitlines()
    )
    path.write_text(original[:start] + new_section + "\n\n" + original[end:])
    dave = next(u for u in load(path).users if u.name == "dave")
    assert fingerprint(pki.stranger) in dave.certificates
    assert cli.main(["pending-certs", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no pending client certificates"


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path)
    path = write_config(tmp_path, pki)
    store = PendingStore(load(path).server.state_dir)
    store.record("dave", pki.stranger, "::1", "l", T0)
    store.flush()
    assert cli.main(["pending-certs", "--config", str(path), "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["user"] == "dave" and item["fingerprint"] == fingerprint(pki.stranger)
    assert item["common_name"] == "alice-laptop"
    assert item["config_line"].startswith("certificates = sha256:11:11")


# --- issue 19.3: client-chosen text, and the store off the event loop --------------------

FORGED = f"[user:alice]\n               certificates = sha256:{':'.join(['AA'] * 4)}"


def _hostile(pki: Any) -> x509.Certificate:
    """A certificate the client CA signed whose names forge a `config:` block and retitle
    the terminal (ESC ] 0; ... BEL), as a client with such a certificate could."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "m\n  config:      [user:alice]"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "\x1b]0;pwned\x07\r\x1b[2J"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bidi \u202e gnp.exe"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - dt.timedelta(days=1))
        .not_valid_after(T0 + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )


def test_hostile_names_are_escaped_and_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    path = write_config(tmp_path, pki)
    store = PendingStore(load(path).server.state_dir)
    store.record("dave", _hostile(pki), "127.0.0.1", "l", T0)
    store.flush()
    assert cli.main(["pending-certs", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert not any(c in text for c in "\x1b\x07\r\u202e")
    lines = text.splitlines()
    assert lines[0].startswith("user dave: CN=m\\x0a  config:      [user:alice] (")
    assert [x for x in lines if x.lstrip().startswith("config:")] == ["  config:      [user:dave]"]
    assert "pwned\\x07\\x0d\\x1b[2J" in text and "\\u202e" in text
    assert any(x.startswith("  WARNING:") and "control characters" in x for x in lines)
    assert cli.main(["pending-certs", "--config", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\u202e")
    (item,) = json.loads(out)
    assert item["suspicious"] is True and item["common_name"].startswith("m\n")


def test_plain_entry_is_not_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path)
    path = write_config(tmp_path, pki)
    store = PendingStore(load(path).server.state_dir)
    store.record("dave", pki.stranger, "127.0.0.1", "l", T0)
    store.flush()
    assert cli.main(["pending-certs", "--config", str(path)]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_record_is_bounded_and_coalesced_off_the_caller(tmp_path: Path) -> None:
    """A flood of failed certificate logins: no disk write per login, a bounded table."""
    pki = make_pki(tmp_path)
    store = PendingStore(tmp_path / "state", write_interval=3600)
    store.record("u0", pki.stranger, "127.0.0.1", "l", T0)
    deadline = time.monotonic() + 10
    while not store.path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(PendingStore(tmp_path / "state").load()) == 1  # the worker wrote it at once
    first = store.path.stat()
    for i in range(1, 1200):  # within one write interval: nothing more reaches the disk
        store.record(f"u{i}", pki.stranger, "127.0.0.1", "l", T0 + dt.timedelta(seconds=i))
    assert (store.path.stat().st_ino, store.path.stat().st_mtime_ns) == (
        first.st_ino,
        first.st_mtime_ns,
    )
    assert len(store.load()) == pending.MAX_ENTRIES  # bounded in memory, oldest gone
    assert store.load()[0].user == f"u{1200 - pending.MAX_ENTRIES}"
    store.flush()
    on_disk = PendingStore(tmp_path / "state").load()
    assert len(on_disk) == pending.MAX_ENTRIES
    assert store.path.stat().st_size < pending.MAX_ENTRIES * 4 * pending.MAX_TEXT


def test_ill_typed_entries_are_skipped(tmp_path: Path) -> None:
    store = PendingStore(tmp_path)
    good = {
        "user": "dave", "fingerprint": "AA", "common_name": None, "subject": "s", "issuer": "i",
        "first_seen": "t", "last_seen": "t", "peer": "p", "listener": "l", "attempts": 1,
    }  # fmt: skip
    bad = [{**good, "attempts": "many"}, {**good, "subject": None}, {**good, "x": 1}, "str"]
    store.path.write_text(json.dumps({"certificates": [*bad, good]}))
    assert [e.user for e in store.load()] == ["dave"]
