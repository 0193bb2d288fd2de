"""The server's TLS contexts refuse to read a truncated stream as a clean end."""

from __future__ import annotations

import ssl
import types
from pathlib import Path

import pytest
import trustme

from ftps_server.config.model import Config
from ftps_server.server import tls

IGNORE_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


@pytest.mark.skipif(not IGNORE_EOF, reason="this ssl module has no OP_IGNORE_UNEXPECTED_EOF")
def test_contexts_clear_ignore_unexpected_eof(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11.0-3.11.3 (Debian 12) sets the option on every new context: an upload cut
    short would then end like one closed with close_notify (226 instead of 426)."""

    def lax_context(protocol: int) -> ssl.SSLContext:  # what Debian 12's Python hands out
        ctx = ssl.SSLContext(protocol)
        ctx.options |= IGNORE_EOF
        return ctx

    leaf = trustme.CA().issue_cert("ftp.example.com")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    monkeypatch.setattr(
        tls, "ssl", types.SimpleNamespace(**{**vars(ssl), "SSLContext": lax_context})
    )
    ctx = tls._new_context(
        Config(path=tmp_path / "x.ini"), tls.Material(cert, key), ssl.CERT_NONE, None, None
    )
    assert not ctx.options & IGNORE_EOF
