"""The service's lifecycle: start, sd_notify READY/STATUS/WATCHDOG/RELOADING, signals, reload.

`daemon` wires the stages (config -> certificates -> TLS -> listeners) and owns signals; the
`serve` and `check-config` subcommands live here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop

from .config import loader
from .config.model import Config, listener_name
from .errors import FtpsServerError
from .journal import message_ids
from .reminders import run as reminders_run
from .server import handover
from .server.listeners import Listeners, ServerState, build_state
from .server.pyftpdlib_adapter import clear_scheduled, run_loop
from .server.tls import build_contexts
from .server.wakeup import FdChannel
from .server.workers import HEARTBEAT, Supervisor, WorkerInbox, WorkerSpec, worker_config

__all__ = ["Daemon", "notify", "register"]

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send sd_notify lines to $NOTIFY_SOCKET; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(lines).encode(), address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
    return True


class _SignalPipe(FdChannel):
    """Delivers signals into the IOLoop through a wake-up fd, so handlers run between events.

    `at_once`, if given, runs in the Python-level signal handler itself, before the loop
    gets to the signal: for what must not wait behind the event being served."""

    def __init__(
        self,
        ioloop: Any,
        handlers: dict[int, Any],
        at_once: Callable[[int], None] | None = None,
    ) -> None:
        self.ioloop, self.handlers = ioloop, handlers
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

        def handler(signum: int, _frame: Any) -> None:
            if at_once is not None:
                at_once(signum)

        for signum in handlers:
            signal.signal(signum, handler)
        ioloop.register(self._r, self, ioloop.READ)

    def handle_read_event(self) -> None:
        try:
            data = os.read(self._r, 64)
        except BlockingIOError:
            return
        for signum in data:
            handler = self.handlers.get(signum)
            if handler is not None:
                handler()

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.ioloop.unregister(self._r)
        os.close(self._r)
        os.close(self._w)


class Daemon:
    """A running server: the IOLoop, the listeners and the current state."""

    def __init__(self, config_path: Path, worker: WorkerSpec | None = None) -> None:
        self.config_path = config_path
        self.ioloop = IOLoop()
        self.listeners = Listeners(self.ioloop)
        self.state: ServerState | None = None
        self._signals: _SignalPipe | None = None
        self._watchdog: Any = None
        # hand-over (server/handover.py): the code this process runs, and its progress
        self._code = handover.code_fingerprint()
        self._spawn: handover.Spawn | None = None
        self._handed_over = False
        self.worker = worker  # this process is one of `[server] workers` (see workers.py)
        self.inbox: WorkerInbox | None = None
        self.supervisor: Supervisor | None = None

    def _load(self) -> Config:
        config = loader.load(self.config_path)
        return worker_config(config, self.worker) if self.worker else config

    def start(self) -> None:
        """Load the configuration and open every listener; raise ConfigError if unusable."""
        config = self._load()
        self.state = build_state(config)
        handlers: dict[int, Any] = {
            signal.SIGHUP: self.reload,
            signal.SIGTERM: self.stop,
            signal.SIGINT: self.stop,
            signal.SIGUSR2: self.hand_over,
        }
        if self.worker is not None:
            self.inbox = WorkerInbox(self.ioloop, self.worker, self.state)
            handlers[signal.SIGUSR2] = self._drain_worker  # its main process handed over
            self._signals = _SignalPipe(self.ioloop, handlers)  # a worker never speaks to systemd
            return
        if config.server.workers > 1:
            self.supervisor = Supervisor(self.ioloop, self.config_path, config.server.workers)
            self.listeners.factory = self.supervisor.listener_factory()
            handlers[signal.SIGCHLD] = self.supervisor.reap
            self.supervisor.start()
        # after a hand-over: serve the previous process's listening sockets (validated first)
        self.listeners.adopt(handover.inherited_sockets())
        self.listeners.apply(self.state)
        if not self.listeners.servers:
            if self.supervisor is not None:
                self.supervisor.stop()  # no worker outlives a start that failed
            self._fail_unbound()
        self._signals = _SignalPipe(self.ioloop, handlers, self._announce_reload)
        if self.supervisor is not None:
            self.supervisor.reap()  # a worker that ended before SIGCHLD was caught
        self._start_watchdog()
        status = self._status()
        if handover.is_successor():
            handover.report_ready()  # the previous process makes us systemd's main process
        else:
            notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        log.info(
            "ftps-server ready: %s",
            status,
            extra={"fields": {"MESSAGE_ID": message_ids.SERVICE_READY}},
        )
        self._remind_or_hint(config)

    def _remind_or_hint(self, config: Config) -> None:
        """Run the reminders, or, with no certificate configured at all (a fresh install), log
        one line saying what to do instead of a CRITICAL line per listener and condition."""
        if config.certificates:
            self._remind_in_background(config)
            return
        log.warning(
            "no certificate configured yet: FTPS clients are refused until you add a "
            "[certificate:NAME] section (cert, key, default = yes) to %s and run "
            "`systemctl reload ftps-server` (see man ftps-server)",
            self.config_path,
            extra={"fields": {"MESSAGE_ID": message_ids.LISTENER_NO_CERT}},
        )

    def _fail_unbound(self) -> None:
        """Ready means serving: with no listener bound, exit non-zero so systemd shows it."""
        failed = ", ".join(
            f"{listener_name(address, port, kind)} ({why})"
            for (address, kind, port), why in sorted(self.listeners.failed.items())
        )
        reason = f"no listener could be bound: {failed or 'none configured'}"
        notify(f"STATUS={reason}")
        raise FtpsServerError(reason)

    def _status(self) -> str:
        assert self.state is not None
        status = self.listeners.status_line(self.state)
        return f"{status}, {self.supervisor.status()}" if self.supervisor else status

    def _start_watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if self.supervisor is not None:
            # a worker's loop that stalls is killed and replaced (its heartbeats stop)
            limit = max(int(usec) / 1e6, 3 * HEARTBEAT) if usec else 60.0
            self.ioloop.call_every(HEARTBEAT, self.supervisor.kill_stalled, limit)
        if not usec or (pid and int(pid) != os.getpid()):
            return
        interval = max(int(usec) / 1e6 / 3, 0.5)
        # the ping comes from the event loop itself, so a stalled loop stops the pings
        self._watchdog = self.ioloop.call_every(interval, lambda: notify("WATCHDOG=1"))

    def _remind_in_background(self, config: Config) -> None:
        def run() -> None:
            try:
                reminders_run.run_reminders(config, reminders_run.now())
            except Exception:  # a failed reminder must never take the server down
                log.exception("certificate reminder run at start failed")

        threading.Thread(target=run, name="remind", daemon=True).start()

    @property
    def _handing_over(self) -> bool:
        """A hand-over runs or ran: reloads and hand-overs are ignored from now on."""
        return self._spawn is not None or self._handed_over

    def _announce_reload(self, signum: int) -> None:
        """RELOADING=1 the moment SIGHUP or SIGUSR2 arrives, not once the loop gets to it.

        `systemctl reload` ends when ExecReload's `kill` exits, unless RELOADING=1 came first
        (systemd reads notifications before SIGCHLD): then it waits for READY=1. Sent from the
        loop, after the event being served and the code check, it could come too late; postinst
        then saw the reload over with MainPID unchanged, took the hand-over for a reload in
        place, and restarted the service, cutting the sessions the hand-over was to keep.
        Only when READY=1 will follow: reload() and hand_over() answer every signal that gets
        past these guards (theirs)."""
        if self._handing_over or (signum == signal.SIGUSR2 and not self.listeners.servers):
            return
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", "STATUS=reloading")

    def reload(self) -> None:
        """Re-read config, certificates and users; keep the old state if the new one is bad.

        When the installed code changed since this process started (a package upgrade), hand
        the listeners over to a new process running it instead (with none bound, there is
        nothing to hand over: reload in place)."""
        if self._handing_over:
            return
        if handover.code_fingerprint() != self._code and self.listeners.servers:
            log.info("the installed code changed since the start: handing over")
            self.hand_over()
            return
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", "STATUS=reloading")
        try:
            config = self._load()
            self.state = build_state(config, self.state)
            if self.inbox is not None:
                self.inbox.set_state(self.state)
                log.info("worker %d reloaded", self.inbox.spec.index)
                return
            self.listeners.apply(self.state)
            if self.supervisor is not None:
                if config.server.workers != self.supervisor.count:
                    log.warning("[server] workers changed: takes effect at the next restart")
                self.supervisor.signal_all(signal.SIGHUP)
        except FtpsServerError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            if self.inbox is not None:
                return
        status = self._status() if self.state else "no state"
        log.info(
            "reloaded: %s", status, extra={"fields": {"MESSAGE_ID": message_ids.SERVICE_RELOAD}}
        )
        notify("READY=1", f"STATUS={status}")
        if self.state is not None:
            self._remind_or_hint(self.state.config)

    # -- hand-over to a new process (package upgrade; server/handover.py) -------------------
    def hand_over(self) -> None:
        """Start a new process on the listening sockets; drain once it serves."""
        if self._handing_over or not self.listeners.servers:
            return
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", "STATUS=handing over")
        try:
            self._spawn = handover.Spawn(
                self.ioloop, self.config_path, self.listeners.sockets(), self._handed
            )
        except OSError as exc:
            self._handed(False, 0, str(exc))

    def _handed(self, ok: bool, pid: int, reason: str) -> None:
        self._spawn = None
        if not ok:
            log.error("hand-over failed, this process keeps serving: %s", reason)
            status = self.listeners.status_line(self.state) if self.state else "no state"
            notify("READY=1", f"STATUS={status} (hand-over failed: {reason})")
            return
        drain = self.state.config.server.drain_timeout if self.state else 0
        # One datagram: systemd follows the new process and ends the reload. From now on
        # this one is not the main process; its notifications would be refused.
        notify(f"MAINPID={pid}", "READY=1", f"STATUS=handed over to PID {pid}")
        self._handed_over = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.listeners.close()
        if self.supervisor is not None:
            # the sessions live in the workers: each stops taking connections and exits once
            # its own sessions end (or at drain_timeout); none is replaced from now on
            self.supervisor.stopping = True
            self.supervisor.signal_all(signal.SIGUSR2)
        log.info(
            "handed the listeners over to PID %d; draining sessions for up to %d s", pid, drain
        )
        deadline = time.monotonic() + drain
        self.ioloop.call_every(1.0, self._drain_tick, deadline)
        self._drain_tick(deadline)

    def _sessions(self) -> int:
        if self.supervisor is not None:  # a worker that still runs still has sessions
            return sum(
                w.proc is not None and w.proc.poll() is None for w in self.supervisor.workers
            )
        # control connections; their data channels and the loop's own wake-up pipes end
        # with them
        return sum(isinstance(obj, FTPHandler) for obj in self.ioloop.socket_map.values())

    def _drain_worker(self) -> None:
        """A worker whose main process handed over: take no new connection, finish the
        sessions it has (up to drain_timeout), then exit."""
        if self.inbox is not None:
            self.inbox.close()  # before the old main process exits: its EOF would stop us
            self.inbox = None
        drain = self.state.config.server.drain_timeout if self.state else 0
        deadline = time.monotonic() + drain
        self.ioloop.call_every(1.0, self._drain_tick, deadline)
        self._drain_tick(deadline)

    def _drain_tick(self, deadline: float) -> None:
        left = self._sessions()
        if left and time.monotonic() < deadline:
            return
        if left:
            log.warning("drain_timeout reached: closing %d connections", left)
        else:
            log.info("drained: every session ended")
        self.stop()

    def stop(self) -> None:
        """Close listeners and sessions; the loop ends when nothing is left."""
        if not self._handed_over:
            notify("STOPPING=1")
        log.info("stopping")
        if self._spawn is not None:
            self._spawn.close()
            self._spawn = None
        self.listeners.close()
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.inbox is not None:
            self.inbox.close()
        if self.state is not None:
            self.state.auth.close()
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        for obj in list(self.ioloop.socket_map.values()):
            try:
                obj.close()
            except Exception:
                log.debug("error closing %r", obj, exc_info=True)
        self.ioloop.socket_map.clear()
        clear_scheduled(self.ioloop)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        run_loop(self.ioloop)


def _serve(args: argparse.Namespace) -> int:
    worker = None
    if args.worker:
        index, count = (int(n) for n in args.worker.split("/"))
        worker = WorkerSpec(index, count, args.worker_fd)
    daemon = Daemon(Path(args.config), worker)
    daemon.start()
    daemon.run()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    path = Path(args.file or args.config)
    config = loader.load(path)
    tls = build_contexts(config) if args.certificates else None
    print(
        f"{path}: OK ({len(config.listeners())} listeners, "
        f"{len(config.certificates)} certificates, {len(config.users)} users)"
    )
    if tls is not None:
        bad = {n: s.problem for n, s in tls.statuses.items() if not s.usable}
        for name, problem in bad.items():
            print(f"  certificate [{name}]: {problem}", file=sys.stderr)
        if bad:
            return 1
    return 0


def register(subparsers: Any) -> None:
    """Add `serve` and `check-config`."""
    default = str(loader.DEFAULT_CONFIG_PATH)
    serve = subparsers.add_parser("serve", help="run the FTPS server")
    serve.add_argument("--config", default=default, help=f"INI file (default {default})")
    # internal: how the main process starts its `[server] workers`
    serve.add_argument("--worker", help=argparse.SUPPRESS)
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    check = subparsers.add_parser(
        "check-config", help="validate a configuration file (exit 78 when invalid)"
    )
    check.add_argument("file", nargs="?", help="INI file to check")
    check.add_argument("--config", default=default, help="same as FILE")
    check.add_argument(
        "--certificates",
        action="store_true",
        help="also load every certificate and key (needs read access to the keys)",
    )
    check.set_defaults(func=_check_config)
