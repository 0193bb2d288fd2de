"""pyftpdlib's log lines are built (and escaped) only when they will be written (ftp.py)."""

from __future__ import annotations

import logging

import pytest

from ftps_server.server.data_channel import FtpsDataHandler
from ftps_server.server.ftp import FtpsHandler, _would_log


@pytest.mark.parametrize(
    ("level", "method", "expected"),
    [
        (logging.INFO, "debug", False),  # every reply pyftpdlib logs, without --debug
        (logging.INFO, "info", True),
        (logging.INFO, "warning", True),
        (logging.DEBUG, "debug", True),  # --debug
        (logging.WARNING, "info", False),
    ],
)
def test_a_line_is_built_only_for_a_level_that_is_written(
    level: int, method: str, expected: bool
) -> None:
    logger = logging.getLogger("ftps-server-test.log-lines")
    old = logger.level
    logger.setLevel(level)
    try:
        assert _would_log(getattr(logger, method)) is expected
    finally:
        logger.setLevel(old)


def test_anything_but_a_logger_method_is_always_called() -> None:
    assert _would_log(print)
    assert _would_log(lambda line: None)


class _Unprintable:
    def __repr__(self) -> str:
        raise AssertionError("repr walked into the transfer's file object")


def test_handler_repr_names_the_session_without_walking_it() -> None:
    # pyftpdlib puts repr(handler) into a debug line on every close, debug on or not
    session = object.__new__(FtpsHandler)
    assert repr(session) == "<FtpsHandler session - ?:0>"  # before __init__ got far
    session.session_log = type("Log", (), {"id": "0123abcd"})()
    session.remote_ip, session.remote_port = "::1", 40000
    session.username = "alice"
    data = object.__new__(FtpsDataHandler)
    data.cmd_channel = session
    data.file_obj = _Unprintable()
    session.data_channel = data  # pyftpdlib's own repr would describe its file
    assert repr(session) == str(session) == "<FtpsHandler session 0123abcd [::1]:40000>"
    assert repr(data) == f"<FtpsDataHandler of {session!r}>"
