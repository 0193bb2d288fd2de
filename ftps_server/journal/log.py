"""Logging to the systemd journal with structured fields, or to stderr with priority prefixes.

Every module logs through `logging.getLogger(__name__)` and attaches structured fields as
``logger.log(level, msg, extra={"fields": {"MESSAGE_ID": ..., "CERT_NAME": ...}})``. This
module is the only one that imports `systemd`: `setup_logging` picks the journal's native
protocol when stderr is connected to the journal (or ``FTPS_SERVER_LOG=journal``) and
systemd-python is installed; otherwise each record becomes one stderr line
``<N>LEVEL logger: message KEY=value ...`` whose ``<N>`` prefix journald (and only journald)
turns into the entry's priority, so the priority survives even without systemd-python.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any, TextIO

__all__ = [
    "PRIORITIES",
    "Event",
    "StderrHandler",
    "StructuredJournalHandler",
    "journal_fields",
    "log_event",
    "priority",
    "record_fields",
    "setup_logging",
    "stderr_is_journal",
]

SYSLOG_IDENTIFIER = "ftps-server"

#: logging level -> syslog priority (sd-daemon(3)): crit 2, err 3, warning 4, info 6, debug 7
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

# Journal field names: upper-case letters, digits and underscores, not starting with "_"
# (leading underscores are trusted fields only journald itself may set).
_FIELD_BAD_CHARS = re.compile(r"[^A-Z0-9_]")
# Fields the handler sets itself; a record's own "fields" must not overwrite them.
_RESERVED = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"}
# Defence in depth: whatever a caller passes, PEM private key text never reaches a log.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
_HANDLER_MARK = "_ftps_server_handler"


def priority(levelno: int) -> int:
    """The syslog priority for a logging level (levels in between round towards debug)."""
    exact = PRIORITIES.get(levelno)
    if exact is not None:  # every record but those of custom levels
        return exact
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


@lru_cache(maxsize=256)  # a few dozen names recur in every record
def _field_name(name: str) -> str:
    cleaned = _FIELD_BAD_CHARS.sub("_", name.upper()).lstrip("_")
    return cleaned[:64] or "FIELD"


def _redact(text: str) -> str:
    if "-----BEGIN" not in text:  # every record passes here: skip the regex when it cannot match
        return text
    return _PRIVATE_KEY.sub("[private key removed]", text)


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The structured fields a record carries in ``extra={"fields": {...}}``, as journal fields.

    Names are upper-cased and made journal-safe; None values are dropped; all values are text.
    """
    raw = getattr(record, "fields", None)
    if not isinstance(raw, Mapping):
        return {}
    return _clean_fields(raw)


