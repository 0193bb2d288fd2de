"""The password-check queue: limits per address and user, the bound, the verifier cache.

Hash calls are counted (and, where order matters, held at a gate) by wrapping the function
the worker threads run; nothing here measures time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_fakes import (
    FAST,
    PASSWORD,
    FakeClock,
    FakeHandler,
    State,
    events,
    load,
    make_pki,
    run_until,
    write_config,
)
from pyftpdlib.ioloop import IOLoop

import ftps_server.journal.message_ids as message_ids
import ftps_server.server.auth as auth
from ftps_server.errors import ConfigError
from ftps_server.pki.passwords import hash_password
from ftps_server.server.auth import Authenticator

DELAYS = (0.0, 0.0)
INCORRECT = "530 Login incorrect."


class Hashes:
    """Counts the scrypt verifications the workers run; `gate` can hold them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self._real: Callable[[str, str], bool] = auth._verify_password

    def __call__(self, password: str, stored: str) -> bool:
        self.calls.append(password)
        assert self.gate.wait(10), "test gate never opened"
        return self._real(password, stored)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Hashes:
    counter = Hashes()
    monkeypatch.setattr(auth, "_verify_password", counter)
    return counter


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return make_pki(tmp_path)


def make_state(tmp: Path, pki: Any, clock: FakeClock, failures: int = 3, **kw: Any) -> State:
    path = write_config(tmp, pki)
    path.write_text(
        path.read_text().replace("max_login_failures = 3", f"max_login_failures = {failures}")
    )
    config = load(path)
    return State(config, Authenticator(config, clock=clock, delays=DELAYS, **kw))


@pytest.fixture
def state(tmp_path: Path, pki: Any, clock: FakeClock) -> Iterator[State]:
    st = make_state(tmp_path, pki, clock, workers=2)
    yield st
    st.auth.close()


def submit(state: State, ioloop: IOLoop, user: str, password: str, ip: str) -> FakeHandler:
    """USER and PASS; do not wait for the verdict."""
    handler = FakeHandler(state, ioloop, None, ip)
    auth.user_command(handler, user)  # type: ignore[arg-type]
    assert handler.replies == ["331 Username ok, send password."]
    auth.pass_command(handler, password)  # type: ignore[arg-type]
    return handler


def login(state: State, ioloop: IOLoop, user: str, password: str, ip: str) -> FakeHandler:
    handler = submit(state, ioloop, user, password, ip)
    run_until(ioloop, lambda: not handler.login_pending)
    return handler


# --- the verifier cache (issue 17.1) ---------------------------------------------------------


def test_repeat_login_does_not_hash_again(state: State, ioloop: IOLoop, hashes: Hashes) -> None:
    assert login(state, ioloop, "bob", PASSWORD, "127.0.0.5").replies[-1].startswith("230")
    assert len(hashes.calls) == 1
    for n in range(5):
        handler = login(state, ioloop, "bob", PASSWORD, f"127.0.0.{10 + n}")
        assert handler.replies[-1].startswith("230") and handler.authenticated
    assert len(hashes.calls) == 1, "a repeat login with the same password paid scrypt again"


def test_wrong_password_never_served_from_cache(
    state: State, ioloop: IOLoop, hashes: Hashes
) -> None:
    login(state, ioloop, "bob", PASSWORD, "127.0.0.5")
    for n, wrong in enumerate(("wrong", PASSWORD + " ", PASSWORD[:-1], "")):
        handler = login(state, ioloop, "bob", wrong, f"127.0.1.{n}")
        assert handler.replies[-1] == INCORRECT and not handler.authenticated
    assert len(hashes.calls) == 5  # every wrong password paid the full hash


def test_cache_dropped_on_reload(state: State, ioloop: IOLoop, hashes: Hashes) -> None:
    login(state, ioloop, "bob", PASSWORD, "127.0.0.5")
    state.auth.reload(state.config)
    assert login(state, ioloop, "bob", PASSWORD, "127.0.0.6").replies[-1].startswith("230")
    assert len(hashes.calls) == 2


def test_cache_misses_when_the_hash_changes(
    state: State, ioloop: IOLoop, hashes: Hashes, tmp_path: Path
) -> None:
    login(state, ioloop, "bob", PASSWORD, "127.0.0.5")
    path = state.config.path
    text = path.read_text()
    bob = text.index("[user:bob]")
    old = text[bob:].split("password = ", 1)[1].split("\n", 1)[0]
    path.write_text(text[:bob] + text[bob:].replace(old, hash_password("new one", FAST), 1))
    # the tag covers the stored hash: even without the reload's clear() it must miss
    state.auth.authorizer.update(load(path).users)
    assert login(state, ioloop, "bob", PASSWORD, "127.0.0.6").replies[-1] == INCORRECT
    assert login(state, ioloop, "bob", "new one", "127.0.0.7").replies[-1].startswith("230")
    assert len(hashes.calls) == 3


