"""Callbacks from worker threads run on the IOLoop thread, in order, none lost."""

from __future__ import annotations

import threading

from auth_fakes import run_until
from pyftpdlib.ioloop import IOLoop

from ftps_server.server.wakeup import LoopWaker


def test_many_threads_many_callbacks() -> None:
    loop = IOLoop()
    waker = LoopWaker(loop)
    seen: list[tuple[int, int, str]] = []

    def worker(n: int) -> None:
        for i in range(2000):  # more than a socket buffer of wake-up bytes
            waker.call_soon_threadsafe(
                lambda n=n, i=i: seen.append((n, i, threading.current_thread().name))
            )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run_until(loop, lambda: len(seen) == 8000)
    assert {name for _, _, name in seen} == {threading.current_thread().name}
    for n in range(4):
        assert [i for m, i, _ in seen if m == n] == list(range(2000))
    waker.close()
    assert waker._fileno not in loop.socket_map
    loop.close()


def test_a_failing_callback_does_not_stop_the_others() -> None:
    loop = IOLoop()
    waker = LoopWaker(loop)
    seen: list[int] = []
    waker.call_soon_threadsafe(lambda: seen.append(1))
    waker.call_soon_threadsafe(lambda: 1 / 0)  # type: ignore[func-returns-value]
    waker.call_soon_threadsafe(lambda: seen.append(3))
    run_until(loop, lambda: len(seen) == 2)
    assert seen == [1, 3]
    loop.close()
