"""Control connections share a TLS context and are kept apart by their binding (tls.py).

Real OpenSSL handshakes over memory BIOs between Python's ssl client and the server's own
`SessionTls`, as ftp.py and data_channel.py make them. The end-to-end attacks (a thief on
the victim's data port) are in tests/integration/test_data_binding.py.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

from ftps_server.config.loader import load
from ftps_server.server import tls, tls_openssl

VERSIONS = support.RESUMPTION


def _contexts(tmp_path: Path, pki: support.Pki, server: str = "") -> tls.TlsContexts:
    cert = pki.server("main", "127.0.0.1")
    return tls.build_contexts(load(support.node_config(tmp_path / "x.ini", cert, server=server)))


class Connection:
    """One server-side connection of `session` and the client talking to it."""

    def __init__(
        self, session: tls.SessionTls, client: ssl.SSLContext, resume: ssl.SSLSession | None
    ) -> None:
        self.server_in, self.server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client_in, self.client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        wrapped = session.context.wrap_bio(self.server_in, self.server_out, server_side=True)
        self.server = session.bind(wrapped)
        self.client = client.wrap_bio(
            self.client_in, self.client_out, server_hostname="127.0.0.1", session=resume
        )
        for _ in range(10):
            done = self._step(self.client.do_handshake) & self._step(self.server.do_handshake)
            self._pump()
            if done:
                break
        else:
            raise AssertionError("handshake did not finish")
        # one byte each way: the client reads the TLS 1.3 tickets that follow the handshake
        self.server.write(b"x")
        self._pump()
        assert self.client.read(1) == b"x"
        self.cached = session.cache_entry(self.server)

    @staticmethod
    def _step(handshake: object) -> bool:
        try:
            handshake()  # type: ignore[operator]
        except ssl.SSLWantReadError:
            return False
        return True

    def _pump(self) -> None:
        self.server_in.write(self.client_out.read())
        self.client_in.write(self.server_out.read())

    def close(self) -> None:
        """What ftp.py and data_channel.py do when the connection closes: close_notify
        (OpenSSL itself drops the session of a connection freed without one), then forget."""
        with contextlib.suppress(ssl.SSLWantReadError):  # the client's is not awaited
            self.server.unwrap()
        if self.cached is not None:
            self.cached.forget()
            self.cached = None


@pytest.fixture
def contexts(tmp_path: Path, pki: support.Pki) -> tls.TlsContexts:
    found = _contexts(tmp_path, pki)
    assert found.shared, "this Python's ssl cannot be reached through tls_openssl"
    return found


def test_control_connections_share_a_context_and_get_bindings_of_their_own(
    contexts: tls.TlsContexts,
) -> None:
    first = contexts.session_for("127.0.0.1", "explicit")
    second = contexts.session_for("127.0.0.1", "explicit")
    assert first is not None and second is not None
    assert first.context is second.context
    assert first.binding is not None and second.binding is not None
    assert len(first.binding) == len(second.binding) == tls_openssl.BINDING_SIZE
    assert first.binding != second.binding


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_resumes_only_under_its_own_binding(
    contexts: tls.TlsContexts, pki: support.Pki, version: str
) -> None:
    client = support.resuming_client_context(pki, version)
    victim = contexts.session_for("127.0.0.1", "explicit")
    stranger = contexts.session_for("127.0.0.1", "implicit")  # same certificate, same context
    assert victim is not None and stranger is not None and victim.context is stranger.context
    control = Connection(victim, client, None)
    assert not control.server.session_reused
    session = control.client.session
    assert session is not None

    assert Connection(victim, client, session).server.session_reused
    # the same client, its own session, on a connection bound to someone else: full handshake
    taken = Connection(stranger, client, session)
    assert not taken.server.session_reused and not taken.client.session_reused


def test_a_tls12_session_leaves_the_shared_cache_when_its_connection_closes(
    contexts: tls.TlsContexts, pki: support.Pki
) -> None:
    session = contexts.session_for("127.0.0.1", "explicit")
    assert session is not None
    cache = session.context.session_stats
    before = cache()["number"]
    client = support.resuming_client_context(pki, "tls1.2-session-id")
    control = Connection(session, client, None)
    assert control.cached is not None and cache()["number"] == before + 1
    data = Connection(session, client, control.client.session)
    assert data.server.session_reused and data.cached is None  # resumed: nothing new cached
    control.close()
    assert cache()["number"] == before
    # TLS 1.3 tickets are not kept by the server at all
    assert Connection(session, support.resuming_client_context(pki, "tls1.3"), None).cached is None
    assert cache()["number"] == before


def test_a_handshake_storm_cannot_push_a_live_session_out_of_the_cache(
    tmp_path: Path, pki: support.Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared cache is bounded; OpenSSL drops the oldest session when it is full. Only
    open connections' sessions stay in it, and it has room for all of them."""
    monkeypatch.setattr(tls, "_MIN_CACHE_SIZE", 8)
    contexts = _contexts(tmp_path, pki, server="max_connections = 2")
    client = support.resuming_client_context(pki, "tls1.2-session-id")
    victim = contexts.session_for("127.0.0.1", "explicit")
    assert victim is not None
    control = Connection(victim, client, None)
    for _ in range(40):  # strangers connect and leave, each with a full TLS 1.2 handshake
        other = contexts.session_for("127.0.0.1", "explicit")
        assert other is not None
        Connection(other, support.resuming_client_context(pki, "tls1.2-session-id"), None).close()
    assert Connection(victim, client, control.client.session).server.session_reused


def test_a_renewed_shared_context_still_resumes_the_sessions_it_made(
    contexts: tls.TlsContexts, pki: support.Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = support.resuming_client_context(pki, "tls1.3")
    first = contexts.session_for("127.0.0.1", "explicit")
    assert first is not None
    control = Connection(first, client, None)
    monkeypatch.setattr(tls, "SHARED_CONTEXT_SECONDS", 0.0)
    later = contexts.session_for("127.0.0.1", "explicit")
    assert later is not None and later.context is not first.context  # new ticket keys
    assert Connection(first, client, control.client.session).server.session_reused
    assert not Connection(later, client, control.client.session).server.session_reused


@pytest.fixture
def no_openssl_reach(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FTPS_SERVER_OPENSSL_CTYPES", "0")
    tls_openssl._libssl.cache_clear()
    yield
    tls_openssl._libssl.cache_clear()


@pytest.mark.usefixtures("no_openssl_reach")
@pytest.mark.parametrize("version", VERSIONS)
def test_without_openssl_reach_every_control_connection_has_its_own_context(
    tmp_path: Path, pki: support.Pki, version: str
) -> None:
    contexts = _contexts(tmp_path, pki)
    assert not contexts.shared
    client = support.resuming_client_context(pki, version)
    victim = contexts.session_for("127.0.0.1", "explicit")
    stranger = contexts.session_for("127.0.0.1", "explicit")
    assert victim is not None and stranger is not None
    assert victim.binding is None and victim.context is not stranger.context
    control = Connection(victim, client, None)
    assert control.cached is None
    assert Connection(victim, client, control.client.session).server.session_reused
    assert not Connection(stranger, client, control.client.session).server.session_reused


def test_a_binding_that_cannot_be_set_fails_the_handshake(
    contexts: tls.TlsContexts, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = contexts.session_for("127.0.0.1", "explicit")
    assert session is not None
    monkeypatch.setattr(tls, "bind_session", lambda conn, binding: False)
    conn = session.context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    with pytest.raises(ssl.SSLError, match="cannot bind"):
        session.bind(conn)
