"""tls.Material (certificate bytes read once per reload) and tls_openssl (X25519/P-256/P-384)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

import ftps_server.server.tls as tls
import ftps_server.server.tls_openssl as tls_openssl


def _files(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key, leaf.cert_chain_pems[0].bytes()


def test_material_keeps_the_bytes_read_at_load_time(tmp_path: Path) -> None:
    cert, key, _pem = _files(tmp_path, "a")
    material = tls.Material(cert, key)
    assert material.certfile.startswith("/proc/self/fd/") and material.keyfile is None
    # the files are replaced on disk (a renewal before the reload): the material is not
    cert.write_bytes(b"not a certificate")
    key.write_bytes(b"not a key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(material.certfile, material.keyfile)


def test_material_falls_back_to_the_files_without_memfd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_args: object) -> int:
        raise PermissionError(1, "Operation not permitted")  # a seccomp filter

    monkeypatch.setattr(os, "memfd_create", refused)
    cert, key, _pem = _files(tmp_path, "b")
    material = tls.Material(cert, key)
    assert (material.certfile, material.keyfile) == (str(cert), str(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(material.certfile, material.keyfile)


def test_groups_are_set_through_openssl_on_this_python() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls_openssl.set_groups(ctx) == tls_openssl.GROUPS


def test_groups_fall_back_to_p256_when_openssl_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls_openssl, "_set_with_openssl", lambda _ctx: False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(ctx, "set_groups"):
        pytest.skip("this Python sets groups itself")
    assert tls_openssl.set_groups(ctx) == "prime256v1"


def test_a_wrong_pointer_is_never_used() -> None:
    """The SSL_CTX pointer is trusted only when OpenSSL reads the context's own options
    through it: a pointer into another object fails that check."""
    lib = tls_openssl._libssl()
    if lib is None:
        pytest.skip("no libssl mapped")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls_openssl._ssl_ctx_pointer(lib, ctx) is not None
    ctx.options |= ssl.OP_NO_TICKET
    pointer = tls_openssl._ssl_ctx_pointer(lib, ctx)
    assert pointer is not None
    assert lib.SSL_CTX_get_options(pointer) & ssl.OP_NO_TICKET
