"""Failure counting, growing delays and bans, driven by a hand-moved clock."""

from __future__ import annotations

from ftps_server.server.bans import BanPolicy, FailureTracker, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_delay_doubles_up_to_the_cap() -> None:
    policy = BanPolicy(first_delay=0.5, max_delay=4)
    assert [policy.delay(n) for n in range(7)] == [0, 0.5, 1, 2, 4, 4, 4]


def test_ban_after_n_failures_in_window_and_unban() -> None:
    clock = Clock()
    tracker = FailureTracker(BanPolicy(max_failures=3, window=60, ban_time=900), clock)
    assert not tracker.failure("192.0.2.1").banned
    clock.now = 30
    assert not tracker.failure("192.0.2.1").banned
    clock.now = 59
    verdict = tracker.failure("192.0.2.1")
    assert verdict.banned and verdict.failures == 3 and verdict.ban_seconds == 900
    assert tracker.ban_remaining("192.0.2.1") == 900
    assert tracker.ban_remaining("192.0.2.2") == 0
    clock.now = 59 + 899
    assert tracker.expire() == []
    clock.now = 59 + 900
    assert tracker.expire() == ["192.0.2.1"]
    assert tracker.ban_remaining("192.0.2.1") == 0
    assert tracker.expire() == []  # lifted once, reported once


def test_failures_outside_window_do_not_count() -> None:
    clock = Clock()
    tracker = FailureTracker(BanPolicy(max_failures=3, window=60, ban_time=900), clock)
    for t in (0, 50, 111, 170):
        clock.now = t
        verdict = tracker.failure("192.0.2.1")
        assert not verdict.banned
    assert verdict.failures == 2  # 111 and 170; 0 and 50 fell out of the window


def test_zero_ban_time_never_bans() -> None:
    tracker = FailureTracker(BanPolicy(max_failures=1, ban_time=0), Clock())
    assert not tracker.failure("192.0.2.1").banned
    assert tracker.ban_remaining("192.0.2.1") == 0


def test_new_policy_keeps_bans_in_force() -> None:
    clock = Clock()
    tracker = FailureTracker(BanPolicy(max_failures=1, ban_time=100), clock)
    tracker.failure("192.0.2.1")
    tracker.set_policy(BanPolicy(max_failures=10, ban_time=5))
    clock.now = 50
    assert tracker.ban_remaining("192.0.2.1") == 50


def test_expire_forgets_quiet_addresses() -> None:
    clock = Clock()
    tracker = FailureTracker(BanPolicy(window=10), clock)
    tracker.failure("192.0.2.1")
    clock.now = 11
    tracker.expire()
    assert tracker._records == {}


def test_logins_being_checked_count_toward_the_limit() -> None:
    tracker = FailureTracker(BanPolicy(max_failures=3, ban_time=900), Clock())
    assert all(tracker.reserve("192.0.2.1") for _ in range(3))
    assert not tracker.reserve("192.0.2.1")  # three in flight could already be the ban
    assert tracker.reserve("192.0.2.2")  # another address is not affected
    tracker.release("192.0.2.1")  # one proved right
    assert tracker.failure("192.0.2.1", reserved=True).failures == 1
    assert tracker.reserve("192.0.2.1")
    tracker.failure("192.0.2.1", reserved=True)
    verdict = tracker.failure("192.0.2.1", reserved=True)
    assert verdict.banned and verdict.failures == 3
    assert not tracker.reserve("192.0.2.1")  # banned


def test_reservations_without_bans_never_lock_out() -> None:
    tracker = FailureTracker(BanPolicy(max_failures=1, ban_time=0), Clock())
    for _ in range(5):
        assert tracker.reserve("192.0.2.1")
        tracker.failure("192.0.2.1", reserved=True)


def test_ipv6_counted_per_64_by_default() -> None:
    tracker = FailureTracker(BanPolicy(max_failures=2, ban_time=900), Clock())
    tracker.failure("2001:db8:1:2::1")
    assert tracker.failure("2001:db8:1:2:ffff::9").banned  # same /64, another address
    assert tracker.ban_remaining("2001:db8:1:2::77") > 0
    assert tracker.ban_remaining("2001:db8:1:3::1") == 0  # the next /64 is someone else
    assert tracker.key("2001:db8:1:2::77") == "2001:db8:1:2::/64"


def test_ipv6_prefix_is_configurable() -> None:
    tracker = FailureTracker(BanPolicy(max_failures=1, ban_time=900, prefix_v6=128), Clock())
    assert tracker.failure("2001:db8::1").banned
    assert tracker.ban_remaining("2001:db8::2") == 0
    assert address_key("2001:db8::1", 48) == "2001:db8::/48"
    assert address_key("192.0.2.7", 48) == "192.0.2.7"
