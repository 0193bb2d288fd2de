"""The logging layer: priorities, structured fields, stderr lines, journal selection."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ftps_server.journal.log as journal
import ftps_server.journal.message_ids as message_ids

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("ftps_server.test_journal")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers.clear()


def _record(level: int, msg: str, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("ftps_server.x", level, __file__, 10, msg, (), None, "f")
    if fields is not None:
        record.fields = fields
    return record


def test_priorities() -> None:
    assert [journal.priority(lv) for lv in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]
    assert journal.priority(25) == 6 and journal.priority(5) == 7


def test_fields_are_journal_safe() -> None:
    fields = journal.record_fields(
        _record(30, "m", {"message_id": "abc", "cert-name": "main", "DAYS_LEFT": 3, "X": None})
    )
    assert fields == {"MESSAGE_ID": "abc", "CERT_NAME": "main", "DAYS_LEFT": "3"}
    # a record's own fields cannot forge the message or its priority
    forged = journal.journal_fields(_record(30, "real", {"MESSAGE": "fake", "PRIORITY": "7"}))
    assert (forged["MESSAGE"], forged["PRIORITY"]) == ("real", "4")


def test_stderr_line_has_priority_prefix_and_fields(logger: logging.Logger) -> None:
    stream = io.StringIO()
    logger.addHandler(journal.StderrHandler(stream))
    logger.critical(
        "certificate main expired",
        extra={"fields": {"MESSAGE_ID": message_ids.CERT_EXPIRED, "CERT_NAME": "my cert"}},
    )
    logger.info("two\nlines")
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "<2>CRITICAL ftps_server.test_journal: certificate main expired "
        f'MESSAGE_ID={message_ids.CERT_EXPIRED} CERT_NAME="my cert"'
    )
    assert lines[1:] == [
        "<6>INFO ftps_server.test_journal: two",
        "<6>INFO ftps_server.test_journal: lines",
    ]


def test_structured_handler_sends_every_field(logger: logging.Logger) -> None:
    sent: list[dict[str, Any]] = []
    logger.addHandler(journal.StructuredJournalHandler(lambda **kw: sent.append(kw)))
    logger.warning(
        "expiring", extra={"fields": {"MESSAGE_ID": message_ids.CERT_EXPIRING, "DAYS_LEFT": 13}}
    )
    (entry,) = sent
    assert entry["MESSAGE"] == "expiring"
    assert entry["PRIORITY"] == "4"
    assert entry["MESSAGE_ID"] == message_ids.CERT_EXPIRING
    assert entry["DAYS_LEFT"] == "13"
    assert entry["SYSLOG_IDENTIFIER"] == "ftps-server"
    assert entry["CODE_FILE"].endswith("test_journal.py")
    assert isinstance(entry["CODE_LINE"], int)  # systemd.journal.send insists


def test_private_key_text_never_logged(logger: logging.Logger) -> None:
    stream = io.StringIO()
    logger.addHandler(journal.StderrHandler(stream))
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----\n"
    logger.error("bad file: %s", pem, extra={"fields": {"DETAIL": pem}})
    assert "MIIEvQIBADANBgkq" not in stream.getvalue()
    assert "[private key removed]" in stream.getvalue()


def test_stderr_fields_quoted_only_where_a_reader_needs_it(logger: logging.Logger) -> None:
    stream = io.StringIO()
    logger.addHandler(journal.StderrHandler(stream))
    fields = {"A": "plain", "B": "", "C": 'say "hi"', "D": "back\\slash", "E": "x=y", "F": "1 2"}
    logger.info("m", extra={"fields": fields})
    assert stream.getvalue() == (
        '<6>INFO ftps_server.test_journal: m A=plain B="" C="say \\"hi\\"" '
        'D="back\\\\slash" E="x=y" F="1 2"\n'
    )


def test_private_key_in_one_field_leaves_the_others_alone() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"
    fields = journal.record_fields(
        _record(20, "m", {"KEY": pem, "NEXT": "-----BEGIN is not a key", "N": 7})
    )
    assert fields == {
        "KEY": "[private key removed]",
        "NEXT": "-----BEGIN is not a key",
        "N": "7",
    }


def test_stderr_is_journal_compares_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stream"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal.stderr_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not journal.stderr_is_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal.stderr_is_journal(stream)


def _installed_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_ftps_server_handler", False)]


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_logging_chooses_and_replaces(
    monkeypatch: pytest.MonkeyPatch, restore_root: None
) -> None:
    monkeypatch.setenv("FTPS_SERVER_LOG", "stderr")
    journal.setup_logging(debug=True)
    journal.setup_logging(debug=False)
    (handler,) = _installed_handlers()
    assert isinstance(handler, journal.StderrHandler)
    assert logging.getLogger().level == logging.INFO
    pytest.importorskip("systemd.journal")
    monkeypatch.setenv("FTPS_SERVER_LOG", "journal")
    journal.setup_logging(debug=False)
    (handler,) = _installed_handlers()
    assert isinstance(handler, journal.StructuredJournalHandler)


PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"


def _entry_both_ways(handler: logging.Handler, level: int = logging.WARNING) -> tuple[int, int]:
    """One entry through log_event, then the same through logging; how many LogRecords the
    first made, and its line."""
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    handler._ftps_server_handler = True  # type: ignore[attr-defined]  # as setup_logging marks its own
    log = logging.getLogger("ftps_server.test_event")
    text, fields = f"key {PEM} in a message", {"MESSAGE_ID": "abc", "DETAIL": PEM, "N": 7}
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    logging.setLogRecordFactory(counting)
    try:
        line = sys._getframe().f_lineno + 1
        journal.log_event(log, level, text, fields)
        records = len(made)
        log.log(level, "%s", text, extra={"fields": fields})
    finally:
        logging.setLogRecordFactory(factory)
    return records, line


def test_log_event_is_the_journal_entry_logging_makes_without_a_record(
    restore_root: None,
) -> None:
    sent: list[dict[str, Any]] = []
    made, line = _entry_both_ways(journal.StructuredJournalHandler(lambda **kw: sent.append(kw)))
    direct, logged = sent
    assert made == 0  # straight to the handler
    assert direct["CODE_LINE"] == line and logged["CODE_LINE"] == line + 2
    assert {**direct, "CODE_LINE": 0} == {**logged, "CODE_LINE": 0}
    assert direct["CODE_FUNC"] == "_entry_both_ways"
    assert direct["CODE_FILE"] == __file__ and direct["THREAD_NAME"] == "MainThread"
    assert direct["PRIORITY"] == "4" and direct["N"] == "7" and direct["MESSAGE_ID"] == "abc"
    assert "MHcCAQEEIB" not in json.dumps(direct)
    assert direct["DETAIL"] == "[private key removed]"


def test_log_event_is_the_stderr_line_logging_makes(restore_root: None) -> None:
    stream = io.StringIO()
    made, _line = _entry_both_ways(journal.StderrHandler(stream))
    direct, logged = stream.getvalue().splitlines()
    assert made == 0
    assert direct == logged
    assert direct.startswith("<4>WARNING ftps_server.test_event: key [private key removed]")
    assert "MHcCAQEEIB" not in stream.getvalue()


def test_log_event_goes_through_logging_when_another_handler_listens(
    restore_root: None,
) -> None:
    """A second handler (a test's capture, an administrator's), a filter, or a level that
    drops the entry: logging decides, as for any record."""
    sent: list[dict[str, Any]] = []
    ours = journal.StructuredJournalHandler(lambda **kw: sent.append(kw))
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    other = Capture()
    log = logging.getLogger("ftps_server.test_event")
    _entry_both_ways(ours)
    sent.clear()
    logging.getLogger().addHandler(other)
    journal.log_event(log, logging.INFO, "seen by both", {"MESSAGE_ID": "abc"})
    assert [e["MESSAGE"] for e in sent] == ["seen by both"]
    assert [(r.getMessage(), r.fields) for r in captured] == [  # type: ignore[attr-defined]
        ("seen by both", {"MESSAGE_ID": "abc"})
    ]
    logging.getLogger().removeHandler(other)
    log.addFilter(lambda r: False)
    try:
        journal.log_event(log, logging.INFO, "filtered", {})
    finally:
        log.filters.clear()
    ours.setLevel(logging.WARNING)
    journal.log_event(log, logging.INFO, "below the handler's level", {})
    logging.getLogger().setLevel(logging.ERROR)
    journal.log_event(log, logging.WARNING, "below the logger's level", {})
    assert [e["MESSAGE"] for e in sent] == ["seen by both"]


_NATIVE_RECEIVER = textwrap.dedent(
    """
    import json, logging, os, socket, struct, sys
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    os.makedirs("/run/systemd/journal")
    sock.bind("/run/systemd/journal/socket")
    sock.settimeout(20)
    os.environ["FTPS_SERVER_LOG"] = "journal"
    import ftps_server.journal.log as journal
    journal.setup_logging(False)
    logging.getLogger("ftps_server.reminders.run").critical(
        "certificate main expired", extra={"fields": json.loads(sys.argv[1])})
    data, fields = sock.recv(1 << 20), {}
    while data:  # the journal's native protocol: KEY=value lines or KEY, u64 length, value
        line, _, data = data.partition(b"\\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
        else:
            (size,) = struct.unpack("<Q", data[:8])
            key, value, data = line, data[8:8 + size], data[9 + size:]
        fields[key.decode()] = value.decode()
    print(json.dumps(fields))
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_native_journal_protocol_in_private_mount_namespace() -> None:
    """systemd-python really sends our fields: a private /run receives the datagram."""
    pytest.importorskip("systemd.journal")
    fields = {"MESSAGE_ID": message_ids.CERT_EXPIRED, "CERT_NAME": "main", "DAYS_LEFT": -2}
    script = f'mount -t tmpfs tmpfs /run && exec {sys.executable} -c "$0" "$1"'
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, _NATIVE_RECEIVER, json.dumps(fields)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode and "Operation not permitted" in result.stderr:
        pytest.skip("mount namespaces are not permitted here")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["MESSAGE"] == "certificate main expired"
    assert got["PRIORITY"] == "2"
    assert got["MESSAGE_ID"] == message_ids.CERT_EXPIRED
    assert (got["CERT_NAME"], got["DAYS_LEFT"]) == ("main", "-2")
    assert got["SYSLOG_IDENTIFIER"] == "ftps-server"
