"""The TLS record engine without sockets: a client SSLObject and the engine trade bytes."""

from __future__ import annotations

import ssl

import pytest
import trustme

from ftps_server.server.tls_engine import (
    TlsEngine,
    TlsState,
    describe_ssl_error,
    require_close_notify,
)

IGNORE_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA, *, strict: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("ftp.example.com").configure_cert(ctx)
    if strict:
        require_close_notify(ctx)
    return ctx


class Client:
    def __init__(self, ca: trustme.CA) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(ctx)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="ftp.example.com")


def _pump(client: Client, engine: TlsEngine) -> None:
    """Move every byte both ways once."""
    data = client.outgoing.read()
    if data:
        engine.feed(data)
    while engine.pending_out:
        client.incoming.write(engine.take(4096))


def _established(ca: trustme.CA, context: ssl.SSLContext | None = None) -> tuple[Client, TlsEngine]:
    client, engine = Client(ca), TlsEngine()
    engine.begin()
    engine.sslobj = engine.wrap(context or _server_context(ca))
    for _ in range(10):
        client_done = engine_done = False
        try:
            client.tls.do_handshake()
            client_done = True
        except ssl.SSLWantReadError:
            pass
        _pump(client, engine)
        engine_done = engine.step(engine.sslobj.do_handshake)
        _pump(client, engine)
        if client_done and engine_done:
            engine.set_state(TlsState.ESTABLISHED)
            return client, engine
    raise AssertionError("handshake did not finish")


def test_handshake_and_data_both_ways(ca: trustme.CA) -> None:
    client, engine = _established(ca)
    buffer = memoryview(bytearray(100))
    assert engine.read_into(buffer) is None  # no record yet: feed more
    client.tls.write(b"STOR x\r\n")
    _pump(client, engine)
    assert engine.read_into(buffer) == 8 and bytes(buffer[:8]) == b"STOR x\r\n"
    assert engine.write(b"150 ok\r\n") == 8
    _pump(client, engine)
    assert client.tls.read(100) == b"150 ok\r\n"


def test_close_notify_is_a_clean_end(ca: trustme.CA) -> None:
    client, engine = _established(ca)
    with pytest.raises(ssl.SSLWantReadError):
        client.tls.unwrap()
    _pump(client, engine)
    assert engine.read_into(memoryview(bytearray(10))) == 0 and engine.close_notify


def test_eof_without_close_notify_is_not(ca: trustme.CA) -> None:
    _client, engine = _established(ca)
    engine.feed(b"")
    assert engine.peer_eof
    assert engine.read_into(memoryview(bytearray(10))) == 0 and not engine.close_notify


@pytest.mark.skipif(not IGNORE_EOF, reason="this ssl module has no OP_IGNORE_UNEXPECTED_EOF")
def test_a_context_that_ignores_unexpected_eof_is_made_strict(ca: trustme.CA) -> None:
    # what Python 3.11.0-3.11.3 (Debian 12) does to every new context
    lax = _server_context(ca, strict=False)
    lax.options |= IGNORE_EOF
    _, engine = _established(ca, lax)
    engine.feed(b"")
    assert engine.read_into(memoryview(bytearray(10))) == 0 and engine.close_notify  # the hazard
    strict = _server_context(ca, strict=False)
    strict.options |= IGNORE_EOF
    require_close_notify(strict)
    assert not strict.options & IGNORE_EOF
    _, engine = _established(ca, strict)
    engine.feed(b"")
    assert engine.read_into(memoryview(bytearray(10))) == 0 and not engine.close_notify


def test_ccc_unwrap_waits_for_the_peer_then_keeps_what_follows(ca: trustme.CA) -> None:
    client, engine = _established(ca)
    engine.set_state(TlsState.CLOSING)
    assert engine.sslobj is not None
    assert not engine.step(engine.sslobj.unwrap)  # our close_notify out, the peer's awaited
    _pump(client, engine)
    client.tls.unwrap()  # the client answers with its own
    engine.feed(client.outgoing.read() + b"PWD\r\n")  # clear text right behind it
    assert engine.step(engine.sslobj.unwrap)
    assert engine.leftover() == b"PWD\r\n"
    engine.drop()
    assert engine.state is TlsState.PLAIN and engine.sslobj is None


def test_illegal_transitions_raise() -> None:
    engine = TlsEngine()
    with pytest.raises(RuntimeError, match="plain -> established"):
        engine.set_state(TlsState.ESTABLISHED)
    engine.begin()
    with pytest.raises(RuntimeError, match="handshake -> closing"):
        engine.set_state(TlsState.CLOSING)


def test_failed_handshake_is_described(ca: trustme.CA) -> None:
    engine = TlsEngine()
    engine.begin()
    engine.sslobj = engine.wrap(_server_context(ca))
    engine.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ssl.SSLError) as raised:
        engine.step(engine.sslobj.do_handshake)
    assert describe_ssl_error(raised.value) in ("wrong version number", "http request")