def test_cache_expires(state: State, ioloop: IOLoop, hashes: Hashes, clock: FakeClock) -> None:
    login(state, ioloop, "bob", PASSWORD, "127.0.0.5")
    clock.advance(auth.CACHE_SECONDS - 1)
    login(state, ioloop, "bob", PASSWORD, "127.0.0.6")
    assert len(hashes.calls) == 1
    clock.advance(2)  # measured from the full check, not extended by hits
    login(state, ioloop, "bob", PASSWORD, "127.0.0.7")
    assert len(hashes.calls) == 2


def test_unknown_user_pays_a_hash(state: State, ioloop: IOLoop, hashes: Hashes) -> None:
    for n in range(2):
        assert login(state, ioloop, "nobody", PASSWORD, f"127.0.0.{5 + n}").replies[-1] == (
            INCORRECT
        )
    assert len(hashes.calls) == 2


def test_cache_ignores_a_missing_certificate(
    state: State, ioloop: IOLoop, hashes: Hashes, pki: Any
) -> None:
    # alice needs certificate+password: her right password without the certificate fails
    handler = FakeHandler(state, ioloop, pki.alice, "127.0.0.5")
    auth.user_command(handler, "alice")  # type: ignore[arg-type]
    auth.pass_command(handler, PASSWORD)  # type: ignore[arg-type]
    run_until(ioloop, lambda: not handler.login_pending)
    assert handler.replies[-1].startswith("230")
    assert login(state, ioloop, "alice", PASSWORD, "127.0.0.6").replies[-1] == INCORRECT
    assert len(hashes.calls) == 2


# --- the queue (issues 19.1 and 12.4) -------------------------------------------------------


def test_parallel_pass_cannot_overshoot_the_ban(
    tmp_path: Path, pki: Any, clock: FakeClock, ioloop: IOLoop, caplog: Any
) -> None:
    state = make_state(tmp_path, pki, clock, failures=5, workers=2)
    try:
        handlers = [submit(state, ioloop, "bob", f"wrong {n}", "127.0.0.9") for n in range(11)]
        handlers.append(submit(state, ioloop, "bob", PASSWORD, "127.0.0.9"))
        run_until(ioloop, lambda: not any(h.login_pending for h in handlers))
    finally:
        state.auth.close()
    finals = [h.replies[-1] for h in handlers]
    assert not any(r.startswith("230") for r in finals), finals
    assert finals.count(INCORRECT) == 5, finals  # the limit, not one more
    assert all(r.startswith("421") for r in finals if r != INCORRECT)
    assert len(events(caplog, message_ids.ADDRESS_BANNED)) == 1


def test_same_password_from_one_address_joins_the_check_in_flight(
    state: State, ioloop: IOLoop, hashes: Hashes, caplog: Any
) -> None:
    # many parallel sessions of one partner behind one address (max_login_failures = 3)
    hashes.gate.clear()
    right = [submit(state, ioloop, "bob", PASSWORD, "127.0.0.9") for _ in range(8)]
    hashes.gate.set()
    run_until(ioloop, lambda: not any(h.login_pending for h in right))
    assert all(h.replies[-1].startswith("230") for h in right)
    assert len(hashes.calls) == 1
    # the same wrong password from one address: one hash, every session counted, banned
    hashes.gate.clear()
    wrong = [submit(state, ioloop, "bob", "wrong", "127.0.0.8") for _ in range(6)]
    hashes.gate.set()
    run_until(ioloop, lambda: not any(h.login_pending for h in wrong))
    assert [h.replies[-1] for h in wrong] == [INCORRECT] * 6
    assert len(hashes.calls) == 2
    assert len(events(caplog, message_ids.ADDRESS_BANNED)) == 1


def test_one_address_hashes_one_at_a_time_and_departed_checks_are_dropped(
    state: State, ioloop: IOLoop, hashes: Hashes, caplog: Any
) -> None:
    hashes.gate.clear()
    first = submit(state, ioloop, "bob", "wrong 1", "127.0.0.9")
    queued = [submit(state, ioloop, "bob", f"wrong {n}", "127.0.0.9") for n in (2, 3)]
    refused = submit(state, ioloop, "bob", "wrong 4", "127.0.0.9")
    # three submitted from this address reach max_login_failures = 3: the fourth is refused
    assert refused.replies[-1].startswith("421 Too many logins from 127.0.0.9")
    assert not refused.login_pending and refused.closing
    other = submit(state, ioloop, "bob", PASSWORD, "127.0.0.10")  # another address: own slot
    run_until(ioloop, lambda: len(hashes.calls) == 2)
    assert sorted(hashes.calls) == sorted(["wrong 1", PASSWORD])
    for handler in queued:
        handler.close()  # the flood does not wait for its answers
    hashes.gate.set()
    run_until(ioloop, lambda: not first.login_pending and not other.login_pending)
    run_until(ioloop, lambda: not any(h.login_pending for h in queued))
    assert other.replies[-1].startswith("230")
    assert len(hashes.calls) == 2, "a check whose client had left was still hashed"
    # submitted checks count: one wrong + two abandoned = 3 = max_login_failures -> ban
    assert state.auth.tracker.ban_remaining("127.0.0.9") > 0
    reasons = [e["REASON"] for e in events(caplog, message_ids.LOGIN_FAILED)]
    assert reasons.count("client left before the check") == 2


