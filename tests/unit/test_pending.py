"""The pending-certificate store and `ftps-server pending-certs`."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from auth_fakes import load, make_pki, write_config

import ftps_server.config.model as config
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
    entries = store.load()
    assert [(e.user, e.attempts) for e in entries] == [("carol", 1), ("dave", 2)]
    dave = entries[1]
    assert dave.first_seen == "2026-11-27T02:00:00+00:00"
    assert dave.last_seen == "2026-11-28T02:00:00+00:00" and dave.peer == "127.0.0.2"
    assert dave.issuer.startswith("OU=Testing CA") and dave.common_name == "alice-laptop"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640


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
    PendingStore(cfg.server.state_dir).record("dave", pki.stranger, "127.0.0.1", "l", T0)
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
    dave = next(u for u in config.load(path).users if u.name == "dave")
    assert fingerprint(pki.stranger) in dave.certificates
    assert cli.main(["pending-certs", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no pending client certificates"


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path)
    path = write_config(tmp_path, pki)
    PendingStore(load(path).server.state_dir).record("dave", pki.stranger, "::1", "l", T0)
    assert cli.main(["pending-certs", "--config", str(path), "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["user"] == "dave" and item["fingerprint"] == fingerprint(pki.stranger)
    assert item["common_name"] == "alice-laptop"
    assert item["config_line"].startswith("certificates = sha256:11:11")
