"""Login policy: USER/PASS, certificates mapped to users, delays, bans, login events.

The FTP handler calls `connection_refusal` on connect, `user_command` for USER and
`pass_command` for PASS; each finds the `Authenticator` at `handler.server_state.auth`.
Password hashes are checked in a worker pool and the verdict comes back to the event loop
through `LoopWaker`, so a storm of logins never stalls transfers. While a PASS is checked or
a failure reply is held back, `handler.login_pending` is True and the handler accepts only QUIT.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import time
import weakref
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from ..config.model import Config, UserConfig
from ..journal import message_ids
from ..pki.certs import cert_info, fingerprint, utcnow
from ..pki.passwords import DEFAULT_PARAMS, HashParams, PasswordError, parse_hash
from ..pki.passwords import verify_password as _verify_password
from . import metrics
from .bans import BanPolicy, Clock, FailureTracker
from .pending import PendingStore
from .users import JailedFS, UserAuthorizer, ensure_homes
from .wakeup import LoopWaker

__all__ = [
    "REPLY_BANNED",
    "REPLY_CERT_LOGIN",
    "REPLY_INCORRECT",
    "REPLY_UNREGISTERED",
    "Authenticator",
    "LoginHandler",
    "connection_refusal",
    "pass_command",
    "user_command",
]

log = logging.getLogger(__name__)

REPLY_INCORRECT = "530 Login incorrect."
REPLY_UNREGISTERED = "530 Not logged in: client certificate is not registered."
REPLY_OTHER_USER = "530 Not logged in: client certificate belongs to another user."
REPLY_NO_HOME = "530 Not logged in: home directory is not available."
REPLY_CERT_LOGIN = "232 User logged in, authorized by security data exchange."
REPLY_BANNED = "421 Too many failed logins from {ip}; try again in {seconds} seconds."
# no MESSAGE_ID for a lifted ban exists yet; use it as soon as message_ids defines one
_UNBAN_ID: str | None = getattr(message_ids, "ADDRESS_UNBANNED", None)


class LoginHandler(Protocol):
    """What auth needs from the lead's FTP handler (a pyftpdlib FTPHandler subclass)."""

    remote_ip: str
    listener_name: str
    listener_kind: str
    peer_certificate: x509.Certificate | None
    username: str
    password: str
    authenticated: bool
    login_pending: bool
    attempted_logins: int
    ioloop: Any
    authorizer: Any
    abstracted_fs: Any
    fs: Any
    server_state: Any

    def respond(self, line: str) -> None: ...
    def handle_auth_success(self, home: str, password: str, msg_login: str) -> None: ...
    def on_login(self, username: str) -> None: ...
    def close_when_done(self) -> None: ...


@dataclass
class _Attempt:
    """What USER established for this connection, used by the PASS that follows."""

    user: str
    method: str  # the policy being exercised: password | certificate | certificate+password
    cert_ok: bool = False
    fingerprint: str | None = None


def _policy(config: Config, delays: tuple[float, float]) -> BanPolicy:
    s = config.server
    return BanPolicy(s.max_login_failures, float(s.failure_window), float(s.ban_time), *delays)


def _dummy_hash(config: Config) -> str:
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


def _check_password(password: str, stored: str) -> tuple[bool, str | None]:
    """Worker-thread body: (matches, config problem or None)."""
    try:
        return _verify_password(password, stored), None
    except PasswordError as exc:
        return False, str(exc)


def _printable(name: str) -> str:
    # user names reach the journal: cut control characters and absurd lengths
    return "".join(c if c.isprintable() else "?" for c in name[:64])


