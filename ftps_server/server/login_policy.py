"""The login policy as plain decisions: no sockets, no threads, no pyftpdlib.

Which reply USER gets, which hash a PASS is checked against and why it fails, who owns a
client certificate (client text is made safe for a log line by `safe_text`). `auth` applies these
decisions to a session (replies, the password-check queue, bans, events); here they are
tested like `bans`, with config objects and certificates only.
"""

from __future__ import annotations

import base64
import enum
import os
from collections import Counter
from dataclasses import dataclass

from cryptography import x509

from ..config.model import Config, UserConfig
from ..pki.certs import cert_info, fingerprint
from ..pki.passwords import DEFAULT_PARAMS, HashParams, PasswordError, parse_hash
from ..safe_text import has_controls
from .bans import BanPolicy

__all__ = [
    "REPLY_ATTEMPTS",
    "REPLY_BAD_NAME",
    "REPLY_BANNED",
    "REPLY_BUSY",
    "REPLY_CERT_LOGIN",
    "REPLY_INCORRECT",
    "REPLY_NO_HOME",
    "REPLY_OTHER_USER",
    "REPLY_UNREGISTERED",
    "Attempt",
    "CertificateOwners",
    "UserDecision",
    "UserOutcome",
    "ban_policy",
    "decide_user",
    "dummy_hash",
    "expected_hash",
    "name_problem",
    "pass_refusal",
    "printable",
]

REPLY_INCORRECT = "530 Login incorrect."
REPLY_UNREGISTERED = "530 Not logged in: client certificate is not registered."
REPLY_OTHER_USER = "530 Not logged in: client certificate belongs to another user."
REPLY_NO_HOME = "530 Not logged in: home directory is not available."
REPLY_CERT_LOGIN = "232 User logged in, authorized by security data exchange."
REPLY_BANNED = "421 Too many failed logins from {ip}; try again in {seconds} seconds."
REPLY_ATTEMPTS = "421 Too many logins from {ip} are being checked; try again later."
REPLY_BUSY = "421 Too many logins are being checked; try again in a few seconds."
REPLY_BAD_NAME = "501 Syntax error: control characters in user name."
REPLY_ASK_PASSWORD = "331 Username ok, send password."
REPLY_CERT_ACCEPTED = "331 Certificate accepted, send password."


@dataclass
class Attempt:
    """What USER established for this connection, used by the PASS that follows."""

    user: str
    method: str  # the policy being exercised: password | certificate | certificate+password
    cert_ok: bool = False
    fingerprint: str | None = None


class UserOutcome(enum.Enum):
    ASK_PASSWORD = "ask password"  # 331: PASS decides
    CERTIFICATE_LOGIN = "certificate login"  # 232: the certificate alone logs in
    FAIL = "fail"  # a failed login, counted against the address


@dataclass(frozen=True)
class UserDecision:
    """What a USER command leads to."""

    outcome: UserOutcome
    attempt: Attempt
    reply: str
    reason: str = ""  # why it failed (FAIL)
    record_pending: bool = False  # keep the certificate for an administrator's look
    owner: str = ""  # the users the certificate belongs to, when another name was asked


class CertificateOwners:
    """Who a client certificate belongs to: pinned fingerprints, CA-verified common names."""

    def __init__(self, config: Config) -> None:
        self.pinned = {fp: u.name for u in config.users for fp in u.certificates}
        self.cn_owners: dict[str, set[str]] = {}
        for u in config.users:
            if u.certificate_cn:
                self.cn_owners.setdefault(u.certificate_cn, set()).add(u.name)
        # a CN is only as good as the CA that signed it: without client_ca nothing verified it
        self.cn_trusted = bool(config.tls.client_ca)

    def owners(self, cert: x509.Certificate) -> set[str]:
        """The users `cert` is registered to."""
        owners = set()
        pinned = self.pinned.get(fingerprint(cert))
        if pinned:
            owners.add(pinned)
        if self.cn_trusted and self.cn_owners:
            owners |= self.cn_owners.get(cert_info(cert).common_name or "", set())
        return owners

    def match(self, user: UserConfig, cert: x509.Certificate, fp: str) -> str:
        """'ok', 'other' (pinned by another user) or 'unregistered'."""
        if fp in user.certificates:
            return "ok"
        if fp in self.pinned:
            return "other"
        trusted_cn = self.cn_trusted and user.certificate_cn
        if trusted_cn and cert_info(cert).common_name == user.certificate_cn:
            return "ok"
        return "unregistered"


