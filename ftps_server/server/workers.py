"""`[server] workers = N`: N processes serve the same listeners, one client address per worker.

Design: the main process owns the listening sockets and accepts; each connection's file
descriptor goes to the worker chosen by a hash of the client address, over a unix
SOCK_SEQPACKET socket (SCM_RIGHTS). Every session of one address, its data connections
included, is therefore served by one process, and whatever is kept per address (bans, login
failures, `max_connections_per_ip`, passive listeners, pending client certificates) stays
exact without sharing memory between processes. Data connections reach their worker without
the main process: each worker binds PASV/EPSV listeners only in its own slice of
`passive_ports` (active mode connects from the worker). A connection from a balancer
(`proxy_from`) would be steered by the balancer's address; the main process reads its PROXY
header first (listeners.py, with the reader of proxied.py) and steers by the header's source,
sending the parsed header along with the descriptor.

Why not SO_REUSEPORT: the kernel's default reuseport hash includes the source port, so two
connections of one address land on different workers; steering by address needs a BPF
program per listener group, kept in step with reloads that add and remove listeners. Passing
descriptors costs one sendmsg per connection in the main process and keeps reload (the main
process binds and closes listeners) exactly as it is with one process.

A worker is `ftps-server serve --worker I/N --worker-fd FD`, a fresh interpreter: nothing of
the main process's event loop (its epoll instance, its listeners) is inherited. Workers
reload on SIGHUP from the main process, send a heartbeat byte every second (the main process
pings systemd's watchdog only while every worker's heartbeat is fresh) and are replaced,
with a log line, when they exit.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyftpdlib.ioloop import Acceptor

from ..config.ini import normalize_address
from ..config.model import Config
from .ftp import FtpsHandler
from .listeners import LISTEN_BACKLOG, ListenerServer
from .proxied import Address, client_address
from .proxy_protocol import ProxyHeader
from .pyftpdlib_adapter import call_soon, share_ip_map
from .state import ServerState
from .wakeup import FdChannel

__all__ = [
    "HEARTBEAT",
    "Supervisor",
    "WorkerInbox",
    "WorkerSpec",
    "pick",
    "worker_config",
]

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between a worker's heartbeats
_RESTART_DELAY = (0.0, 1.0, 5.0, 30.0)  # a worker dying again soon after start waits longer
_STABLE = 60.0  # seconds after which a worker's restart count is forgotten
_STOP_GRACE = 10.0  # seconds workers get to close their sessions at shutdown


@dataclass(frozen=True)
class WorkerSpec:
    """Which worker a process is: index of count, and its end of the main process's socket."""

    index: int
    count: int
    fd: int


def pick(address: str, count: int) -> int:
    """The worker for a client address: stable across workers, restarts and reloads."""
    packed = ipaddress.ip_address(normalize_address(address)).packed
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "big") % count


