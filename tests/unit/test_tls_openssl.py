"""tls.Material (certificate bytes read once per reload) and tls_openssl (X25519/P-256/P-384)."""

from __future__ import annotations

import contextlib
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


def _handshake(server_ctx: ssl.SSLContext, ca: trustme.CA) -> ssl.SSLObject:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="ftp.example")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert server.version() is not None
    return client


def test_a_parsed_chain_serves_the_whole_chain(tmp_path: Path) -> None:
    """A context given the chain parsed once (no load_cert_chain) presents leaf and
    intermediate and handshakes with a client that trusts only the root."""
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("ftp.example")
    pem = leaf.private_key_and_cert_chain_pem.bytes()
    chain = tls_openssl.parse_chain(pem)
    assert (
        chain is not None and len(chain.certs) == 2
    )  # leaf, intermediate (trustme omits the root)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls_openssl.use_chain(ctx, chain)
    client = _handshake(ctx, ca)
    peer = client.getpeercert(binary_form=True)
    assert peer == ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def test_material_gives_contexts_the_parsed_chain_and_they_outlive_it(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("ftp.example")
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    material = tls.Material(cert, key)
    assert material.parsed is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls_openssl.use_chain(ctx, material.parsed)
    del material  # a reload drops the generation: the context keeps its own references
    _handshake(ctx, ca)


def test_an_encrypted_or_foreign_key_is_not_used(tmp_path: Path) -> None:
    """An encrypted key is never parsed here (no password prompt on a terminal); a key
    that does not belong to the certificate is refused by OpenSSL, and load_cert_chain
    (the fallback) then reports it as before."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    leaf = trustme.CA().issue_cert("ftp.example")
    other = ec.generate_private_key(ec.SECP256R1())
    locked = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    certs = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    assert tls_openssl.parse_chain(locked + certs) is None
    foreign = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = tls_openssl.parse_chain(foreign + certs)
    assert chain is not None
    assert not tls_openssl.use_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain)
