"""certs: loading, key checks and the condition of a certificate section, on real PEM files."""

from __future__ import annotations

import datetime as dt
import grp
import os
from pathlib import Path

import pytest
import support
import trustme
from cryptography.hazmat.primitives import serialization

import ftps_server.pki.certs as certs
from ftps_server.config.model import CertificateEntry


def _entry(files: support.CertFiles) -> CertificateEntry:
    return CertificateEntry("main", files.cert, files.key, ("127.0.0.1",))


def _own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


def test_good_certificate(pki: support.Pki) -> None:
    files = pki.server("good", "127.0.0.1", days=30)
    status = certs.inspect_entry(_entry(files))
    assert status.condition == "ok" and status.usable and status.problem is None
    assert status.info is not None and status.info.fingerprint == files.fingerprint
    assert status.info.sans == ("IP:127.0.0.1",)
    assert status.info.key_type.startswith("EC") and status.chain_length == 1
    assert 28 <= status.info.days_left(certs.utcnow()) <= 30


@pytest.mark.parametrize(("days", "condition"), [(-1, "expired"), (10, "ok")])
def test_expiry(pki: support.Pki, days: int, condition: str) -> None:
    status = certs.inspect_entry(_entry(pki.server(f"exp{days}", days=days)))
    assert status.condition == condition


def test_not_yet_valid(pki: support.Pki) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    status = certs.inspect_entry(_entry(pki.server("future", days=30, not_before=later)))
    assert status.condition == "invalid" and "not valid before" in (status.problem or "")


def test_missing_files(pki: support.Pki, tmp_path: Path) -> None:
    files = pki.server("gone")
    status = certs.inspect_entry(CertificateEntry("x", tmp_path / "no.pem", files.key))
    assert status.condition == "missing" and "does not exist" in (status.problem or "")
    status = certs.inspect_entry(CertificateEntry("x", files.cert, tmp_path / "no.key"))
    assert status.condition == "missing" and "no.key" in (status.problem or "")


def test_key_mismatch(pki: support.Pki) -> None:
    a, b = pki.server("a1"), pki.server("b1")
    status = certs.inspect_entry(CertificateEntry("x", a.cert, b.key))
    assert status.condition == "missing" and "does not match" in (status.problem or "")


def test_world_readable_key_refused(pki: support.Pki) -> None:
    files = pki.server("world")
    files.key.chmod(0o644)
    status = certs.inspect_entry(_entry(files))
    assert not status.usable and "accessible by others" in (status.problem or "")


def test_group_readable_key_only_for_the_service_group(pki: support.Pki) -> None:
    files = pki.server("grp")
    files.key.chmod(0o640)
    refused = certs.inspect_entry(_entry(files), key_group="ftps-server-none")
    assert not refused.usable
    assert f"group {_own_group()!r}" in (refused.problem or "")
    allowed = certs.inspect_entry(_entry(files), key_group=_own_group())
    assert allowed.usable


def test_encrypted_key_refused(pki: support.Pki) -> None:
    files = pki.server("enc")
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    status = certs.inspect_entry(_entry(files))
    assert "encrypted" in (status.problem or "")


def test_broken_chain_is_invalid(pki: support.Pki, tmp_path: Path) -> None:
    files = pki.server("chain")
    stranger = trustme.CA().cert_pem.bytes()
    files.cert.write_bytes(files.pem + stranger)
    status = certs.inspect_entry(_entry(files))
    assert status.condition == "invalid" and "chain is broken" in (status.problem or "")


def test_intermediate_chain_is_ok(tmp_path: Path) -> None:
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = inter.issue_cert("127.0.0.1")
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    status = certs.inspect_entry(CertificateEntry("x", cert, key))
    assert status.usable and status.chain_length == 2


def test_garbage_is_invalid_and_never_quotes_the_key(pki: support.Pki) -> None:
    files = pki.server("garbage")
    secret_line = files.key.read_text().splitlines()[1]
    files.key.write_text("-----BEGIN PRIVATE KEY-----\n" + secret_line + "\n")
    status = certs.inspect_entry(_entry(files))
    assert not status.usable and secret_line not in (status.problem or "")
    files.cert.write_text("not a certificate\n")
    status = certs.inspect_entry(_entry(files))
    assert status.condition == "invalid" and "no PEM certificate" in (status.problem or "")