def worker_config(config: Config, spec: WorkerSpec) -> Config:
    """The configuration as one worker applies it: its slice of `passive_ports` and its
    share of `max_connections` (rounded up)."""
    server = config.server
    ports = server.passive_ports
    if ports is not None:
        low, high = ports
        size = (high - low + 1) // spec.count
        first = low + spec.index * size
        last = high if spec.index == spec.count - 1 else first + size - 1
        ports = (first, last)
    share = -(-server.max_connections // spec.count)
    server = dataclasses.replace(server, passive_ports=ports, max_connections=share)
    return dataclasses.replace(config, server=server)


# The message that comes with each descriptor: listener kind, name and family, the peer's
# address and port, then, for a connection through a balancer, the PROXY header the main
# process read (version, length, source address and port, destination address and port;
# empty strings for addresses a LOCAL or UNKNOWN header does not carry).
_MESSAGE_BYTES = 1024  # the longest message is ~300 bytes (IPv6 everywhere)


def _encode_header(header: ProxyHeader | None) -> list[str]:
    if header is None:
        return []
    fields = [str(header.version), str(header.length)]
    for address in (header.source, header.destination):
        fields += ["", ""] if address is None else [address[0], str(address[1])]
    return fields


def _decode_header(fields: list[str]) -> ProxyHeader | None:
    """The header `_encode_header` wrote; ValueError for anything else."""
    if not fields:
        return None
    version, length, shost, sport, dhost, dport = fields
    source = (shost, int(sport)) if shost else None
    destination = (dhost, int(dport)) if dhost else None
    return ProxyHeader(int(version), int(length), source, destination)


# --- in a worker ---------------------------------------------------------------------------


class RemoteListener(ListenerServer):
    """A listener of the main process as a worker sees it: no socket of its own; connections
    come from `WorkerInbox` and go through pyftpdlib's usual accept path (limits, handler)."""

    def __init__(
        self,
        kind: str,
        name: str,
        family: int,
        state: ServerState,
        ioloop: Any,
        ip_map: list[str],
    ) -> None:
        # not FTPServer.__init__: it would bind or register a socket
        Acceptor.__init__(self, ioloop=ioloop)
        self.handler = FtpsHandler
        self.backlog = LISTEN_BACKLOG
        # pyftpdlib's PASV reads the listener's address family (dual-stack or not); an
        # unbound socket of that family, never registered on the loop, answers it
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.kind, self.name, self.state = kind, name, state
        self.proxy_header = None  # as ListenerServer: set only while a handler is made
        share_ip_map(self, ip_map)
        self.apply_limits(state.config)


class _WorkerField(logging.Filter):
    """Adds WORKER=<index> to every record of a worker: its stderr lines reach the journal
    through the main process's stream, which journald attributes to the main process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = str(index)

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        extra = dict(fields) if isinstance(fields, dict) else {}
        extra.setdefault("WORKER", self.index)
        record.fields = extra
        return True


class WorkerInbox(FdChannel):
    """The worker's end of the main process's socket: connections in, heartbeats out."""

    def __init__(self, ioloop: Any, spec: WorkerSpec, state: ServerState) -> None:
        self.ioloop, self.spec, self.state = ioloop, spec, state
        for handler in logging.getLogger().handlers:
            handler.addFilter(_WorkerField(spec.index))
        self.sock = socket.socket(fileno=spec.fd)
        self.sock.setblocking(False)
        self.listeners: dict[str, RemoteListener] = {}
        self._ip_map: list[str] = []
        ioloop.register(self.sock.fileno(), self, ioloop.READ)
        self._beat = ioloop.call_every(HEARTBEAT, self._heartbeat)
        self._heartbeat()

    def set_state(self, state: ServerState) -> None:
        """A reload: new connections get the new generation; sessions keep theirs."""
        self.state = state
        for listener in self.listeners.values():
            listener.state = state
            listener.apply_limits(state.config)

    def _heartbeat(self) -> None:
        try:
            self.sock.send(b"h")
        except BlockingIOError:
            pass  # the main process is busy; the next beat will do
        except OSError:
            self._parent_gone()

    def handle_read_event(self) -> None:
        for _ in range(64):  # bounded: other channels get their turn
            try:
                message, fds, _flags, _addr = socket.recv_fds(self.sock, _MESSAGE_BYTES, 1)
            except BlockingIOError:
                return
            except OSError:
                self._parent_gone()
                return
            if not message and not fds:
                self._parent_gone()
                return
            for fd in fds[1:]:
                os.close(fd)
            if fds:
                self._accept(message.decode(errors="replace"), fds[0])

    def _accept(self, message: str, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        try:
            kind, name, family, host, port, *proxied = message.split("\t")
            addr, family_number = (host, int(port)), int(family)
            header = _decode_header(proxied)
        except ValueError:
            log.error(
                "worker %d: malformed connection message from the main process", self.spec.index
            )
            sock.close()
            return
        sock.setblocking(False)
        listener = self.listeners.get(name)
        if listener is None:
            listener = RemoteListener(
                kind, name, family_number, self.state, self.ioloop, self._ip_map
            )
            self.listeners[name] = listener
        log.debug(
            "connection from %s on %s served by worker %d (pid %d)",
            host if header is None else client_address(addr, header)[0],
            name,
            self.spec.index,
            os.getpid(),
        )
        # the main process read the PROXY header, if any: it is not on the socket any more
        listener.serve(sock, addr, header)

    def _parent_gone(self) -> None:
        log.warning("worker %d: the main process is gone; stopping", self.spec.index)
        self.close()
        os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        if self._beat is not None and not self._beat.cancelled:
            self._beat.cancel()
        self._beat = None
        if self.sock.fileno() >= 0:
            self.ioloop.unregister(self.sock.fileno())
            self.sock.close()


# --- in the main process -------------------------------------------------------------------


class _Worker(FdChannel):
    """The main process's view of one worker: its process, its socket, its last heartbeat."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor, self.index = supervisor, index
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.beat = 0.0
        self.started = 0.0

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sup = self.supervisor
        command = [
            *sup.command,
            "--worker",
            f"{self.index}/{sup.count}",
            "--worker-fd",
            str(theirs.fileno()),
        ]
        # systemd talks to the main process only; workers must not notify or ping
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
        }
        try:
            self.proc = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.started = self.beat = time.monotonic()
        sup.ioloop.register(ours.fileno(), self, sup.ioloop.READ)
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    def handle_read_event(self) -> None:
        assert self.sock is not None
        try:
            while self.sock.recv(64):
                self.beat = time.monotonic()
        except BlockingIOError:
            return
        except OSError:
            pass
        self.drop_socket()  # EOF: the worker is gone; SIGCHLD brings the replacement

    def close(self) -> None:
        self.drop_socket()

    def drop_socket(self) -> None:
        if self.sock is not None:
            self.supervisor.ioloop.unregister(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def send(self, conn: socket.socket, message: str) -> bool:
        """Hand `conn` to the worker; False when it cannot take it now."""
        if self.sock is None:
            return False
        try:
            socket.send_fds(self.sock, [message.encode()], [conn.fileno()])
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.drop_socket()
            return False
        return True


class Supervisor:
    """Starts, feeds, watches and replaces the workers of the main process."""

    def __init__(self, ioloop: Any, config_path: Path, count: int) -> None:
        self.ioloop, self.count = ioloop, count
        debug = ["--debug"] if logging.getLogger().isEnabledFor(logging.DEBUG) else []
        self.command = [
            *(sys.executable, "-m", "ftps_server", *debug, "serve"),
            *("--config", str(config_path)),
        ]
        self.workers = [_Worker(self, i) for i in range(count)]
        self.stopping = False

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def listener_factory(self) -> Callable[..., ListenerServer]:
        """What `Listeners` makes in the main process: listeners that dispatch."""
        supervisor = self

        class DispatchingListener(ListenerServer):
            # a balancer's connection comes here once ListenerServer has read its PROXY
            # header in this process, so the worker is the real client's, not the balancer's
            def serve(self, sock: socket.socket, peer: Address, header: ProxyHeader | None) -> None:
                supervisor.dispatch(self, sock, peer, header)

        return DispatchingListener

    def dispatch(
        self,
        listener: ListenerServer,
        sock: socket.socket,
        peer: Address,
        header: ProxyHeader | None = None,
    ) -> None:
        """Give an accepted connection, and its PROXY header if it came through a balancer,
        to the worker of its client address."""
        host, port = str(peer[0]), int(peer[1])  # IPv6: (host, port, flowinfo, scope_id)
        client = host if header is None else client_address(peer, header)[0]
        worker = self.workers[pick(client, self.count)]
        family = int(listener.socket.family)
        fields = [listener.kind, listener.name, str(family), host, str(port)]
        message = "\t".join([*fields, *_encode_header(header)])
        try:
            if not worker.send(sock, message):
                log.warning(
                    "connection from %s on %s dropped: worker %d is not running or its "
                    "queue is full",
                    client,
                    listener.name,
                    worker.index,
                )
        finally:
            sock.close()  # the worker has its own descriptor now

    def reap(self) -> None:
        """SIGCHLD: log each worker that exited and start its replacement."""
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            worker.drop_socket()
            worker.proc = None
            if self.stopping:
                continue
            code = proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            if time.monotonic() - worker.started > _STABLE:
                worker.restarts = 0
            delay = _RESTART_DELAY[min(worker.restarts, len(_RESTART_DELAY) - 1)]
            worker.restarts += 1
            log.error(
                "worker %d (pid %d) ended with %s; starting a replacement in %.0f s "
                "(its sessions are lost)",
                worker.index,
                proc.pid,
                how,
                delay,
            )
            call_soon(self.ioloop, self._restart, worker, errback=self._restart_failed, delay=delay)

    def _restart(self, worker: _Worker) -> None:
        if not self.stopping and worker.proc is None:
            worker.start()

    def _restart_failed(self) -> None:
        log.exception("starting a worker failed")

    def kill_stalled(self, max_age: float) -> None:
        """Kill a worker whose event loop sent no heartbeat for `max_age` seconds (it is
        replaced like any worker that ends): one stuck worker must not stall its addresses
        for ever, nor take the whole service down through systemd's watchdog."""
        if self.stopping:
            return  # draining after a hand-over: a worker that closed its inbox sends no beats
        now = time.monotonic()
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.poll() is None and now - worker.beat > max_age:
                log.error(
                    "worker %d (pid %d) sent no heartbeat for %.0f s; killing it",
                    worker.index,
                    proc.pid,
                    now - worker.beat,
                )
                worker.beat = now  # one kill per stall
                proc.kill()

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM every worker and wait (bounded) for them; SIGKILL what remains."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in time; killing it", worker.index)
                worker.proc.kill()
                worker.proc.wait()
            worker.drop_socket()

    def status(self) -> str:
        running = sum(w.proc is not None for w in self.workers)
        return f"{running}/{self.count} workers"
