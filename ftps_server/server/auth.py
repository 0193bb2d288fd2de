"""Login policy: USER/PASS, certificates mapped to users, delays, bans, login events.

The FTP handler calls `connection_refusal` on connect, `user_command` for USER and
`pass_command` for PASS; each finds the `Authenticator` at `handler.server_state.auth`.
Password hashes are checked by `password_queue` on worker threads and the verdict comes back
to the event loop through `LoopWaker`, so a storm of logins never stalls transfers. A PASS
counts against its address from the moment it is sent (`FailureTracker.reserve`), and a
password proved right recently is recognised by `VerifierCache` without scrypt. While a PASS is
checked or a failure reply is held back, `handler.login_pending` is True and the handler
accepts only QUIT.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from ..config.model import Config, UserConfig
from ..journal import message_ids
from ..journal.log import log_event
from ..pki.certs import utcnow
from ..pki.passwords import PasswordError, VerifierCache
from ..pki.passwords import verify_password as _verify_password
from . import metrics
from .bans import BanPolicy, Clock, FailureTracker
from .login_policy import (
    REPLY_ATTEMPTS,
    REPLY_BAD_NAME,
    REPLY_BANNED,
    REPLY_BUSY,
    REPLY_CERT_LOGIN,
    REPLY_INCORRECT,
    REPLY_NO_HOME,
    REPLY_UNREGISTERED,
    Attempt,
    CertificateOwners,
    UserOutcome,
    ban_policy,
    decide_user,
    dummy_hash,
    expected_hash,
    name_problem,
    pass_refusal,
    printable,
)
from .password_queue import Job, PasswordQueue, default_workers
from .pending import PendingStore
from .pyftpdlib_adapter import complete_login, is_closed
from .users import JailedFS, UserAuthorizer, ensure_homes
from .wakeup import LoopWaker

__all__ = [
    "CACHE_SECONDS",
    "REPLY_ATTEMPTS",
    "REPLY_BAD_NAME",
    "REPLY_BANNED",
    "REPLY_BUSY",
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

# How long a proved password is recognised without scrypt (see passwords.VerifierCache)
CACHE_SECONDS = 900.0
_PER_USER = 2  # hashes running at once for one user name
_QUEUE_PER_WORKER = 32  # hashes waiting per worker before a PASS gets 421: ~10 s of work


class LoginHandler(Protocol):
    """What auth needs from the FTP handler (ftp.FtpsHandler, a pyftpdlib FTPHandler)."""

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


@dataclass(eq=False)
class _Check:
    """One PASS waiting for the verdict of its job."""

    handler: LoginHandler
    user: UserConfig | None
    attempt: Attempt
    reason: str | None
    reserved: bool  # counted by FailureTracker.reserve (False: joined a check in flight)


def _closed(handler: LoginHandler) -> bool:
    return is_closed(handler)


def _check_password(password: str, stored: str) -> tuple[bool, str | None]:
    """Worker-thread body: (matches, config problem or None)."""
    try:
        return _verify_password(password, stored), None
    except PasswordError as exc:
        return False, str(exc)


class Authenticator:
    """Owns users, the jail, the ban table, the pending-certificate store and the hash pool."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = time.monotonic,
        workers: int | None = None,
        delays: tuple[float, float] = (BanPolicy.first_delay, BanPolicy.max_delay),
        queue_limit: int | None = None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        # delays: (first, max) seconds a failed login's reply is held back; tests shrink them
        self.config = config
        self.cache = VerifierCache(cache_seconds, clock)
        self.delays = delays
        self.authorizer = UserAuthorizer(config.users)
        self.filesystem = JailedFS
        self.tracker = FailureTracker(ban_policy(config, delays), clock)
        self.pending = PendingStore(config.server.state_dir)
        self.wall_clock = utcnow
        n = workers or default_workers()
        self.queue = PasswordQueue(
            _check_password,
            workers=n,
            limit=_QUEUE_PER_WORKER * n if queue_limit is None else queue_limit,
            # one address never holds more than half the workers (one on a 2-core machine):
            # a flood from one address leaves the other cores to everyone else
            per_address=max(1, min(2, n // 2)),
            per_user=_PER_USER,
            settle=self._settle,
            done=self._job_done,
        )
        self._waker: LoopWaker | None = None
        self._attempts: weakref.WeakKeyDictionary[Any, Attempt] = weakref.WeakKeyDictionary()
        self._apply(config)

    def _apply(self, config: Config) -> None:
        self.config = config
        self.authorizer.update(config.users)
        self.tracker.set_policy(ban_policy(config, self.delays))
        self.owners = CertificateOwners(config)
        ensure_homes(config)  # creates missing homes; a login to an unusable one gets 530
        self._dummy = dummy_hash(config)
        self.cache.clear()  # users, hashes or the dummy may have changed

    def reload(self, config: Config) -> None:
        """Take new users and limits; bans and sessions in progress are kept."""
        self._apply(config)
        self.pending.prune(config)

    def close(self) -> None:
        """Stop the worker pool and unregister from the event loop."""
        self.queue.close()
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
            "USER": printable(user),
            "REMOTE_ADDR": handler.remote_ip,
            "LISTENER": handler.listener_name,
            "AUTH_METHOD": method,
            **extra,
        }
        if fp:  # only when a certificate was presented: an empty field says nothing
            fields["CERT_FINGERPRINT"] = fp
        session_log = getattr(handler, "session_log", None)  # events.SessionLog
        if session_log is not None:  # joins the login to its session's other entries
            fields["SESSION_ID"] = session_log.id
        if message_id:
            fields["MESSAGE_ID"] = message_id
        log_event(log, level, text, fields)

    def _sweep(self) -> None:
        for address in self.tracker.expire():
            log.info(
                "ban on %s lifted",
                address,
                extra={
                    "fields": {
                        "REMOTE_ADDR": address,
                        "BAN": "lifted",
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
        problem = name_problem(name)
        if problem:
            handler.respond(problem)
            return
        handler.username = name
        user = self.authorizer.user(name)
        decision = decide_user(name, user, handler.peer_certificate, self.owners)
        self._attempts[handler] = decision.attempt
        if decision.outcome is UserOutcome.FAIL:
            if decision.record_pending and user is not None:
                self._record_pending(handler, user)
            attempt, reason, reply = decision.attempt, decision.reason, decision.reply
            if decision.owner:
                self._fail(handler, attempt, reason, reply, CERT_OWNER=decision.owner)
            else:
                self._fail(handler, attempt, reason, reply)
        elif decision.outcome is UserOutcome.CERTIFICATE_LOGIN and user is not None:
            self._succeed(handler, user, decision.attempt, decision.reply)
        else:
            handler.respond(decision.reply)

    def _record_pending(self, handler: LoginHandler, user: UserConfig) -> None:
        """Keep an unregistered (CA-verified) certificate for an administrator's look."""
        cert = handler.peer_certificate
        assert cert is not None
        self.pending.record(
            user.name, cert, handler.remote_ip, handler.listener_name, self.wall_clock()
        )

    # --- PASS -----------------------------------------------------------------------------

    def pass_command(self, handler: LoginHandler, line: str) -> None:
        """Handle PASS: verify off the loop; reply (230 or a delayed 530) when done."""
        attempt = self._attempts.get(handler)
        out_of_turn = pass_refusal(handler.authenticated, handler.username, attempt)
        if out_of_turn or attempt is None:
            handler.respond(out_of_turn or "503 Login with USER first.")
            return
        refusal = self.connection_refusal(handler)  # a ban may have started since USER
        if refusal:
            handler.respond(refusal)
            handler.close_when_done()
            return
        user = self.authorizer.user(attempt.user)
        stored, reason = expected_hash(user, attempt, self._dummy)
        tag = self.cache.tag(attempt.user, stored, line)
        if reason is None and user is not None and self.cache.matches(attempt.user, tag):
            self._succeed(handler, user, attempt, None)  # proved recently: no scrypt again
            return
        job = self.queue.job(tag)
        if job is None and self.queue.full():
            log.warning(
                "login of %s from %s refused: %d password checks already waiting",
                printable(attempt.user),
                handler.remote_ip,
                self.queue.waiting,
            )
            handler.respond(REPLY_BUSY)
            handler.close_when_done()
            return
        reserved = self.tracker.reserve(handler.remote_ip)
        if not reserved and job is None:
            # failures and checks in flight reach the limit: a new guess could overshoot it.
            # The same password as a check in flight is no new guess: it joins that check
            # (many parallel sessions of one partner behind one address still get in)
            handler.respond(REPLY_ATTEMPTS.format(ip=handler.remote_ip))
            handler.close_when_done()
            return
        handler.login_pending = True
        waker = self._loop_waker(handler.ioloop)
        if job is None:
            job = Job(tag, attempt.user, self.tracker.key(handler.remote_ip), line, stored)
            self.queue.add(job)
        job.checks.append(_Check(handler, user, attempt, reason, reserved))
        self.queue.dispatch(waker)

    def _loop_waker(self, ioloop: Any) -> LoopWaker:
        if self._waker is None or self._waker.ioloop is not ioloop:
            if self._waker is not None:
                self._waker.close()
            self._waker = LoopWaker(ioloop)
        return self._waker

    # --- the hash queue (event loop thread only) ---------------------------------------------

    def _settle(self, job: Job) -> bool:
        """Before a job starts: drop departed clients, answer from the cache. True if done."""
        checks: list[_Check] = job.checks
        for check in [c for c in checks if _closed(c.handler)]:
            checks.remove(check)
            # submitted and abandoned: counted, never hashed (a flood that does not wait)
            reason = "client left before the check"
            self._fail(check.handler, check.attempt, reason, "", reserved=check.reserved)
        if not checks:
            return True
        if all(c.reason is None for c in checks) and self.cache.matches(job.name, job.tag):
            self._resolve(job, True, None)  # a job just before it proved this password
            return True
        return False

    def _job_done(self, job: Job, ok: bool, problem: str | None) -> None:
        if problem:
            log.error("user %s: password hash unusable: %s", printable(job.name), problem)
        if ok:
            current = self.authorizer.user(job.name)
            if current is not None and current.password == job.stored:  # not changed meanwhile
                self.cache.remember(job.name, job.tag)
        self._resolve(job, ok, problem)

    def _resolve(self, job: Job, ok: bool, problem: str | None) -> None:
        """Answer every PASS that waited on `job`."""
        check: _Check
        for check in job.checks:
            handler = check.handler
            if ok and check.reason is None and check.user is not None:
                if check.reserved:
                    self.tracker.release(handler.remote_ip)
                remaining = self.tracker.ban_remaining(handler.remote_ip)
                if remaining > 0:  # the ban started while this was checked: no login after it
                    handler.login_pending = False
                    if not _closed(handler):
                        seconds = math.ceil(remaining)
                        handler.respond(REPLY_BANNED.format(ip=handler.remote_ip, seconds=seconds))
                        handler.close_when_done()
                    continue
                self._succeed(handler, check.user, check.attempt, None)
            else:
                reason = check.reason or problem or "wrong password"
                self._fail(handler, check.attempt, reason, REPLY_INCORRECT, reserved=check.reserved)

    # --- outcomes -------------------------------------------------------------------------

    def _succeed(
        self, handler: LoginHandler, user: UserConfig, attempt: Attempt, reply: str | None
    ) -> None:
        handler.login_pending = False
        if is_closed(handler):
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
            complete_login(handler, home, reply, user.name)
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

    def _fail(
        self,
        handler: LoginHandler,
        attempt: Attempt,
        reason: str,
        reply: str,
        *,
        reserved: bool = False,
        **extra: str,
    ) -> None:
        verdict = self.tracker.failure(handler.remote_ip, reserved=reserved)
        metrics.login("failed", attempt.method)
        handler.login_pending = True
        handler.username = ""
        self._event(
            logging.WARNING,
            message_ids.LOGIN_FAILED,
            f"failed login for {printable(attempt.user)} from {handler.remote_ip}: {reason}",
            handler,
            attempt.user,
            attempt.method,
            attempt.fingerprint,
            REASON=reason,
            FAILURES=str(verdict.failures),
            **extra,
        )
        if verdict.banned:
            metrics.ban()
            key = self.tracker.key(handler.remote_ip)
            self._event(
                logging.WARNING,
                message_ids.ADDRESS_BANNED,
                f"address {handler.remote_ip}{f' ({key})' if key != handler.remote_ip else ''} "
                f"banned for {verdict.ban_seconds:.0f} s after {verdict.failures} failed logins",
                handler,
                attempt.user,
                attempt.method,
                attempt.fingerprint,
                BAN="imposed",
                BAN_SECONDS=f"{verdict.ban_seconds:.0f}",
                BAN_KEY=key,
            )
            handler.ioloop.call_later(verdict.ban_seconds + 0.5, self._sweep)

        def answer() -> None:
            handler.login_pending = False
            if _closed(handler) or not reply:
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
