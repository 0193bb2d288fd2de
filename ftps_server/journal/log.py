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
import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TextIO

__all__ = [
    "PRIORITIES",
    "StderrHandler",
    "StructuredJournalHandler",
    "journal_fields",
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
    fields = {
        "MESSAGE": _redact(text),
        "PRIORITY": str(priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
        "THREAD_NAME": record.threadName or "",
    }
    fields.update(record_fields(record))
    return fields


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
            stream = self._stream if self._stream is not None else sys.stderr
            text = self.format(record)
            if _is_terminal(stream):  # a human at a terminal reads no "<6>" prefixes
                text = re.sub(r"(?m)^<\d>", "", text)
            stream.write(text + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)

    def format(self, record: logging.LogRecord) -> str:
        """The record as prefixed lines."""
        message = _redact(record.getMessage())
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        fields = _field_text(record_fields(record))
        lines = message.splitlines() or [""]
        if fields:
            lines[0] = f"{lines[0]} {fields}"
        prefix = f"<{priority(record.levelno)}>{record.levelname} {record.name}: "
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
