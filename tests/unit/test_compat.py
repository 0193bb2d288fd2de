"""The fallbacks of ftps_server.pki.compat (Debian 12's cryptography 38 lacks the APIs) give the
same answers as the library's own functions they stand in for."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import ftps_server.pki.compat as compat


class _Old:
    """A certificate as cryptography 38 shows it: no verify_directly_issued_by."""

    def __init__(self, cert: x509.Certificate) -> None:
        self._cert = cert

    def __getattr__(self, name: str) -> Any:
        if name == "verify_directly_issued_by":
            raise AttributeError(name)
        return getattr(self._cert, name)


def _chain() -> list[x509.Certificate]:
    leaf = trustme.CA().create_child_ca().issue_cert("a.example.test")
    return [x509.load_pem_x509_certificate(p.bytes()) for p in leaf.cert_chain_pems]


def test_pem_bundle_fallback_matches_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = _chain()
    bundle = b"junk\n" + b"\n".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    monkeypatch.delattr(x509, "load_pem_x509_certificates", raising=False)
    assert compat.load_pem_x509_certificates(bundle) == chain
    with pytest.raises(ValueError):
        compat.load_pem_x509_certificates(b"no certificate here\n")


def test_issuer_fallback_accepts_the_real_parent_only() -> None:
    leaf, parent = _chain()
    compat.verify_directly_issued_by(_Old(leaf), parent)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # wrong name
        compat.verify_directly_issued_by(_Old(leaf), leaf)  # type: ignore[arg-type]
    # Same subject name as the parent, another key: the signature decides.
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(parent.subject)
        .issuer_name(parent.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidSignature):
        compat.verify_directly_issued_by(_Old(leaf), forged)  # type: ignore[arg-type]
    if hasattr(leaf, "verify_directly_issued_by"):
        with pytest.raises(InvalidSignature):  # the library agrees
            leaf.verify_directly_issued_by(forged)