def _clean_fields(raw: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw.items():
        if value is None:
            continue
        key = _field_name(str(name))
        if key not in _RESERVED:
            out[key] = value if type(value) is str else str(value)
    if "-----BEGIN" in "".join(out.values()):  # one test for all: the marker is rare
        return {key: _redact(value) for key, value in out.items()}
    return out


def journal_fields(record: logging.LogRecord, message: str | None = None) -> dict[str, str]:
    """Every journal field a record becomes: MESSAGE, PRIORITY, code location, own fields."""
    text = message if message is not None else record.getMessage()
    return _entry(
        text,
        record.levelno,
        record.name,
        (record.pathname, record.lineno, record.funcName),
        record.threadName or "",
        record_fields(record),
    )


def _entry(
    text: str,
    level: int,
    logger: str,
    where: tuple[str, int, str],
    thread: str,
    fields: dict[str, str],
) -> dict[str, str]:
    entry = {
        "MESSAGE": _redact(text),
        "PRIORITY": str(priority(level)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": logger,
        "CODE_FILE": where[0],
        "CODE_LINE": str(where[1]),
        "CODE_FUNC": where[2],
        "THREAD_NAME": thread,
    }
    entry.update(fields)
    return entry


_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def _quote(value: str) -> str:
    """`value` in double quotes, its backslashes, quotes and line feeds escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _field_text(fields: dict[str, str]) -> str:
    """``KEY=value ...``, values quoted where they must be."""
    plain = _NEEDS_QUOTES.search
    return " ".join([f"{k}={v if v and not plain(v) else _quote(v)}" for k, v in fields.items()])


class StderrHandler(logging.Handler):
    """One line per record: ``<N>LEVEL logger: message KEY=value ...``.

    A multi-line message (a traceback) repeats the prefix on every line, because journald
    reads each stderr line as its own entry and takes the priority from each prefix.
    Without an explicit stream it writes to whatever `sys.stderr` is at that moment (as
    logging's last-resort handler does), so a replaced or closed stderr is never held on to.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record; failures go to logging's error path, never raise."""
        try:
            self._write(self.format(record))
        except Exception:
            self.handleError(record)

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        if _is_terminal(stream):  # a human at a terminal reads no "<6>" prefixes
            text = re.sub(r"(?m)^<\d>", "", text)
        stream.write(text + "\n")
        stream.flush()

    def format(self, record: logging.LogRecord) -> str:
        """The record as prefixed lines."""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        return _stderr_lines(message, record.levelno, record.name, record_fields(record))

    def emit_direct(self, event: Event) -> None:
        """`emit` for a record `log_event` did not make (see there; it holds the lock)."""
        self._write(
            _stderr_lines(event.text, event.level, event.logger, _clean_fields(event.fields))
        )


def _stderr_lines(message: str, level: int, logger: str, fields: dict[str, str]) -> str:
    lines = _redact(message).splitlines() or [""]
    text = _field_text(fields)
    if text:
        lines[0] = f"{lines[0]} {text}"
    prefix = f"<{priority(level)}>{logging.getLevelName(level)} {logger}: "
    return "\n".join(prefix + line for line in lines)


# isatty() is a system call; asked once per stream, not per record (weak: a replaced
# stderr is not kept alive by the answer)
_TERMINALS: weakref.WeakKeyDictionary[TextIO, bool] = weakref.WeakKeyDictionary()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return _TERMINALS[stream]
    except (KeyError, TypeError):
        pass
    try:
        answer = stream.isatty()
    except (AttributeError, ValueError):
        answer = False
    with contextlib.suppress(TypeError):  # a stream with no weak references: asked each time
        _TERMINALS[stream] = answer
    return answer


Sender = Callable[..., Any]


class StructuredJournalHandler(logging.Handler):
    """Sends each record to the journal with its structured fields (native protocol).

    `sender` is `systemd.journal.send` in production; it receives keyword arguments only.
    """

    def __init__(self, sender: Sender, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record; a failure goes to logging's own error path, never raises."""
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            fields: dict[str, Any] = journal_fields(record, message)
            # systemd.journal.send formats CODE_LINE with {:d}: it must stay an int
            fields["CODE_LINE"] = record.lineno
            self._sender(**fields)
        except Exception:
            self.handleError(record)

    def emit_direct(self, event: Event) -> None:
        """`emit` for a record `log_event` did not make (see there; it holds the lock)."""
        code = event.caller.f_code
        where = (code.co_filename, event.caller.f_lineno, code.co_name)
        fields: dict[str, Any] = _entry(
            event.text,
            event.level,
            event.logger,
            where,
            threading.current_thread().name,
            _clean_fields(event.fields),
        )
        fields["CODE_LINE"] = where[1]  # an int, as in emit
        self._sender(**fields)


@dataclass(slots=True)  # not frozen: made for every entry, and frozen costs a call per field
class Event:
    """A record `log_event` hands to the handler itself (no LogRecord made)."""

    level: int
    logger: str
    text: str
    fields: Mapping[str, Any]
    caller: FrameType  # where it was logged: CODE_FILE, CODE_LINE, CODE_FUNC

    def record(self) -> logging.LogRecord:
        """The LogRecord logging would have made (for logging's error report)."""
        code = self.caller.f_code
        return logging.LogRecord(
            self.logger, self.level, code.co_filename, self.caller.f_lineno, self.text, None, None
        )


def log_event(logger: logging.Logger, level: int, text: str, fields: Mapping[str, Any]) -> None:
    """``logger.log(level, text, extra={"fields": fields})``, the same entry, made cheaper.

    Every session logs several entries (connect, TLS, login, each transfer, end); through
    logging each one builds a LogRecord, walks the stack for its caller and passes a chain of
    handler checks: most of its cost. When the handler `setup_logging` installed is the only
    one on the way (no other handler, no filter), the entry goes to it directly. Anything
    else that listens (a test's capture, an administrator's filter) gets the usual record."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_handler(logger, level)
    if handler is None:
        logger.log(level, "%s", text, extra={"fields": fields}, stacklevel=2)
        return
    event = Event(level, logger.name, text, fields, sys._getframe(1))
    handler.acquire()  # what Handler.handle does around emit, and emit's error path
    try:
        handler.emit_direct(event)
    except Exception:
        handler.handleError(event.record())
    finally:
        handler.release()


def _sole_handler(
    logger: logging.Logger, level: int
) -> StructuredJournalHandler | StderrHandler | None:
    """setup_logging's handler when a record of `logger` would reach it and no other."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        handlers = node.handlers
        if handlers:
            if node.parent is not None or len(handlers) != 1:
                return None  # a handler below the root, or a second one on it
            handler = handlers[0]
            if not getattr(handler, _HANDLER_MARK, False) or handler.filters:
                return None
            if level < handler.level:
                return None
            assert isinstance(handler, StructuredJournalHandler | StderrHandler)
            return handler
        if not node.propagate:
            return None
        node = node.parent
    return None


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is the journal's stream socket ($JOURNAL_STREAM)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def _journal_sender() -> Sender | None:
    # importlib keeps mypy's verdict the same whether or not systemd-python is installed
    try:
        journal = importlib.import_module("systemd.journal")  # only this module imports it
    except ImportError:
        return None
    send: Sender = journal.send
    return send


def _wants_journal() -> bool:
    choice = os.environ.get("FTPS_SERVER_LOG", "").lower()
    if choice == "stderr":
        return False
    return choice == "journal" or stderr_is_journal()


def setup_logging(debug: bool, *, stream: TextIO | None = None) -> None:
    """Route every logger to the journal or stderr; call once per process (again replaces it).

    ``FTPS_SERVER_LOG=journal`` or ``=stderr`` overrides the automatic choice.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    sender = _journal_sender() if _wants_journal() else None
    handler: logging.Handler
    handler = StructuredJournalHandler(sender) if sender else StderrHandler(stream)
    setattr(handler, _HANDLER_MARK, True)
    # no record field carries the process name or PID (the journal adds _PID itself):
    # not looking them up saves time on every record
    logging.logMultiprocessing = False
    logging.logProcesses = False
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
