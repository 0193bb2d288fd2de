"""Hand the listening sockets to a new server process, so that an upgrade cuts no transfer.

A restart closes every session; a hand-over does not. The serving process ("old"):

1. spawns ``python3 -m ftps_server serve --config C`` (the code now on disk) with its
   listening sockets inherited and described in ``$FTPS_SERVER_HANDOVER`` (JSON: fd, address,
   kind, port), and the write end of a pipe in ``$FTPS_SERVER_HANDOVER_READY``;
2. the new process validates its configuration and certificates first, adopts the sockets
   it still wants (binds new ones, closes the rest) and writes ``ready`` to the pipe instead
   of sending READY=1 itself;
3. the old one then tells systemd ``MAINPID=<new>`` and ``READY=1`` (NotifyAccess=main: only
   the main process may), closes its listeners and drains: it exits when its last session
   ends, or after ``[server] drain_timeout`` seconds.

A new process that fails (broken config, broken code) or is not ready within
`READY_TIMEOUT` exits or is stopped; the old one keeps serving as if nothing happened.
The listening sockets are never closed in between, so no connection is refused.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .wakeup import FdChannel

__all__ = [
    "ENV_READY",
    "ENV_SOCKETS",
    "READY_TIMEOUT",
    "Spawn",
    "code_fingerprint",
    "inherited_sockets",
    "is_successor",
    "report_ready",
]

log = logging.getLogger(__name__)

ENV_SOCKETS = "FTPS_SERVER_HANDOVER"
ENV_READY = "FTPS_SERVER_HANDOVER_READY"
# The new process imports, loads certificates and binds within this; systemd's own
# TimeoutStartSec= is 60 s.
READY_TIMEOUT = 60.0
_READY = b"ready\n"

Key = tuple[str, str, int]  # (address, kind, port) as in Listeners.servers


def code_fingerprint() -> tuple[tuple[str, int, int], ...]:
    """Identity of the package's files on disk: dpkg replaces every file of an upgrade with a
    new inode, so a reload can tell that the running code is no longer the installed one."""
    root = Path(__file__).resolve().parents[1]
    entries = []
    for path in sorted(root.rglob("*.py")):
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append((str(path.relative_to(root)), st.st_ino, st.st_mtime_ns))
    return tuple(entries)


def is_successor() -> bool:
    """True in a process started by a hand-over (it must not send READY=1 itself)."""
    return ENV_READY in os.environ


def inherited_sockets() -> dict[Key, socket.socket]:
    """The listening sockets handed over by the previous process (empty when none)."""
    spec = os.environ.pop(ENV_SOCKETS, None)
    if not spec:
        return {}
    sockets: dict[Key, socket.socket] = {}
    for item in json.loads(spec):
        sock = socket.socket(fileno=int(item["fd"]))
        sock.set_inheritable(False)
        sockets[(str(item["address"]), str(item["kind"]), int(item["port"]))] = sock
    return sockets


def report_ready() -> None:
    """Tell the previous process that this one serves now; it hands systemd over to us."""
    fd_text = os.environ.pop(ENV_READY, None)
    if fd_text is None:
        return
    fd = int(fd_text)
    try:
        os.write(fd, _READY)
    finally:
        os.close(fd)


@dataclass
class _Result:
    ok: bool
    pid: int
    reason: str


class Spawn(FdChannel):
    """One hand-over in progress in the old process; `on_done(ok, pid, reason)` runs once,
    from the IOLoop, when the new process is ready or has failed."""

    def __init__(
        self,
        ioloop: Any,
        config_path: Path,
        sockets: dict[Key, socket.socket],
        on_done: Callable[[bool, int, str], None],
    ) -> None:
        self.ioloop, self.on_done = ioloop, on_done
        self._buffer = b""
        self._done = False
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        spec = [
            {"fd": sock.fileno(), "address": key[0], "kind": key[1], "port": key[2]}
            for key, sock in sockets.items()
        ]
        env = dict(os.environ)
        env[ENV_SOCKETS] = json.dumps(spec)
        env[ENV_READY] = str(write_fd)
        # systemd's WATCHDOG_PID names this process; the new one pings once it is the main one.
        env.pop("WATCHDOG_PID", None)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ftps_server", "serve", "--config", str(config_path)],
                env=env,
                pass_fds=[write_fd, *(sock.fileno() for sock in sockets.values())],
                close_fds=True,
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._fd = read_fd
        ioloop.register(read_fd, self, ioloop.READ)
        self._timer = ioloop.call_later(READY_TIMEOUT, self._timeout)

    # -- the IOLoop's side ------------------------------------------------------------------
    def handle_read_event(self) -> None:
        try:
            data = os.read(self._fd, 64)
        except BlockingIOError:
            return
        self._buffer += data
        if self._buffer.startswith(_READY):
            self._finish(_Result(True, self.proc.pid, "ready"))
        elif not data:
            self._finish(_Result(False, self.proc.pid, self._exit_reason()))

    def handle_close(self) -> None:
        if not self._done:
            self._finish(_Result(False, self.proc.pid, self._exit_reason()))

    def handle_error(self) -> None:
        log.exception("hand-over pipe error")
        self.handle_close()

    def close(self) -> None:
        """Unregister the pipe (also when the daemon stops with a hand-over in progress)."""
        if self._fd >= 0:
            self.ioloop.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1

    # -- outcome ----------------------------------------------------------------------------
    def _exit_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return "the new process closed its pipe without being ready"
        return f"the new process exited with status {code} before it was ready"

    def _timeout(self) -> None:
        if self._done:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._finish(_Result(False, self.proc.pid, f"not ready within {READY_TIMEOUT:.0f} s"))

    def _finish(self, result: _Result) -> None:
        if self._done:
            return
        self._done = True
        if not self._timer.cancelled:
            self._timer.cancel()
        self.close()
        self.on_done(result.ok, result.pid, result.reason)
