"""The daemon's event loop sleeps until its next scheduled call: not forever, not in slices."""

from __future__ import annotations

import socket
import time
from typing import Any

from pyftpdlib.ioloop import Acceptor, IOLoop

from ftps_server.server.pyftpdlib_adapter import run_loop


def test_an_idle_loop_wakes_for_its_calls_and_only_for_them() -> None:
    ioloop = IOLoop()
    try:
        listener = Acceptor(ioloop=ioloop)  # a channel nobody connects to: the loop is idle
        listener.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        timeouts: list[Any] = []
        poll = ioloop.poll

        def counted(timeout: Any) -> None:
            timeouts.append(timeout)
            poll(timeout)

        ioloop.poll = counted
        fired: list[float] = []
        # scheduled before the loop starts, as the watchdog ping is
        ioloop.call_later(0.5, lambda: fired.append(time.monotonic()))
        ioloop.call_later(0.8, listener.close)  # no channel left: the loop returns
        start = time.monotonic()
        run_loop(ioloop)
        assert fired, "the scheduled call never ran"
        assert 0.45 <= fired[0] - start < 0.75
        # two sleeps, each as long as the next call is away (a 0.2 s slice would be 5+)
        assert len(timeouts) <= 3, timeouts
        assert timeouts[0] is not None and timeouts[0] > 0.4
    finally:
        ioloop.close()
