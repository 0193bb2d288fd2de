"""One pyftpdlib server per (address, port kind) on one IOLoop, and reload between them.

A `ServerState` is one generation of configuration: the parsed config, its TLS contexts and
its authenticator. Listeners point at the newest generation; each session keeps the one it
connected under, so a reload changes what new connections see and nothing else.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from pyftpdlib.servers import FTPServer

from ..config.ini import normalize_address
from ..config.model import Config, listener_name
from . import auth, metrics
from .ftp import FtpsHandler
from .proxied import Address, client_address, read_header
from .proxy_protocol import ProxyHeader
from .pyftpdlib_adapter import share_ip_map
from .state import ServerState
from .tls import build_contexts

__all__ = [
    "ACCEPT_BATCH",
    "LISTEN_BACKLOG",
    "ListenerServer",
    "Listeners",
    "ServerState",
    "build_state",
    "pending_connections",
]

log = logging.getLogger(__name__)

# Accept queue length (the kernel caps it at net.core.somaxconn). A burst of connections
# beyond it drops the clients' handshake ACKs; FTP speaks first, so such a client waits for
# a banner until the SYN-ACK retries run out (~31 s) or for ever (syncookies). Sized for
# max_connections, not pyftpdlib's default of 100.
LISTEN_BACKLOG = 1024

# Connections taken from the accept queue per readiness event. pyftpdlib takes one, so a
# burst of N connects needs N loop turns, each behind every busy transfer of the loop: 200
# partners connecting at once waited seconds for their banners (bench/compare.py, connect
# p90). Bounded, so a connect storm cannot hold the loop for long either.
ACCEPT_BATCH = 64

# errors of accept() that concern one connection (gone before it was taken), not the listener
_ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


def pending_connections(sock: socket.socket, limit: int) -> Iterator[tuple[socket.socket, Any]]:
    """Take up to `limit` connections from a non-blocking listening socket, lazily, until its
    queue is empty. Each is non-blocking, as the channels expect."""
    for _ in range(limit):
        try:
            conn, addr = sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _ACCEPT_SKIP:
                continue
            raise
        conn.setblocking(False)
        yield conn, addr


def build_state(config: Config, previous: ServerState | None = None) -> ServerState:
    """Load certificates and users for `config`; reuse the authenticator (bans survive)."""
    tls = build_contexts(config)
    if previous is not None:
        authenticator = previous.auth
        authenticator.reload(config)
    else:
        authenticator = auth.Authenticator(config)
    return ServerState(config, tls, authenticator)


class ListenerServer(FTPServer):
    """A listening socket of one port kind; sessions are `FtpsHandler`s."""

    def __init__(
        self,
        sock: socket.socket,
        kind: str,
        name: str,
        state: ServerState,
        ioloop: Any,
        ip_map: list[str],
    ) -> None:
        self.kind, self.name, self.state = kind, name, state
        self.proxy_header: ProxyHeader | None = None  # set only while a handler is made
        # pyftpdlib calls listen() again with its own backlog: pass ours
        super().__init__(sock, FtpsHandler, ioloop=ioloop, backlog=LISTEN_BACKLOG)
        share_ip_map(self, ip_map)  # max_connections_per_ip spans every listener
        self.apply_limits(state.config)

    def apply_limits(self, config: Config) -> None:
        self.max_cons = config.server.max_connections
        self.max_cons_per_ip = config.server.max_connections_per_ip

    def handle_accept(self) -> None:
        for sock, addr in pending_connections(self.socket, ACCEPT_BATCH):
            self.handle_accepted(sock, addr)

    def handle_accepted(self, sock: socket.socket, addr: Any) -> Any:
        # one form for ip_map: pyftpdlib adds addr[0] here but removes the handler's
        # (normalised) remote_ip at close, so ::ffff:a.b.c.d on a dual-stack `*` listener
        # was never removed and max_connections_per_ip locked a client out for good
        addr = (normalize_address(addr[0]), *addr[1:])
        settings = self.state.config.server
        if settings.is_proxy(addr[0]):
            # a balancer's connection: the handler (limits, bans, certificate) waits for the
            # header and sees the addresses it names
            read_header(sock, addr, self.ioloop, settings.handshake_timeout, self.name, self.serve)
            return None
        return self.serve(sock, addr, None)

    def serve(self, sock: socket.socket, peer: Address, header: ProxyHeader | None) -> Any:
        """Start the session of a connection from `peer` (normalised), whose PROXY header,
        if it came through a balancer, has been read already."""
        self.proxy_header = header
        try:
            addr = peer if header is None else client_address(peer, header)
            return super().handle_accepted(sock, addr)
        finally:
            self.proxy_header = None


def _bind(address: str, port: int) -> socket.socket:
    if address == "*":
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(
                    ("::", port),
                    family=socket.AF_INET6,
                    dualstack_ipv6=True,
                    backlog=LISTEN_BACKLOG,
                )
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
        return socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.create_server((address, port), family=family, backlog=LISTEN_BACKLOG)


class Listeners:
    """The set of open listeners; `apply` opens, keeps or closes them to match a state."""

    def __init__(self, ioloop: Any) -> None:
        self.ioloop = ioloop
        # what a listening socket becomes; with workers, one that hands connections on
        self.factory: Callable[..., ListenerServer] = ListenerServer
        self.servers: dict[tuple[str, str, int], ListenerServer] = {}
        self.failed: dict[tuple[str, str, int], str] = {}
        self._ip_map: list[str] = []
        # Listening sockets handed over by the previous process (see handover.py), used by
        # the next `apply` instead of binding.
        self._adopted: dict[tuple[str, str, int], socket.socket] = {}

    def adopt(self, sockets: dict[tuple[str, str, int], socket.socket]) -> None:
        """Serve these already-listening sockets on the next `apply` (hand-over)."""
        self._adopted.update(sockets)

    def sockets(self) -> dict[tuple[str, str, int], socket.socket]:
        """The open listening sockets, for a hand-over to a new process."""
        return {key: server.socket for key, server in self.servers.items()}

    def apply(self, state: ServerState) -> None:
        """Make the open listeners those of `state`; sessions in progress are untouched."""
        wanted = set(state.config.listeners())
        for key in list(self.servers):
            if key not in wanted:
                self.servers.pop(key).close()
                log.info("stopped listening on %s", listener_name(key[0], key[2], key[1]))
        self.failed = {}
        for key in sorted(wanted):
            address, kind, port = key
            if key in self.servers:
                server = self.servers[key]
                server.state = state
                server.apply_limits(state.config)
                continue
            name = listener_name(address, port, kind)
            try:
                sock = self._adopted.pop(key, None) or _bind(address, port)
            except OSError as exc:
                self.failed[key] = exc.strerror or str(exc)
                log.critical(
                    "cannot listen on %s: %s",
                    name,
                    self.failed[key],
                    extra={"fields": {"LISTENER": name}},
                )
                continue
            self.servers[key] = self.factory(sock, kind, name, state, self.ioloop, self._ip_map)
            log.info("listening on %s", name)
        for sock in self._adopted.values():  # handed over but no longer configured
            sock.close()
        self._adopted.clear()
        self._report_certificates(state)
        metrics.listeners_applied(self, state)

    def _report_certificates(self, state: ServerState) -> None:
        if not state.config.certificates:
            return  # none configured at all: the daemon says so once, with what to do
        for address, kind, port in sorted(self.servers):
            if address == "*":
                continue
            problem = state.tls.problem_for(address)
            if problem:
                log.critical(
                    "listener %s has no valid certificate: %s",
                    listener_name(address, port, kind),
                    problem,
                    extra={"fields": {"LISTENER": listener_name(address, port, kind)}},
                )

    def without_certificate(self, state: ServerState) -> int:
        """How many open listeners cannot offer TLS for their address (`*`: the default's)."""
        return sum(1 for address, _kind, _port in self.servers if state.tls.problem_for(address))

    def status_line(self, state: ServerState) -> str:
        """A one-line summary for systemd's STATUS=."""
        parts = [f"{len(self.servers)} listeners"]
        missing = self.without_certificate(state)
        if missing:
            parts.append(f"{missing} without a valid certificate")
        if self.failed:
            parts.append(f"{len(self.failed)} failed to bind")
        return ", ".join(parts)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()