def test_identical_checks_share_one_hash(state: State, ioloop: IOLoop, hashes: Hashes) -> None:
    hashes.gate.clear()
    handlers = [submit(state, ioloop, "bob", PASSWORD, f"127.0.2.{n}") for n in range(6)]
    hashes.gate.set()
    run_until(ioloop, lambda: not any(h.login_pending for h in handlers))
    assert all(h.replies[-1].startswith("230") for h in handlers)
    assert len(hashes.calls) == 1


def test_full_queue_answers_421(
    tmp_path: Path, pki: Any, clock: FakeClock, ioloop: IOLoop, hashes: Hashes, caplog: Any
) -> None:
    state = make_state(tmp_path, pki, clock, workers=1, queue_limit=2)
    try:
        hashes.gate.clear()
        running = submit(state, ioloop, "bob", "a", "127.0.3.1")
        waiting = [submit(state, ioloop, "bob", p, f"127.0.3.{n}") for n, p in ((2, "b"), (3, "c"))]
        refused = submit(state, ioloop, "bob", "d", "127.0.3.4")
        assert refused.replies[-1].startswith("421 Too many logins are being checked")
        assert refused.closing and not refused.login_pending
        # a password already being checked joins that check instead of queueing again
        joined = submit(state, ioloop, "bob", "b", "127.0.3.5")
        assert joined.login_pending
        hashes.gate.set()
        handlers = [running, *waiting, joined]
        run_until(ioloop, lambda: not any(h.login_pending for h in handlers))
        assert all(h.replies[-1] == INCORRECT for h in handlers)
        assert sorted(hashes.calls) == ["a", "b", "c"]
        # the refused one was not counted as a failure: it was never checked
        failed = [e["REMOTE_ADDR"] for e in events(caplog, message_ids.LOGIN_FAILED)]
        assert sorted(failed) == ["127.0.3.1", "127.0.3.2", "127.0.3.3", "127.0.3.5"]
    finally:
        state.auth.close()


def test_right_password_after_the_ban_started_is_refused(
    state: State, ioloop: IOLoop, hashes: Hashes
) -> None:
    hashes.gate.clear()
    right = submit(state, ioloop, "bob", PASSWORD, "127.0.0.9")
    for _ in range(3):  # the ban starts while the right password is still being hashed
        state.auth.tracker.failure("127.0.0.9")  # (e.g. certificate failures at USER)
    hashes.gate.set()
    run_until(ioloop, lambda: not right.login_pending)
    assert right.replies[-1].startswith("421 Too many failed logins") and not right.authenticated


# --- user names and certificates (issues 12.5, 12.11) ------------------------------------------


@pytest.mark.parametrize("name", ["bob\nx", "bob\rx", "root\x1b[2J", "a\u2028b", "a\x85b"])
def test_user_name_with_control_characters_is_refused(
    state: State, ioloop: IOLoop, name: str
) -> None:
    handler = FakeHandler(state, ioloop)
    auth.user_command(handler, name)  # type: ignore[arg-type]
    assert handler.replies == ["501 Syntax error: control characters in user name."]
    assert handler.username == ""


@pytest.mark.parametrize(("cert", "owner"), [("alice", "alice"), ("carol", "carol")])
def test_password_user_with_another_users_certificate(
    state: State, ioloop: IOLoop, pki: Any, caplog: Any, cert: str, owner: str
) -> None:
    # alice's certificate is pinned, carol's is registered by CN; bob has auth = password
    caplog.set_level(logging.INFO)
    handler = FakeHandler(state, ioloop, getattr(pki, cert), "127.0.0.5")
    auth.user_command(handler, "bob")  # type: ignore[arg-type]
    run_until(ioloop, lambda: not handler.login_pending)
    assert handler.replies == ["530 Not logged in: client certificate belongs to another user."]
    auth.pass_command(handler, PASSWORD)  # type: ignore[arg-type]
    assert handler.replies[-1] == "503 Login with USER first." and not handler.authenticated
    (event,) = events(caplog, message_ids.LOGIN_FAILED)
    assert event["USER"] == "bob" and event["CERT_OWNER"] == owner


def test_ban_prefix_v6_from_config(tmp_path: Path, pki: Any, clock: FakeClock) -> None:
    config = load(write_config(tmp_path, pki, server="ban_prefix_v6 = 56"))
    assert config.server.ban_prefix_v6 == 56
    authenticator = Authenticator(config, clock=clock, delays=DELAYS)
    try:
        assert authenticator.tracker.key("2001:db8:0:ff::1") == "2001:db8::/56"
    finally:
        authenticator.close()
    with pytest.raises(ConfigError, match="ban_prefix_v6"):
        load(write_config(tmp_path, pki, server="ban_prefix_v6 = 129"))
