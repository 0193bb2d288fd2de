"""pyftpdlib's log lines are built (and escaped) only when they will be written (ftp.py)."""

from __future__ import annotations

import logging

import pytest

from ftps_server.server.ftp import _would_log


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
