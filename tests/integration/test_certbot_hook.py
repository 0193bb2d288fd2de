"""The certbot deploy hook (issue 13.8), run as certbot runs it, against a fake lineage made
at test time: a good renewal replaces the section's files (owner, mode), a broken one leaves
them byte for byte. (This machine has no systemd: the reload is the system test's part.)"""

from __future__ import annotations

import datetime as dt
import grp
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftps import FAST_HASH

HOOK = support.ROOT / "packaging" / "certbot-deploy-hook"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hook chowns files to root")


def _setup(pki: support.Pki, tmp_path: Path) -> tuple[Path, support.CertFiles]:
    live = pki.server("live", "127.0.0.1")
    tls = tmp_path / "tls"
    tls.mkdir()
    cert, key = tls / "ftp.example.test.pem", tls / "ftp.example.test.key"
    cert.write_bytes(live.cert.read_bytes())
    key.write_bytes(live.key.read_bytes())
    key.chmod(0o600)
    group = grp.getgrgid(0).gr_name
    config = support.write_config(
        tmp_path / "ftps.ini",
        f"""
        [server]
        addresses = 127.0.0.1
        state_dir = {tmp_path}/state
        root = {tmp_path}/home
        key_group = {group}
        [certificate:ftp.example.test]
        cert = {cert}
        key = {key}
        default = yes
        [user:alice]
        password = {FAST_HASH}
        """,
    )
    return config, live


def _lineage(tmp_path: Path, name: str, leaf: Any, key_of: Any = None) -> Path:
    lineage = tmp_path / "letsencrypt" / "live" / name
    lineage.mkdir(parents=True, exist_ok=True)
    (lineage / "fullchain.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    (lineage / "privkey.pem").write_bytes((key_of or leaf).private_key_pem.bytes())
    return lineage


def _hook(config: Path, lineage: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(support.ROOT),
        "RENEWED_LINEAGE": str(lineage),
        "FTPS_SERVER_CONFIG": str(config),
    }
    return subprocess.run(
        ["python3", str(HOOK)], env=env, capture_output=True, text=True, timeout=60
    )


def test_good_renewal_is_installed_with_owner_and_mode(pki: support.Pki, tmp_path: Path) -> None:
    config, _ = _setup(pki, tmp_path)
    renewed = pki.ca.issue_cert("127.0.0.1", "ftp.example.test")
    proc = _hook(config, _lineage(tmp_path, "ftp.example.test", renewed))
    assert proc.returncode == 0, proc.stderr
    assert "installed for [certificate:ftp.example.test]" in proc.stdout
    tls = tmp_path / "tls"
    chain = b"".join(p.bytes() for p in renewed.cert_chain_pems)
    assert (tls / "ftp.example.test.pem").read_bytes() == chain
    assert (tls / "ftp.example.test.key").read_bytes() == renewed.private_key_pem.bytes()
    key_stat = (tls / "ftp.example.test.key").stat()
    assert (key_stat.st_uid, key_stat.st_gid, key_stat.st_mode & 0o777) == (0, 0, 0o640)
    assert (tls / "ftp.example.test.pem").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tls.iterdir()) == ["ftp.example.test.key", "ftp.example.test.pem"]


@pytest.mark.parametrize("broken", ["mismatched-key", "expired", "garbage-chain", "unknown-name"])
def test_broken_renewal_leaves_the_old_files(pki: support.Pki, tmp_path: Path, broken: str) -> None:
    config, _ = _setup(pki, tmp_path)
    tls = tmp_path / "tls"
    before = {p.name: p.read_bytes() for p in tls.iterdir()}
    now = dt.datetime.now(dt.UTC)
    good, other = pki.ca.issue_cert("127.0.0.1"), pki.ca.issue_cert("127.0.0.1")
    name = "ftp.example.test"
    if broken == "mismatched-key":
        lineage, reason = _lineage(tmp_path, name, good, other), "does not match certificate"
    elif broken == "expired":
        old = pki.ca.issue_cert(
            "127.0.0.1",
            not_before=now - dt.timedelta(days=91),
            not_after=now - dt.timedelta(days=1),
        )
        lineage, reason = _lineage(tmp_path, name, old), "expired on"
    elif broken == "garbage-chain":
        lineage, reason = _lineage(tmp_path, name, good), "holds no PEM certificate"
        (lineage / "fullchain.pem").write_text("not a certificate\n")
    else:
        lineage, reason = _lineage(tmp_path, "other.example.test", good), "no [certificate:other"
    proc = _hook(config, lineage)
    assert proc.returncode != 0, proc.stdout
    assert reason in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == before  # no leftovers either
    assert good.private_key_pem.bytes().decode().splitlines()[2] not in proc.stdout + proc.stderr
