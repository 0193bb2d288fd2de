"""What differs between the library versions the package runs on, in one place.

Debian 12 (bookworm) ships python3-cryptography 38.0.4 and python3-pyftpdlib 1.5.7; Debian 13
(trixie) 43.0.0 and 2.0.1; PyPI the newest. Each function here uses the library's own API when
it exists and an equivalent otherwise; drop a fallback once its release is no longer supported.
(pyftpdlib's differences sit with the other pyftpdlib internals, see the layout issue.)
"""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

__all__ = ["load_pem_x509_certificates", "verify_directly_issued_by"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


def load_pem_x509_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order; ValueError when there is none."""
    loader: Any = getattr(x509, "load_pem_x509_certificates", None)
    if loader is not None:  # cryptography >= 39
        return list(loader(data))
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise ValueError("no PEM certificate")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def verify_directly_issued_by(child: x509.Certificate, parent: x509.Certificate) -> None:
    """Raise (ValueError, TypeError or InvalidSignature) unless `parent` signed `child`."""
    method: Any = getattr(child, "verify_directly_issued_by", None)
    if method is not None:  # cryptography >= 40
        method(parent)
        return
    if child.issuer != parent.subject:
        raise ValueError("the issuer name is not the parent's subject")
    key = parent.public_key()
    data, signature, digest = (
        child.tbs_certificate_bytes,
        child.signature,
        child.signature_hash_algorithm,
    )
    if isinstance(key, rsa.RSAPublicKey) and digest is not None:
        # PKCS#1 v1.5 only: an RSA-PSS signature fails here and reads as a broken chain
        key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(key, ec.EllipticCurvePublicKey) and digest is not None:
        key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise TypeError(f"unsupported issuer key type {type(key).__name__}")
