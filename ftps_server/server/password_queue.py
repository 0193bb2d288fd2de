"""The queue of password checks: bounded, fair between addresses and users, one hash per guess.

`auth` decides what a check means; this module only decides when a scrypt runs. Every PASS
that needs a hash joins a `Job` keyed by a tag of (user, stored hash, password): identical
checks in flight share one run. Jobs wait here, not in the thread pool's unbounded queue, so
that a bound can answer 421, a job whose clients have all gone can be dropped before it runs,
and no address or user holds more than its share of the workers. Event loop thread only,
except the worker function itself.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .wakeup import LoopWaker

__all__ = ["Job", "PasswordQueue", "default_workers"]

log = logging.getLogger(__name__)

Verify = Callable[[str, str], tuple[bool, str | None]]  # (password, stored) -> (ok, problem)


@dataclass(eq=False)
class Job:
    """One scrypt run and the PASS commands (`checks`, owned by auth) waiting on it."""

    tag: bytes
    name: str  # the user name as typed
    address: str  # the ban key of the address whose PASS started it
    password: str
    stored: str
    checks: list[Any] = field(default_factory=list)


def default_workers() -> int:
    """One worker per core, at most 8.

    `hashlib.scrypt` releases the GIL (measured here: two threads on two cores take the time
    of one hash), so threads use every core; the cap bounds memory at 32 MiB per running hash.
    """
    return max(1, min(os.cpu_count() or 2, 8))


class PasswordQueue:
    """Runs jobs on `workers` threads; at most `limit` wait, `per_address`/`per_user` run."""

    def __init__(
        self,
        verify: Verify,
        *,
        workers: int,
        limit: int,
        per_address: int,
        per_user: int,
        settle: Callable[[Job], bool],
        done: Callable[[Job, bool, str | None], None],
    ) -> None:
        # settle(job): drop departed checks, answer from the cache; True when nothing is
        # left to hash. done(job, ok, problem): the verdict, on the loop thread.
        self.workers, self.limit = workers, limit
        self.per_address, self.per_user = per_address, per_user
        self._verify, self._settle, self._done = verify, settle, done
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftps-auth")
        self._waiting: deque[Job] = deque()
        self._jobs: dict[bytes, Job] = {}  # waiting and running, by tag
        self._running = 0
        self._by_address: Counter[str] = Counter()
        self._by_user: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        """Jobs not started yet."""
        return len(self._waiting)

    def full(self) -> bool:
        """True when a new job would exceed the bound."""
        return len(self._waiting) >= self.limit

    def job(self, tag: bytes) -> Job | None:
        """The job in flight for `tag`, to join instead of hashing the same thing twice."""
        return self._jobs.get(tag)

    def add(self, job: Job) -> None:
        """Queue a new job (the caller checked `full`)."""
        self._jobs[job.tag] = job
        self._waiting.append(job)

    def dispatch(self, waker: LoopWaker) -> None:
        """Settle waiting jobs, then start those with room, oldest first."""
        kept: deque[Job] = deque()
        for job in self._waiting:
            if self._settle(job):
                del self._jobs[job.tag]
            elif self._has_room(job):
                self._start(job, waker)
            else:
                kept.append(job)
        self._waiting = kept

    def close(self) -> None:
        """Stop the workers; jobs not started are forgotten."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._waiting.clear()
        self._jobs.clear()

    def _has_room(self, job: Job) -> bool:
        return (
            self._running < self.workers
            and self._by_address[job.address] < self.per_address
            and self._by_user[job.name] < self.per_user
        )

    def _start(self, job: Job, waker: LoopWaker) -> None:
        self._running += 1
        self._by_address[job.address] += 1
        self._by_user[job.name] += 1
        future = self._pool.submit(self._verify, job.password, job.stored)

        def finished(fut: Future[tuple[bool, str | None]]) -> None:
            waker.call_soon_threadsafe(lambda: self._finished(job, fut, waker))

        future.add_done_callback(finished)

    def _finished(self, job: Job, fut: Future[tuple[bool, str | None]], waker: LoopWaker) -> None:
        self._running -= 1
        self._by_address[job.address] -= 1
        self._by_user[job.name] -= 1
        self._by_address += Counter()  # drops the zero counts, so idle addresses cost nothing
        self._by_user += Counter()
        self._jobs.pop(job.tag, None)
        try:
            ok, problem = fut.result()
        except Exception as exc:  # a crashed worker is a failed login, never a login
            ok, problem = False, f"verification crashed: {exc!r}"
        self._done(job, ok, problem)
        self.dispatch(waker)
