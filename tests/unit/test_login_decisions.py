"""server.login_policy: login decisions without a handler, a loop or a thread (like bans)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from auth_fakes import load, make_pki, write_config

from ftps_server.config.model import Config
from ftps_server.pki.certs import fingerprint
from ftps_server.server.login_policy import (
    REPLY_BAD_NAME,
    REPLY_CERT_LOGIN,
    REPLY_OTHER_USER,
    REPLY_UNREGISTERED,
    Attempt,
    CertificateOwners,
    UserOutcome,
    decide_user,
    dummy_hash,
    expected_hash,
    name_problem,
    pass_refusal,
    printable,
)


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return make_pki(tmp_path)


@pytest.fixture
def config(tmp_path: Path, pki: Any) -> Config:
    return load(write_config(tmp_path, pki))


def _user(config: Config, name: str) -> Any:
    return next((u for u in config.users if u.name == name), None)


def _decide(config: Config, name: str, cert: Any = None) -> Any:
    return decide_user(name, _user(config, name), cert, CertificateOwners(config))


def test_unknown_and_password_users_are_asked_for_a_password(config: Config) -> None:
    for name in ("nobody", "bob"):
        d = _decide(config, name)
        assert (d.outcome, d.reply) == (UserOutcome.ASK_PASSWORD, "331 Username ok, send password.")
        assert d.attempt == Attempt(name, "password")


def test_certificate_user_logs_in_by_certificate(config: Config, pki: Any) -> None:
    d = _decide(config, "carol", pki.carol)  # matched by its CA-verified CN
    assert (d.outcome, d.reply) == (UserOutcome.CERTIFICATE_LOGIN, REPLY_CERT_LOGIN)
    assert d.attempt.fingerprint == fingerprint(pki.carol)


def test_certificate_and_password_user_with_its_certificate(config: Config, pki: Any) -> None:
    d = _decide(config, "alice", pki.alice)
    assert d.outcome is UserOutcome.ASK_PASSWORD and d.attempt.cert_ok
    assert d.reply == "331 Certificate accepted, send password."


def test_another_users_certificate_fails_for_any_name(config: Config, pki: Any) -> None:
    for name in ("bob", "nobody", "dave"):
        d = _decide(config, name, pki.alice)
        assert (d.outcome, d.reply, d.owner) == (UserOutcome.FAIL, REPLY_OTHER_USER, "alice")
        assert d.reason == "client certificate of another user (alice)"


def test_unregistered_certificate_is_kept_for_review(config: Config, pki: Any) -> None:
    d = _decide(config, "dave", pki.stranger)
    assert (d.outcome, d.reply) == (UserOutcome.FAIL, REPLY_UNREGISTERED)
    assert d.record_pending and d.reason == "client certificate not registered"


def test_cn_counts_only_with_a_client_ca(config: Config, pki: Any) -> None:
    # config.loader.load refuses certificate users without client_ca; the policy does not rely on it
    no_ca = CertificateOwners(replace(config, tls=replace(config.tls, client_ca=None)))
    assert no_ca.owners(pki.carol) == set() and not no_ca.cn_trusted
    carol = _user(config, "carol")
    assert CertificateOwners(config).match(carol, pki.carol, fingerprint(pki.carol)) == "ok"
    assert no_ca.match(carol, pki.carol, fingerprint(pki.carol)) == "unregistered"


def test_every_pass_costs_one_hash(config: Config) -> None:
    dummy = dummy_hash(config)
    assert expected_hash(None, Attempt("x", "password"), dummy) == (dummy, "unknown user")
    carol = _user(config, "carol")
    assert expected_hash(carol, Attempt("carol", "certificate"), dummy)[0] == dummy
    alice = _user(config, "alice")
    no_cert = expected_hash(alice, Attempt("alice", alice.auth), dummy)
    assert no_cert == (alice.password, "no client certificate")
    ok = Attempt("alice", alice.auth, cert_ok=True)
    assert expected_hash(alice, ok, dummy) == (alice.password, None)
    assert dummy_hash(config) != dummy  # random salt and key: no password matches it


def test_pass_out_of_turn() -> None:
    cert = Attempt("carol", "certificate")
    assert pass_refusal(True, "carol", cert) == (
        "202 Already logged in by certificate; no password needed."
    )
    assert (
        pass_refusal(True, "bob", Attempt("bob", "password")) == "503 User already authenticated."
    )
    assert pass_refusal(False, "", None) == "503 Login with USER first."
    assert pass_refusal(False, "bob", Attempt("alice", "password")) == "503 Login with USER first."
    assert pass_refusal(False, "bob", Attempt("bob", "password")) is None


def test_user_names() -> None:
    assert name_problem("") == "501 Syntax error: USER needs a user name."
    assert name_problem("bob\r\nPASS x") == REPLY_BAD_NAME
    assert name_problem("bob\u2028") == REPLY_BAD_NAME
    assert name_problem("pw\u202egpj.exe") == REPLY_BAD_NAME  # bidi override (Cf)
    assert name_problem("bob\udcff") == REPLY_BAD_NAME  # a byte that was not UTF-8
    assert name_problem("björn") is None and name_problem("日本") is None
    assert printable("x\ty" + "z" * 100) == "x?y" + "z" * 61
