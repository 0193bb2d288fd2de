"""Failed-login bookkeeping per client address: growing delays and temporary bans.

Pure logic over an injectable monotonic clock, so tests drive hours of ban time without
sleeping. The event loop owns the single instance; nothing here is thread safe or needs to be.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["BanPolicy", "Clock", "FailureTracker", "Verdict", "address_key"]

Clock = Callable[[], float]


@dataclass(frozen=True)
class BanPolicy:
    """How many failures within `window` seconds ban an address for `ban_time` seconds.

    The delay before a failed login is answered starts at `first_delay` and doubles with
    each further failure in the window, up to `max_delay`: a client guessing passwords is
    slowed down even before the ban, and a user who mistypes once barely notices.
    """

    max_failures: int = 5
    window: float = 600.0
    ban_time: float = 900.0
    first_delay: float = 0.5
    max_delay: float = 8.0
    prefix_v6: int = 64

    def delay(self, failures: int) -> float:
        """Seconds to hold back the reply to the `failures`-th failure in the window."""
        if failures <= 0:
            return 0.0
        return min(self.first_delay * 2 ** (failures - 1), self.max_delay)


@lru_cache(maxsize=4096)  # several times per connection, for a few thousand peers at most
def address_key(address: str, prefix_v6: int = 64) -> str:
    """What failures are counted against: an IPv4 address, or its IPv6 /`prefix_v6` network.

    One IPv6 host usually holds a whole /64, so counting single addresses would let it
    guess passwords from 2**64 fresh addresses.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4 or prefix_v6 >= 128:
        return address
    return str(ipaddress.ip_network(f"{ip}/{prefix_v6}", strict=False))


@dataclass(frozen=True)
class Verdict:
    """What a failure leads to: hold the reply `delay` seconds; `banned` if it tipped a ban."""

    failures: int
    delay: float
    banned: bool
    ban_seconds: float = 0.0


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    banned_until: float | None = None
    pending: int = 0  # logins submitted and not yet decided: each may still be a failure


class FailureTracker:
    """Counts failures per address within a sliding window and bans repeat offenders."""

    def __init__(self, policy: BanPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._records: dict[str, _Record] = {}

    def set_policy(self, policy: BanPolicy) -> None:
        """Apply new limits (on reload); bans in force keep their end time."""
        self.policy = policy

    def _prune(self, record: _Record, now: float) -> None:
        cutoff = now - self.policy.window
        while record.failures and record.failures[0] <= cutoff:
            record.failures.popleft()

    def key(self, address: str) -> str:
        """The address or network `address` is counted under."""
        return address_key(address, self.policy.prefix_v6)

    def reserve(self, address: str) -> bool:
        """Count a login about to be checked; False when the address may not try now.

        A login still being checked counts as a failure until it is proven right, so
        parallel attempts cannot overshoot `max_failures` while their checks run.
        """
        now = self.clock()
        record = self._records.setdefault(self.key(address), _Record())
        self._prune(record, now)
        if record.banned_until is not None and record.banned_until > now:
            return False
        limited = self.policy.ban_time > 0  # without bans, failures only slow answers down
        if limited and len(record.failures) + record.pending >= self.policy.max_failures:
            return False
        record.pending += 1
        return True

    def release(self, address: str) -> None:
        """A reserved login succeeded or was never checked: it no longer counts."""
        record = self._records.get(self.key(address))
        if record is not None and record.pending > 0:
            record.pending -= 1

    def failure(self, address: str, *, reserved: bool = False) -> Verdict:
        """Record one failed login from `address` and say how to answer it.

        `reserved`: the login was counted by `reserve`; its reservation becomes this failure.
        """
        now = self.clock()
        record = self._records.setdefault(self.key(address), _Record())
        if reserved and record.pending > 0:
            record.pending -= 1
        self._prune(record, now)
        record.failures.append(now)
        count = len(record.failures)
        delay = self.policy.delay(count)
        if count >= self.policy.max_failures and self.policy.ban_time > 0:
            already = record.banned_until is not None and record.banned_until > now
            record.banned_until = now + self.policy.ban_time
            # the failures that earned the ban are spent: after it, the address starts afresh
            record.failures.clear()
            return Verdict(count, delay, banned=not already, ban_seconds=self.policy.ban_time)
        return Verdict(count, delay, banned=False)

    def ban_remaining(self, address: str) -> float:
        """Seconds left on the ban of `address`, 0.0 when it is not banned."""
        record = self._records.get(self.key(address))
        if record is None or record.banned_until is None:
            return 0.0
        return max(0.0, record.banned_until - self.clock())

    def expire(self) -> list[str]:
        """Forget stale records; return the addresses whose ban has just ended."""
        now = self.clock()
        lifted = []
        for address, record in list(self._records.items()):
            if record.banned_until is not None and record.banned_until <= now:
                record.banned_until = None
                lifted.append(address)
            self._prune(record, now)
            if record.banned_until is None and not record.failures and not record.pending:
                del self._records[address]
        return lifted

    def banned(self) -> dict[str, float]:
        """Every address under a ban and the seconds left on it (the metrics' ban gauge)."""
        now = self.clock()
        return {
            a: r.banned_until - now
            for a, r in self._records.items()
            if r.banned_until is not None and r.banned_until > now
        }
