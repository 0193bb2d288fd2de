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
from pathlib import Path
from typing import Any

from pyftpdlib.ioloop import IOLoop

from .config import model as config_mod
from .errors import FtpsServerError
from .journal import message_ids
from .reminders import run as reminders_run
from .server.listeners import Listeners, ServerState, build_state
from .server.pyftpdlib_adapter import clear_scheduled
from .server.tls import build_contexts

__all__ = ["Daemon", "notify", "register"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2


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


class _SignalPipe:
    """Delivers signals into the IOLoop through a wake-up fd, so handlers run between events."""

    def __init__(self, ioloop: Any, handlers: dict[int, Any]) -> None:
        self.ioloop, self.handlers = ioloop, handlers
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for signum in handlers:
            signal.signal(signum, lambda *_: None)
        ioloop.register(self._r, self, ioloop.READ)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            data = os.read(self._r, 64)
        except BlockingIOError:
            return
        for signum in data:
            handler = self.handlers.get(signum)
            if handler is not None:
                handler()

    def handle_write_event(self) -> None:
        """Never registered for writing."""

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.ioloop.unregister(self._r)
        os.close(self._r)
        os.close(self._w)


class Daemon:
    """A running server: the IOLoop, the listeners and the current state."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.ioloop = IOLoop()
        self.listeners = Listeners(self.ioloop)
        self.state: ServerState | None = None
        self._signals: _SignalPipe | None = None

    def start(self) -> None:
        """Load the configuration and open every listener; raise ConfigError if unusable."""
        config = config_mod.load(self.config_path)
        self.state = build_state(config)
        self.listeners.apply(self.state)
        if not self.listeners.servers:
            self._fail_unbound()
        self._signals = _SignalPipe(
            self.ioloop,
            {signal.SIGHUP: self.reload, signal.SIGTERM: self.stop, signal.SIGINT: self.stop},
        )
        self._start_watchdog()
        status = self.listeners.status_line(self.state)
        notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        log.info(
            "ftps-server ready: %s",
            status,
            extra={"fields": {"MESSAGE_ID": message_ids.SERVICE_READY}},
        )
        self._remind_or_hint(config)

    def _remind_or_hint(self, config: config_mod.Config) -> None:
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
            f"{config_mod.listener_name(address, port, kind)} ({why})"
            for (address, kind, port), why in sorted(self.listeners.failed.items())
        )
        reason = f"no listener could be bound: {failed or 'none configured'}"
        notify(f"STATUS={reason}")
        raise FtpsServerError(reason)

    def _start_watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and int(pid) != os.getpid()):
            return
        interval = max(int(usec) / 1e6 / 3, 0.5)
        # the ping comes from the event loop itself, so a stalled loop stops the pings
        self.ioloop.call_every(interval, lambda: notify("WATCHDOG=1"))

    def _remind_in_background(self, config: config_mod.Config) -> None:
        def run() -> None:
            try:
                reminders_run.run_reminders(config, reminders_run.now())
            except Exception:  # a failed reminder must never take the server down
                log.exception("certificate reminder run at start failed")

        threading.Thread(target=run, name="remind", daemon=True).start()

    def reload(self) -> None:
        """Re-read config, certificates and users; keep the old state if the new one is bad."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", "STATUS=reloading")
        try:
            config = config_mod.load(self.config_path)
            self.state = build_state(config, self.state)
            self.listeners.apply(self.state)
        except FtpsServerError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        status = self.listeners.status_line(self.state) if self.state else "no state"
        log.info(
            "reloaded: %s", status, extra={"fields": {"MESSAGE_ID": message_ids.SERVICE_RELOAD}}
        )
        notify("READY=1", f"STATUS={status}")
        if self.state is not None:
            self._remind_or_hint(self.state.config)

    def stop(self) -> None:
        """Close listeners and sessions; the loop ends when nothing is left."""
        notify("STOPPING=1")
        log.info("stopping")
        self.listeners.close()
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
        # a bounded poll: with none, an idle loop would sleep through its own scheduled
        # calls (the watchdog ping) until some socket woke it
        self.ioloop.loop(timeout=_POLL_SECONDS)


def _serve(args: argparse.Namespace) -> int:
    daemon = Daemon(Path(args.config))
    daemon.start()
    daemon.run()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    path = Path(args.file or args.config)
    config = config_mod.load(path)
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
    default = str(config_mod.DEFAULT_CONFIG_PATH)
    serve = subparsers.add_parser("serve", help="run the FTPS server")
    serve.add_argument("--config", default=default, help=f"INI file (default {default})")
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
