"""Fixtures shared by several unit test files: a real pyftpdlib IOLoop and a clock moved by
hand (the auth tests), a real SMTP server and a journal capture (the reminder tests)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from auth_fakes import FakeClock
from pyftpdlib.ioloop import IOLoop
from reminder_support import JournalCapture, SmtpServer


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    yield loop
    loop.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A plain SMTP server on 127.0.0.1 (aiosmtpd) for the test."""
    with SmtpServer() as server:
        yield server


@pytest.fixture
def capture() -> Iterator[JournalCapture]:
    """Every ftps_server log record of the test, as the journal fields it would send."""
    handler = JournalCapture()
    logger = logging.getLogger("ftps_server")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
