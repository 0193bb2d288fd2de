"""Login policy on a real IOLoop with a handler stand-in: every reply, event and ban."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_fakes import (
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
from ftps_server.pki.certs import fingerprint
from ftps_server.server.auth import Authenticator

DELAYS = (0.01, 0.04)


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return make_pki(tmp_path)


@pytest.fixture
def state(tmp_path: Path, pki: Any, clock: FakeClock) -> Iterator[State]:
    config = load(write_config(tmp_path, pki))
    authenticator = Authenticator(config, clock=clock, delays=DELAYS)
    yield State(config, authenticator)
    authenticator.close()


def login(
    state: State,
    ioloop: IOLoop,
    user: str,
    password: str | None,
    cert: Any = None,
    ip: str = "127.0.0.1",
) -> FakeHandler:
    """USER (+ PASS unless None or USER already settled it); wait for the final reply."""
    handler = FakeHandler(state, ioloop, cert, ip)
    auth.user_command(handler, user)  # type: ignore[arg-type]
    run_until(ioloop, lambda: not handler.login_pending)
    if password is not None and handler.replies[-1].startswith("331"):
        auth.pass_command(handler, password)  # type: ignore[arg-type]
        # PASS holds the session while the hash runs; only a cache hit answers at once
        assert handler.login_pending or handler.replies[-1].startswith("230")
        run_until(ioloop, lambda: not handler.login_pending)
    return handler


def test_password_user_logs_in(state: State, ioloop: IOLoop, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    handler = login(state, ioloop, "bob", PASSWORD)
    assert handler.replies == ["331 Username ok, send password.", "230 Login successful."]
    assert handler.authenticated and handler.logged_in_as == "bob"
    assert Path(handler.fs.root) == state.config.users[1].home
    (ok,) = events(caplog, message_ids.LOGIN_OK)
    assert ok["USER"] == "bob" and ok["AUTH_METHOD"] == "password"
    assert ok["REMOTE_ADDR"] == "127.0.0.1" and ok["LISTENER"] == "127.0.0.1:990 implicit"


def test_wrong_password_and_unknown_user_look_the_same(
    state: State, ioloop: IOLoop, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    wrong = login(state, ioloop, "bob", "nope", ip="127.0.0.2")
    unknown = login(state, ioloop, "mallory", "nope", ip="127.0.0.3")
    assert (
        wrong.replies
        == unknown.replies
        == ["331 Username ok, send password.", "530 Login incorrect."]
    )
    assert not wrong.authenticated and not unknown.authenticated
    reasons = [e["REASON"] for e in events(caplog, message_ids.LOGIN_FAILED)]
    assert reasons == ["wrong password", "unknown user"]


def test_passwords_never_logged(state: State, ioloop: IOLoop, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    login(state, ioloop, "bob", "hunter2-typo")
    login(state, ioloop, "bob", PASSWORD)
    text = caplog.text + repr([getattr(r, "fields", None) for r in caplog.records])
    assert "hunter2-typo" not in text and PASSWORD not in text
    assert "$scrypt$" not in text


def test_certificate_user_pinned(state: State, ioloop: IOLoop, pki: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    handler = login(state, ioloop, "alice", PASSWORD, cert=pki.alice)
    assert handler.replies == ["331 Certificate accepted, send password.", "230 Login successful."]
    (ok,) = events(caplog, message_ids.LOGIN_OK)
    assert ok["CERT_FINGERPRINT"] == fingerprint(pki.alice)
    assert ok["AUTH_METHOD"] == "certificate+password"


def test_certificate_only_user_by_cn_gets_232(state: State, ioloop: IOLoop, pki: Any) -> None:
    handler = login(state, ioloop, "carol", None, cert=pki.carol)
    assert handler.replies == ["232 User logged in, authorized by security data exchange."]
    assert handler.authenticated and handler.logged_in_as == "carol"
    auth.pass_command(handler, "anything")  # type: ignore[arg-type]
    assert handler.replies[-1].startswith("202 ")


@pytest.mark.parametrize("user", ["carol", "alice", "erin"])
def test_certificate_policy_without_certificate(state: State, ioloop: IOLoop, user: str) -> None:
    handler = login(state, ioloop, user, PASSWORD)
    assert handler.replies == ["331 Username ok, send password.", "530 Login incorrect."]
    assert not handler.authenticated


def test_certificate_plus_password_wrong_password(state: State, ioloop: IOLoop, pki: Any) -> None:
    handler = login(state, ioloop, "alice", "wrong", cert=pki.alice)
    assert handler.replies[-1] == "530 Login incorrect."


def test_password_user_ignores_certificate(state: State, ioloop: IOLoop, pki: Any) -> None:
    handler = login(state, ioloop, "bob", PASSWORD, cert=pki.stranger)
    assert handler.replies[-1] == "230 Login successful."


def test_unregistered_certificate_recorded_once(
    state: State, ioloop: IOLoop, pki: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(2):
        handler = login(state, ioloop, "dave", None, cert=pki.stranger)
        assert handler.replies == ["530 Not logged in: client certificate is not registered."]
    (entry,) = state.auth.pending.load()
    assert entry.user == "dave" and entry.fingerprint == fingerprint(pki.stranger)
    assert entry.common_name == "alice-laptop" and entry.attempts == 2
    assert entry.peer == "127.0.0.1"
    assert events(caplog, message_ids.LOGIN_FAILED)[0]["REASON"] == (
        "client certificate not registered"
    )


def test_other_users_certificate_is_refused_not_recorded(
    state: State, ioloop: IOLoop, pki: Any
) -> None:
    handler = login(state, ioloop, "dave", None, cert=pki.alice)
    assert handler.replies == ["530 Not logged in: client certificate belongs to another user."]
    assert state.auth.pending.load() == []


def test_unknown_user_with_certificate_records_nothing(
    state: State, ioloop: IOLoop, pki: Any
) -> None:
    handler = login(state, ioloop, "zed", "x", cert=pki.stranger)
    assert handler.replies[-1] == "530 Login incorrect."
    assert state.auth.pending.load() == []


def test_reload_registers_pending_certificate(
    state: State, ioloop: IOLoop, pki: Any, tmp_path: Path
) -> None:
    login(state, ioloop, "dave", None, cert=pki.stranger)
    path = write_config(tmp_path, pki)
    text = path.read_text().replace(
        "[user:dave]\nauth = certificate\ncertificates = ",
        f"[user:dave]\nauth = certificate\ncertificates = sha256:{fingerprint(pki.stranger)}, ",
    )
    path.write_text(text)
    state.auth.reload(load(path))
    assert state.auth.pending.load() == []
    handler = login(state, ioloop, "dave", None, cert=pki.stranger)
    assert handler.replies[-1].startswith("232 ")


def test_ban_after_failures_then_unban(
    state: State, ioloop: IOLoop, clock: FakeClock, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    ip = "127.0.0.9"
    probe = FakeHandler(state, ioloop, None, ip)
    for _ in range(2):
        assert login(state, ioloop, "bob", "bad", ip=ip).replies[-1] == "530 Login incorrect."
    assert auth.connection_refusal(probe) is None  # type: ignore[arg-type]
    last = login(state, ioloop, "bob", "bad", ip=ip)
    assert last.replies[-1] == "530 Login incorrect." and last.closing
    refusal = auth.connection_refusal(probe)  # type: ignore[arg-type]
    assert refusal == f"421 Too many failed logins from {ip}; try again in 300 seconds."
    (banned,) = events(caplog, message_ids.ADDRESS_BANNED)
    assert banned["REMOTE_ADDR"] == ip and banned["BAN"] == "imposed"
    # other addresses are unaffected, even the right password from the banned one is refused
    assert login(state, ioloop, "bob", PASSWORD, ip="127.0.0.10").authenticated
    during = login(state, ioloop, "bob", PASSWORD, ip=ip)
    assert during.replies[0].startswith("421 ") and during.closing
    clock.advance(299)
    assert auth.connection_refusal(probe) is not None  # type: ignore[arg-type]
    clock.advance(2)
    assert auth.connection_refusal(probe) is None  # type: ignore[arg-type]
    lifted = [r for r in caplog.records if getattr(r, "fields", {}).get("BAN") == "lifted"]
    assert len(lifted) == 1 and lifted[0].fields["REMOTE_ADDR"] == ip
    assert login(state, ioloop, "bob", PASSWORD, ip=ip).authenticated


def test_failure_delay_grows(state: State, ioloop: IOLoop) -> None:
    verdicts = [state.auth.tracker.failure("127.0.0.50") for _ in range(2)]
    assert [v.delay for v in verdicts] == [0.01, 0.02]


def test_missing_home_created_0750(state: State) -> None:
    for user in state.config.users:
        assert user.home.is_dir()
        assert stat.S_IMODE(os.stat(user.home).st_mode) == 0o750


def test_user_twice_after_login_is_refused(state: State, ioloop: IOLoop) -> None:
    handler = login(state, ioloop, "bob", PASSWORD)
    auth.user_command(handler, "alice")  # type: ignore[arg-type]
    assert handler.replies[-1].startswith("503 ") and handler.logged_in_as == "bob"


def test_pass_before_user(state: State, ioloop: IOLoop) -> None:
    handler = FakeHandler(state, ioloop)
    auth.pass_command(handler, "x")  # type: ignore[arg-type]
    assert handler.replies == ["503 Login with USER first."]


def test_client_gone_during_verification(state: State, ioloop: IOLoop) -> None:
    handler = FakeHandler(state, ioloop)
    auth.user_command(handler, "bob")  # type: ignore[arg-type]
    auth.pass_command(handler, PASSWORD)  # type: ignore[arg-type]
    handler.close()
    run_until(ioloop, lambda: not handler.login_pending)
    assert handler.replies == ["331 Username ok, send password."] and not handler.authenticated


def test_unknown_user_costs_what_a_wrong_password_costs(
    tmp_path: Path, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not timed (a loaded 2-core CI machine makes medians flaky): every wrong login, known
    # user or not, must run exactly one scrypt verification at the user's own cost parameters.
    from ftps_server.pki.passwords import HashParams, hash_password, parse_hash

    slow = hash_password(PASSWORD, HashParams(ln=12, r=8, p=1))
    path = write_config(tmp_path, pki)
    path.write_text(re.sub(r"password = \S+", lambda _: f"password = {slow}", path.read_text()))
    config = load(path)
    verified: list[str] = []
    real = auth._verify_password

    def counting(password: str, stored: str) -> bool:
        verified.append(stored)
        return real(password, stored)

    monkeypatch.setattr(auth, "_verify_password", counting)
    authenticator = Authenticator(config, delays=(0.0, 0.0))
    loop = IOLoop()
    state = State(config, authenticator)
    try:

        def costs(user: str, n: int) -> HashParams:
            handler = FakeHandler(state, loop, None, f"127.0.1.{n}")  # never banned
            auth.user_command(handler, user)  # type: ignore[arg-type]
            before = len(verified)
            auth.pass_command(handler, "wrong")  # type: ignore[arg-type]
            run_until(loop, lambda: not handler.login_pending)
            assert handler.replies[-1] == "530 Login incorrect."
            assert len(verified) == before + 1, f"{user}: {len(verified) - before} hashes"
            return parse_hash(verified[-1])[0]

        known = costs("bob", 1)
        assert known == HashParams(ln=12, r=8, p=1)
        assert costs("nobody", 2) == known
        assert costs("nobody", 3) == known  # never served from a cache either
    finally:
        authenticator.close()
        loop.close()


def test_home_gone_after_start_refuses_clearly(state: State, ioloop: IOLoop, caplog: Any) -> None:
    bob = next(u for u in state.config.users if u.name == "bob")
    bob.home.rmdir()
    handler = login(state, ioloop, "bob", PASSWORD)
    assert handler.replies[-1] == "530 Not logged in: home directory is not available."
    assert not handler.authenticated
    assert f"home {bob.home} is missing" in caplog.text
