"""Deliberately broken listeners for the check utility's tests (real loopback sockets).

`FakeFtps` speaks just enough FTPS (`220`, `AUTH TLS` -> `234`, handshake, `NOOP` -> `200`; or
TLS at once then `220` on implicit ports) with whatever server context the test hands it: e.g.
one that never asks for a client certificate on a client-cert port. `silent_listener` accepts
TCP (the kernel completes the handshake from the backlog) and never says a word.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator


class FakeFtps:
    """A threaded FTPS responder on (address, port); `implicit` starts TLS on connect."""

    def __init__(self, address: str, port: int, ctx: ssl.SSLContext, *, implicit: bool) -> None:
        self.ctx, self.implicit = ctx, implicit
        self.sock = socket.create_server((address, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeFtps:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        # a client that gives up or is refused in the handshake ends the conversation
        with contextlib.suppress(OSError), conn:
            if self.implicit:
                tls = self.ctx.wrap_socket(conn, server_side=True)
                tls.sendall(b"220 fake implicit FTPS\r\n")
                tls.recv(1024)
                return
            conn.sendall(b"220-fake explicit FTPS\r\n220 ready\r\n")
            if not conn.recv(1024).upper().startswith(b"AUTH TLS"):
                conn.sendall(b"500 say AUTH TLS\r\n")
                return
            conn.sendall(b"234 AUTH TLS successful\r\n")
            tls = self.ctx.wrap_socket(conn, server_side=True)
            if tls.recv(1024).upper().startswith(b"NOOP"):
                tls.sendall(b"200 NOOP ok\r\n")
            tls.recv(1024)


@contextlib.contextmanager
def silent_listener(address: str, port: int = 0) -> Iterator[int]:
    """A TCP port that accepts connections (via the backlog) and never answers; yields it."""
    with socket.create_server((address, port), backlog=16) as sock:
        yield sock.getsockname()[1]


@contextlib.contextmanager
def dripping_listener(address: str) -> Iterator[int]:
    """A port whose server never finishes its banner: one `220-` line every 0.2 s, forever."""
    stopping = threading.Event()

    def drip(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while not stopping.wait(0.2):
                conn.sendall(b"220-still starting up\r\n")

    try:
        with _serving(address, drip) as port:
            yield port
    finally:
        stopping.set()  # the connections still dripping


@contextlib.contextmanager
def scripted_listener(address: str, banner: bytes, *, auth_reply: bytes = b"") -> Iterator[int]:
    """A port that sends `banner` on connect and answers its first command with
    `auth_reply` (hostile bytes chosen by the test); yields the port."""

    def talk(conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError), conn:
            conn.sendall(banner)
            if auth_reply and conn.recv(1024):
                conn.sendall(auth_reply)
            conn.recv(1024)

    with _serving(address, talk) as port:
        yield port


@contextlib.contextmanager
def empty_line_flood(address: str, limit: int = 64 * 1024 * 1024) -> Iterator[int]:
    """A port whose banner `220-` is followed by empty lines as fast as the client takes
    them (at most `limit` bytes a connection, so the fake itself is bounded); yields it."""

    def flood(conn: socket.socket) -> None:
        conn.settimeout(5)
        chunk = b"\r\n" * 4096
        with contextlib.suppress(OSError), conn:
            conn.sendall(b"220-welcome\r\n")
            sent = 0
            while sent < limit:
                conn.sendall(chunk)
                sent += len(chunk)

    with _serving(address, flood) as port:
        yield port


@contextlib.contextmanager
def _serving(address: str, handle: Callable[[socket.socket], None]) -> Iterator[int]:
    stopping = threading.Event()
    with socket.create_server((address, 0)) as sock:
        sock.settimeout(0.2)

        def serve() -> None:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    conn = sock.accept()[0]
                    threading.Thread(target=handle, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield sock.getsockname()[1]
        finally:
            stopping.set()
            thread.join(5)