def name_problem(name: str) -> str | None:
    """The reply refusing a USER argument, or None when it may be tried."""
    if not name:
        return "501 Syntax error: USER needs a user name."
    if has_controls(name):
        # the name goes into every pyftpdlib log prefix: a line break would forge entries
        return REPLY_BAD_NAME
    return None


def decide_user(
    name: str, user: UserConfig | None, cert: x509.Certificate | None, owners: CertificateOwners
) -> UserDecision:
    """USER `name` from a client that presented `cert` (or none)."""
    method = user.auth if user else "password"
    holders = owners.owners(cert) if cert is not None else set()
    if cert is not None and holders and name not in holders:
        # registered to someone else: refused for any other name, whatever its policy
        owner = ", ".join(sorted(holders))
        return UserDecision(
            UserOutcome.FAIL,
            Attempt(name, method, fingerprint=fingerprint(cert)),
            REPLY_OTHER_USER,
            f"client certificate of another user ({owner})",
            owner=owner,
        )
    if user is None or user.auth == "password" or cert is None:
        # unknown users look like known ones: 331 now, the same 530 after PASS
        return UserDecision(UserOutcome.ASK_PASSWORD, Attempt(name, method), REPLY_ASK_PASSWORD)
    fp = fingerprint(cert)
    attempt = Attempt(name, user.auth, fingerprint=fp)
    match = owners.match(user, cert, fp)
    if match == "unregistered":
        reason = "client certificate not registered"
        return UserDecision(
            UserOutcome.FAIL, attempt, REPLY_UNREGISTERED, reason, record_pending=owners.cn_trusted
        )
    if match == "other":
        reason = "client certificate of another user"
        return UserDecision(UserOutcome.FAIL, attempt, REPLY_OTHER_USER, reason)
    if user.auth == "certificate":
        return UserDecision(UserOutcome.CERTIFICATE_LOGIN, attempt, REPLY_CERT_LOGIN)
    attempt.cert_ok = True
    return UserDecision(UserOutcome.ASK_PASSWORD, attempt, REPLY_CERT_ACCEPTED)


def pass_refusal(authenticated: bool, username: str, attempt: Attempt | None) -> str | None:
    """The reply refusing a PASS out of turn, or None when it is to be checked."""
    if authenticated:
        if attempt and attempt.method == "certificate":
            return "202 Already logged in by certificate; no password needed."
        return "503 User already authenticated."
    if not username or attempt is None or attempt.user != username:
        return "503 Login with USER first."
    return None


def expected_hash(user: UserConfig | None, attempt: Attempt, dummy: str) -> tuple[str, str | None]:
    """(hash to verify, failure reason or None when a match logs the user in).

    Every PASS costs one hash, whoever sends it: `dummy` stands in for users that have none,
    so neither an unknown name nor a missing certificate is told apart by timing."""
    if user is None:
        return dummy, "unknown user"
    if user.auth == "certificate":
        return dummy, "no client certificate"
    assert user.password is not None  # config.loader.load guarantees it for these policies
    if user.auth == "certificate+password" and not attempt.cert_ok:
        return user.password, "no client certificate"
    return user.password, None


def ban_policy(config: Config, delays: tuple[float, float]) -> BanPolicy:
    """The [server] ban settings, with the (first, max) delay of a failed login's reply."""
    s = config.server
    return BanPolicy(
        s.max_login_failures,
        float(s.failure_window),
        float(s.ban_time),
        *delays,
        prefix_v6=s.ban_prefix_v6,
    )


def dummy_hash(config: Config) -> str:
    """A hash at the cost most users' hashes have, verified for unknown users.

    An unknown user must cost exactly what a known one costs, else timing tells names apart.
    Random salt and key make a hash no password matches, without deriving one: this runs on
    the event loop at start and reload, where a 0.3 s derivation would stall transfers.
    """
    costs: Counter[HashParams] = Counter()
    for user in config.users:
        if user.password:
            try:
                costs[parse_hash(user.password)[0]] += 1
            except PasswordError:
                continue
    p = costs.most_common(1)[0][0] if costs else DEFAULT_PARAMS
    salt, key = (base64.b64encode(os.urandom(n)).decode("ascii") for n in (16, 32))
    return f"$scrypt$ln={p.ln},r={p.r},p={p.p}${salt}${key}"


def printable(name: str) -> str:
    """A user name fit for the journal: control characters cut, absurd lengths too."""
    return "".join(c if c.isprintable() else "?" for c in name[:64])
