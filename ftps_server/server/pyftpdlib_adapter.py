"""pyftpdlib's internals in one place: every private name, moved import and copied body.

The server subclasses pyftpdlib's public classes (`FTPHandler`, `DTPHandler`, `FTPServer`,
`AsyncChat`, the authorizer and the filesystem) and hooks their documented methods
elsewhere. What pyftpdlib does not offer publicly is reached only through this module, each
with the versions it was checked against: 1.5.7 (Debian 12), 2.0.1 (Debian 13) and 2.2.0
(PyPI), the range pyproject.toml allows. tests/unit/test_pyftpdlib_contract.py asserts every
assumption below against the installed pyftpdlib, so an upgrade that breaks one fails there
and not in production.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from pyftpdlib.handlers import FTPHandler

# _ERRNOS_DISCONNECTED: the errnos pyftpdlib treats as "the peer is gone" (a set in each of
# 1.5.7, 2.0.1, 2.2.0; private in all three)
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED

try:  # 2.2.0 (and 2.1): the producer moved into handlers/ftp/, the retry error went private
    from pyftpdlib.handlers.ftp.producers import BufferedIteratorProducer
    from pyftpdlib.ioloop import _RetryError as RetryError
except ImportError:  # 1.5.7, 2.0.1
    from pyftpdlib.handlers import BufferedIteratorProducer
    from pyftpdlib.ioloop import RetryError

__all__ = [
    "ERRNOS_DISCONNECTED",
    "BufferedIteratorProducer",
    "PassiveDTP",
    "PassiveHook",
    "RetryError",
    "binary_file",
    "call_soon",
    "clear_scheduled",
    "close_data_path",
    "complete_login",
    "data_path_open",
    "data_wrapper",
    "debug_lines",
    "drop_passive_listener",
    "dtp_initialized",
    "extra_features",
    "forget_data_path",
    "is_closed",
    "mlst_facts",
    "next_chunk",
    "own_passive_listener",
    "run_loop",
    "set_extra_features",
    "set_io_events",
    "set_transfer_reply",
    "share_ip_map",
    "take_queued_transfer",
    "transfer_reply",
    "transfer_reply_set",
    "transfer_type",
    "wanted_io_events",
]

ERRNOS_DISCONNECTED: frozenset[int] = frozenset(_ERRNOS_DISCONNECTED)

# RetryError raised from a channel's recv(): AsyncChat.handle_read takes it as "nothing to
# read now" and returns without closing (1.5.7, 2.0.1, 2.2.0).

# The passive data listener FTPHandler uses: handlers.PassiveDTP in 1.5.7 and 2.0.1,
# handlers.ftp.dispatchers.PassiveDTP in 2.2.0; `FTPHandler.passive_dtp` names it in all.
PassiveDTP: type = FTPHandler.passive_dtp


# --- every channel (AsyncChat) ------------------------------------------------------------


def is_closed(channel: Any) -> bool:
    """True once pyftpdlib closed `channel` (`_closed`, set by close(): 1.5.7-2.2.0)."""
    return bool(getattr(channel, "_closed", False))


def call_soon(
    ioloop: Any, callback: Callable[..., Any], *args: Any, errback: Any, delay: float = 0
) -> Any:
    """ioloop.call_later with an error handler: the private `_errback` keyword (1.5.7-2.2.0)
    makes a failing callback call `errback` instead of logging and going on."""
    return ioloop.call_later(delay, callback, *args, _errback=errback)


def run_loop(ioloop: Any) -> None:
    """Serve `ioloop` until it has no channels, each poll sleeping until the next call due.

    IOLoop.loop() starts with a poll without timeout whatever is scheduled (1.5.7-2.2.0): an
    idle server would sleep through its own calls (the watchdog ping). A fixed bound instead
    wakes an idle server several times a second. Every other thread reaches the loop through
    a file descriptor (signals, the hash and checksum workers' wakers), so no call is
    scheduled behind the poll's back."""
    poll, due, channels = ioloop.poll, ioloop.sched.poll, ioloop.socket_map
    timeout = due()
    while channels:
        poll(timeout)
        timeout = due()


def set_io_events(channel: Any, events: int) -> None:
    """Register `events` for `channel` now, keeping pyftpdlib's two records of them right.

    AsyncChat keeps `_wanted_io_events` (what it restores after a write) and
    `_current_io_events` (what the poller has); modify_ioloop_events skips the poller when the
    latter already matches (1.5.7-2.2.0)."""
    current = getattr(channel, "_current_io_events", None)
    if events != current or events != channel._wanted_io_events:
        channel.ioloop.modify(channel._fileno, events)
        channel._current_io_events = channel._wanted_io_events = events


def wanted_io_events(channel: Any) -> int:
    """The events `channel` wants when it has nothing special to do (`_wanted_io_events`)."""
    return int(channel._wanted_io_events)


def next_chunk(
    fifo: deque[Any], read_file: Callable[[Any], memoryview] | None = None
) -> bytes | memoryview | None:
    """The next bytes to send from an AsyncChat producer_fifo, or None when it is empty or
    a close marker (None) is at its head.

    A copy of the drain in asynchat.async_chat.initiate_send (1.5.7 uses the stdlib's,
    2.0.1 and 2.2.0 a vendored copy; same queue in all): items are bytes-like or producers
    with `more()`; an exhausted producer is dropped. With `read_file`, a binary-mode file
    producer's file (`binary_file`) is read by `read_file(file)` instead of `more()`, and
    the memoryview it returns is passed on as it is."""
    while fifo:
        first = fifo[0]
        if first is None:
            return None
        if isinstance(first, bytes | bytearray | memoryview):
            fifo.popleft()
            if first:
                return bytes(first)
            continue
        file = binary_file(first) if read_file is not None else None
        data = read_file(file) if read_file is not None and file is not None else first.more()
        if data:
            return data if isinstance(data, memoryview) else bytes(data)
        fifo.popleft()
    return None


def binary_file(producer: object) -> Any | None:
    """The file of a binary-mode FileProducer, else None.

    FileProducer keeps `file` and `type` ("i" or "a") as given (1.5.7-2.2.0); in binary mode
    more() returns the file's bytes as they are, so they can be read straight into a buffer
    instead (ASCII mode converts line endings)."""
    if getattr(producer, "type", None) != "i":
        return None
    file = getattr(producer, "file", None)
    return file if callable(getattr(file, "readinto", None)) else None


# --- the data channel (DTPHandler) --------------------------------------------------------


def dtp_initialized(dtp: Any) -> bool:
    """True once a transfer command handed the data channel its file or producer
    (`_initialized`, set by enable_receiving and push/push_with_producer: 1.5.7-2.2.0)."""
    return bool(dtp._initialized)


def set_transfer_reply(dtp: Any, reply: str, logfun: Callable[..., Any]) -> None:
    """The final reply DTPHandler.close() sends on the control connection (`_resp`, a
    (text, logfun) tuple or (); 1.5.7-2.2.0); "" sends none."""
    dtp._resp = (reply, logfun) if reply else ()


def transfer_reply_set(dtp: Any) -> bool:
    """True when the data channel already has its final reply."""
    return bool(dtp._resp)


def transfer_reply(dtp: Any) -> str:
    """The final reply the data channel sends when it closes ("" when none is set yet):
    log_transfer, called from DTPHandler.close() before the reply goes out, reads it."""
    return str(dtp._resp[0]) if dtp._resp else ""


def data_wrapper(dtp: Any) -> Callable[[bytes], bytes] | None:
    """The ASCII-mode line-ending converter for uploads, or None (`_data_wrapper`)."""
    wrapper: Callable[[bytes], bytes] | None = dtp._data_wrapper
    return wrapper


# --- the control channel (FTPHandler) -----------------------------------------------------


def extra_features(handler: Any) -> list[str]:
    """The lines FEAT adds to pyftpdlib's own (`_extra_feats`, a list: 1.5.7-2.2.0)."""
    return list(handler._extra_feats)


def set_extra_features(handler: Any, features: list[str]) -> None:
    """Replace this handler's extra FEAT lines (a new list: the class default is shared)."""
    handler._extra_feats = list(features)


class PassiveHook:
    """Mixin before FTPHandler: PASV and EPSV both go through FTPHandler's private
    `_make_epasv(extmode)` (1.5.7-2.2.0); this routes them to `make_passive(extmode, open)`,
    where `open()` runs pyftpdlib's own (opens the passive listener, sends 227/229)."""

    def make_passive(self, extmode: bool, open_listener: Callable[[], None]) -> None:
        """Open a passive listener; override to refuse (the default just opens it)."""
        open_listener()

    def _make_epasv(self, extmode: bool = False) -> None:
        parent: Any = super()
        self.make_passive(extmode, lambda: parent._make_epasv(extmode))


def close_data_path(handler: Any) -> None:
    """Close this session's passive listener or active connector (`_shutdown_connecting_dtp`,
    1.5.7-2.2.0); a data connection already made is left alone."""
    handler._shutdown_connecting_dtp()


def debug_lines(handler: Any) -> bool:
    """True when pyftpdlib logs per-command lines (`_log_debug`: its logger at DEBUG when the
    session started; 1.5.7-2.2.0). A logline override must honour it as the original does."""
    return bool(handler._log_debug)


def transfer_type(handler: Any) -> str:
    """The TYPE the session selected: "a" (ASCII) or "i" (binary, the default;
    `_current_type`, 1.5.7-2.2.0)."""
    return str(getattr(handler, "_current_type", "i"))


def mlst_facts(handler: Any) -> list[str]:
    """The MLSD/MLST facts this session selected with OPTS MLST (`_current_facts`)."""
    return list(handler._current_facts)


def data_path_open(handler: Any) -> bool:
    """True when a data connection exists or is being made (PASV listener, PORT connector)."""
    return (
        handler.data_channel is not None
        or handler._dtp_acceptor is not None
        or handler._dtp_connector is not None
    )


def own_passive_listener(handler: Any) -> Any:
    """This session's open passive listener (`_dtp_acceptor`), or None; read from the
    instance only (a class default does not count)."""
    return vars(handler).get("_dtp_acceptor")


def drop_passive_listener(handler: Any) -> None:
    """Forget the passive listener a failed PASV left half made (it closed itself)."""
    handler._dtp_acceptor = None


def forget_data_path(handler: Any) -> None:
    """The PASV/PORT is spent: close the passive listener, forget the active connector.

    The connector handed its socket to the data channel: closing it would close (and
    unregister) that channel's socket, so it is only forgotten (1.5.7-2.2.0)."""
    if handler._dtp_acceptor is not None:
        handler._dtp_acceptor.close()
        handler._dtp_acceptor = None
    handler._dtp_connector = None


def take_queued_transfer(handler: Any) -> tuple[Any, str, bool] | None:
    """Remove the transfer that waits for a data connection: (file, command, receive).

    `_in_dtp_queue` is (file, cmd) for uploads, `_out_dtp_queue` (data, isproducer, file,
    cmd) for downloads and listings (1.5.7-2.2.0)."""
    queued: tuple[Any, str, bool] | None = None
    if handler._in_dtp_queue is not None:
        file, cmd = handler._in_dtp_queue
        queued = (file, cmd, True)
    elif handler._out_dtp_queue is not None:
        _, _, file, cmd = handler._out_dtp_queue
        queued = (file, cmd, False)
    handler._in_dtp_queue = handler._out_dtp_queue = None
    return queued


def complete_login(handler: Any, home: str, reply: str, username: str) -> None:
    """Log `handler` in with `reply` instead of FTPHandler.handle_auth_success's 230.

    A copy of handle_auth_success after its reply (1.5.7, 2.0.1, 2.2.0: the same state set
    in the same order, minus pyftpdlib's own "logged in" log line): RFC 4217 wants 232 for
    a login the client certificate completed, and pyftpdlib can only say 230."""
    handler.respond(reply)
    handler.authenticated = True
    handler.password = ""
    handler.attempted_logins = 0
    handler.fs = handler.abstracted_fs(home, handler)
    handler.on_login(username)


# --- the loop and the listeners -----------------------------------------------------------


def clear_scheduled(ioloop: Any) -> None:
    """Drop every scheduled call without running or cancelling it (`sched._tasks`, a list
    in 1.5.7-2.2.0); for a loop whose channels are all closed."""
    ioloop.sched._tasks.clear()


def share_ip_map(server: Any, ip_map: list[str]) -> None:
    """Make `server` count connections per address in `ip_map`, shared with other servers.

    FTPServer.ip_map is the list FTPHandler appends its client's address to and checks
    max_cons_per_ip against (public but undocumented, 1.5.7-2.2.0)."""
    server.ip_map = ip_map