class Authenticator:
    """Owns users, the jail, the ban table, the pending-certificate store and the hash pool."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = time.monotonic,
        workers: int = min(4, os.cpu_count() or 2),
        delays: tuple[float, float] = (BanPolicy.first_delay, BanPolicy.max_delay),
    ) -> None:
        # delays: (first, max) seconds a failed login's reply is held back; tests shrink them
        self.config = config
        self.delays = delays
        self.authorizer = UserAuthorizer(config.users)
        self.filesystem = JailedFS
        self.tracker = FailureTracker(_policy(config, delays), clock)
        self.pending = PendingStore(config.server.state_dir)
        self.wall_clock = utcnow
        # each running verification holds 128*r*N bytes (32 MiB at the default cost), so the
        # pool is small: a login storm queues here instead of exhausting memory or CPU
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftps-auth")
        self._waker: LoopWaker | None = None
        self._attempts: weakref.WeakKeyDictionary[Any, _Attempt] = weakref.WeakKeyDictionary()
        self._apply(config)

    def _apply(self, config: Config) -> None:
        self.config = config
        self.authorizer.update(config.users)
        self.tracker.set_policy(_policy(config, self.delays))
        self._pinned = {fp: u.name for u in config.users for fp in u.certificates}
        self._home_problems = ensure_homes(config)
        self._dummy = _dummy_hash(config)

    def reload(self, config: Config) -> None:
        """Take new users and limits; bans and sessions in progress are kept."""
        self._apply(config)
        self.pending.prune(config)

    def close(self) -> None:
        """Stop the worker pool and unregister from the event loop."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    # --- events ---------------------------------------------------------------------------

    def _event(
        self,
        level: int,
        message_id: str | None,
        text: str,
        handler: LoginHandler,
        user: str,
        method: str,
        fp: str | None = None,
        **extra: str,
    ) -> None:
        fields = {
            "USER": _printable(user),
            "REMOTE_ADDR": handler.remote_ip,
            "LISTENER": handler.listener_name,
            "AUTH_METHOD": method,
            **extra,
        }
        if fp:  # only when a certificate was presented: an empty field says nothing
            fields["CERT_FINGERPRINT"] = fp
        if message_id:
            fields["MESSAGE_ID"] = message_id
        log.log(level, text, extra={"fields": fields})

    def _sweep(self) -> None:
        for address in self.tracker.expire():
            log.info(
                "ban on %s lifted",
                address,
                extra={
                    "fields": {
                        "REMOTE_ADDR": address,
                        "BAN": "lifted",
                        **({"MESSAGE_ID": _UNBAN_ID} if _UNBAN_ID else {}),
                    }
                },
            )

    # --- connect --------------------------------------------------------------------------

    def connection_refusal(self, handler: LoginHandler) -> str | None:
        """The 421 reply for a banned address, or None to let the connection in."""
        self._sweep()
        remaining = self.tracker.ban_remaining(handler.remote_ip)
        if remaining <= 0:
            return None
        return REPLY_BANNED.format(ip=handler.remote_ip, seconds=math.ceil(remaining))

    # --- USER -----------------------------------------------------------------------------

    def user_command(self, handler: LoginHandler, line: str) -> None:
        """Handle USER: start a login, or finish it at once for a certificate user."""
        if handler.authenticated:
            handler.respond("503 Already logged in; reconnect to log in as another user.")
            return
        refusal = self.connection_refusal(handler)
        if refusal:
            handler.respond(refusal)
            handler.close_when_done()
            return
        name = line.strip()
        if not name:
            handler.respond("501 Syntax error: USER needs a user name.")
            return
        handler.username = name
        user = self.authorizer.user(name)
        cert = handler.peer_certificate
        if user is None or user.auth == "password" or cert is None:
            # unknown users look like known ones: 331 now, the same 530 after PASS
            self._attempts[handler] = _Attempt(name, user.auth if user else "password")
            handler.respond("331 Username ok, send password.")
            return
        fp = fingerprint(cert)
        attempt = _Attempt(name, user.auth, fingerprint=fp)
        self._attempts[handler] = attempt
        match = self._match(user, cert, fp)
        if match == "unregistered":
            self._record_pending(handler, user, cert)
            self._fail(handler, attempt, "client certificate not registered", REPLY_UNREGISTERED)
        elif match == "other":
            self._fail(handler, attempt, "client certificate of another user", REPLY_OTHER_USER)
        elif user.auth == "certificate":
            self._succeed(handler, user, attempt, REPLY_CERT_LOGIN)
        else:
            attempt.cert_ok = True
            handler.respond("331 Certificate accepted, send password.")

    def _match(self, user: UserConfig, cert: x509.Certificate, fp: str) -> str:
        """'ok', 'other' (pinned by another user) or 'unregistered'."""
        if fp in user.certificates:
            return "ok"
        if fp in self._pinned:
            return "other"
        # a CN is only as good as the CA that signed it: without client_ca nothing verified it
        cn_trusted = bool(user.certificate_cn and self.config.tls.client_ca)
        if cn_trusted and cert_info(cert).common_name == user.certificate_cn:
            return "ok"
        return "unregistered"

    def _record_pending(
        self, handler: LoginHandler, user: UserConfig, cert: x509.Certificate
    ) -> None:
        if not self.config.tls.client_ca:
            return  # nothing verified this certificate: not worth an administrator's look
        self.pending.record(
            user.name, cert, handler.remote_ip, handler.listener_name, self.wall_clock()
        )

    # --- PASS -----------------------------------------------------------------------------

    def pass_command(self, handler: LoginHandler, line: str) -> None:
        """Handle PASS: verify off the loop; reply (230 or a delayed 530) when done."""
        attempt = self._attempts.get(handler)
        if handler.authenticated:
            if attempt and attempt.method == "certificate":
                handler.respond("202 Already logged in by certificate; no password needed.")
            else:
                handler.respond("503 User already authenticated.")
            return
        if not handler.username or attempt is None or attempt.user != handler.username:
            handler.respond("503 Login with USER first.")
            return
        user = self.authorizer.user(attempt.user)
        stored, reason = self._expected(user, attempt)
        handler.login_pending = True
        waker = self._loop_waker(handler.ioloop)
        future = self._pool.submit(_check_password, line, stored)

        def done(fut: Future[tuple[bool, str | None]]) -> None:
            waker.call_soon_threadsafe(lambda: self._pass_done(handler, user, attempt, reason, fut))

        future.add_done_callback(done)

    def _expected(self, user: UserConfig | None, attempt: _Attempt) -> tuple[str, str | None]:
        """(hash to verify, failure reason or None when a match logs the user in)."""
        if user is None:
            return self._dummy, "unknown user"
        if user.auth == "certificate":
            return self._dummy, "no client certificate"
        assert user.password is not None  # config.load guarantees it for these policies
        if user.auth == "certificate+password" and not attempt.cert_ok:
            # still hash, so the missing certificate is not told apart by timing
            return user.password, "no client certificate"
        return user.password, None

    def _loop_waker(self, ioloop: Any) -> LoopWaker:
        if self._waker is None or self._waker.ioloop is not ioloop:
            if self._waker is not None:
                self._waker.close()
            self._waker = LoopWaker(ioloop)
        return self._waker

    def _pass_done(
        self,
        handler: LoginHandler,
        user: UserConfig | None,
        attempt: _Attempt,
        reason: str | None,
        fut: Future[tuple[bool, str | None]],
    ) -> None:
        try:
            ok, problem = fut.result()
        except Exception as exc:  # a crashed worker is a failed login, never a login
            ok, problem = False, f"verification crashed: {exc!r}"
        if problem:
            log.error("user %s: password hash unusable: %s", _printable(attempt.user), problem)
        if ok and reason is None and user is not None:
            self._succeed(handler, user, attempt, None)
        else:
            self._fail(handler, attempt, reason or problem or "wrong password", REPLY_INCORRECT)

    # --- outcomes -------------------------------------------------------------------------

    def _succeed(
        self, handler: LoginHandler, user: UserConfig, attempt: _Attempt, reply: str | None
    ) -> None:
        handler.login_pending = False
        if getattr(handler, "_closed", False):
            return
        home = str(user.home)
        if not os.path.isdir(home):
            log.error("user %s authenticated but home %s is missing", user.name, home)
            handler.respond(REPLY_NO_HOME)
            handler.username = ""
            return
        if reply is None:
            msg = self.authorizer.get_msg_login(user.name)
            handler.handle_auth_success(home, "", msg)
        else:
            # pyftpdlib's handle_auth_success can only say 230; RFC 4217 wants 232 here
            handler.respond(reply)
            handler.authenticated = True
            handler.password = ""
            handler.attempted_logins = 0
            handler.fs = handler.abstracted_fs(home, handler)
            handler.on_login(user.name)
        metrics.login("ok", attempt.method)
        self._event(
            logging.INFO,
            message_ids.LOGIN_OK,
            f"user {user.name} logged in from {handler.remote_ip} ({attempt.method})",
            handler,
            user.name,
            attempt.method,
            attempt.fingerprint,
        )

    def _fail(self, handler: LoginHandler, attempt: _Attempt, reason: str, reply: str) -> None:
        verdict = self.tracker.failure(handler.remote_ip)
        metrics.login("failed", attempt.method)
        handler.login_pending = True
        handler.username = ""
        self._event(
            logging.WARNING,
            message_ids.LOGIN_FAILED,
            f"failed login for {_printable(attempt.user)} from {handler.remote_ip}: {reason}",
            handler,
            attempt.user,
            attempt.method,
            attempt.fingerprint,
            REASON=reason,
            FAILURES=str(verdict.failures),
        )
        if verdict.banned:
            metrics.ban()
            self._event(
                logging.WARNING,
                message_ids.ADDRESS_BANNED,
                f"address {handler.remote_ip} banned for {verdict.ban_seconds:.0f} s after "
                f"{verdict.failures} failed logins",
                handler,
                attempt.user,
                attempt.method,
                attempt.fingerprint,
                BAN="imposed",
                BAN_SECONDS=f"{verdict.ban_seconds:.0f}",
            )
            handler.ioloop.call_later(verdict.ban_seconds + 0.5, self._sweep)

        def answer() -> None:
            handler.login_pending = False
            if getattr(handler, "_closed", False):
                return
            handler.respond(reply)
            if verdict.banned:
                handler.close_when_done()

        handler.ioloop.call_later(verdict.delay, answer)


# --- the seam the FTP handler calls ------------------------------------------------------------


def _auth(handler: LoginHandler) -> Authenticator:
    auth: Authenticator = handler.server_state.auth
    return auth


def connection_refusal(handler: LoginHandler) -> str | None:
    """A 421 reply if the client's address is banned, else None."""
    return _auth(handler).connection_refusal(handler)


def user_command(handler: LoginHandler, line: str) -> None:
    """FTP USER."""
    _auth(handler).user_command(handler, line)


def pass_command(handler: LoginHandler, line: str) -> None:
    """FTP PASS."""
    _auth(handler).pass_command(handler, line)
