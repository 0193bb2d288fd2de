"""The reminders' files in `[server] state_dir` (or a fleet's `[alerts] shared_state_dir`,
shared by every node): dedup state, its lock, and the mail spool.

- `reminders.json`: which reminders went out (replaced atomically: temp file, fsync, rename).
- `reminders.lock`: an exclusive `flock` held for a whole run, so the daily timer and the
  server starting never both decide and send. A separate file, because the state file is
  replaced by rename and a lock on the old inode would no longer exclude anyone.
- `spool/*.json`: one file per email, written and fsynced BEFORE delivery is attempted and
  removed only after the SMTP server accepted it. Each names the dedup keys it satisfies, so
  a crash between spooling and saving the state can still be reconciled on the next run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import cast

from .. import state_files
from . import mail

__all__ = ["SpoolEntry", "State", "Store"]

log = logging.getLogger(__name__)

_VERSION = 1
STATE_NAME = "reminders.json"
LOCK_NAME = "reminders.lock"
SPOOL_NAME = "spool"
# A state or spool file is a few KiB; anything far larger is not ours.
_MAX_FILE = 4 * 1024 * 1024
# flock excludes other processes and other open file descriptions; this lock also covers
# threads of one process that share nothing but the module (serve's start-up thread).
_THREAD_LOCK = threading.Lock()


@dataclass
class State:
    """What was mailed: threshold keys -> day, per-day keys -> last day, first-seen days."""

    sent: dict[str, str] = field(default_factory=dict)
    days: dict[str, str] = field(default_factory=dict)
    since: dict[str, str] = field(default_factory=dict)

    def record(self, sent_keys: list[str], day_keys: list[str], day: str) -> None:
        """Note that an email satisfying these keys was queued on `day` (ISO date)."""
        for key in sent_keys:
            self.sent.setdefault(key, day)
        for key in day_keys:
            self.days[key] = max(self.days.get(key, day), day)

    def prune(self, today: str, keep_prefixes: set[str], max_age_days: int) -> None:
        """Forget entries that can no longer block an email (bounded file size)."""
        limit = (dt.date.fromisoformat(today) - dt.timedelta(days=max_age_days)).isoformat()
        self.sent = {
            k: d
            for k, d in self.sent.items()
            if d >= limit or any(k.startswith(p) for p in keep_prefixes)
        }
        self.days = {k: d for k, d in self.days.items() if d >= limit}


@dataclass(frozen=True)
class SpoolEntry:
    """One undelivered email and the dedup keys it satisfies."""

    path: Path
    message: EmailMessage
    sent_keys: list[str]
    day_keys: list[str]
    day: str


class Store:
    """The files of one state directory, never reached through a planted link (see
    `state_files`): `remind` may run as root in a directory the service user owns."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state_path = state_dir / STATE_NAME
        self.lock_path = state_dir / LOCK_NAME
        self.spool_dir = state_dir / SPOOL_NAME
        self._fds: tuple[int, int] | None = None  # (state_dir, spool) while locked

    @contextlib.contextmanager
    def _dirs(self) -> Iterator[tuple[int, int | None]]:
        """(state_dir fd, spool fd or None when absent): the locked ones, or opened now."""
        if self._fds is not None:
            yield self._fds
            return
        top = state_files.open_dir(self.state_dir)
        try:
            try:
                spool: int | None = state_files.open_dir(
                    SPOOL_NAME, dir_fd=top, dir_path=self.state_dir
                )
            except FileNotFoundError:
                spool = None
            try:
                yield top, spool
            finally:
                if spool is not None:
                    os.close(spool)
        finally:
            os.close(top)

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """Hold the exclusive lock; yield the current state (save it with `save`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        top = state_files.open_dir(self.state_dir)
        spool = lock = -1
        try:
            state_files.check_dir_owner(top, self.state_dir)
            owner = state_files.dir_owner(top)
            spool = state_files.open_dir(
                SPOOL_NAME, dir_fd=top, dir_path=self.state_dir, create=True
            )
            state_files.adopt(spool, owner, str(self.spool_dir))
            lock = state_files.open_file(
                LOCK_NAME, os.O_RDWR | os.O_CREAT, dir_fd=top, dir_path=self.state_dir
            )
            state_files.adopt(lock, owner, str(self.lock_path))
            with _THREAD_LOCK:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._fds = (top, spool)
                try:
                    yield self.load()
                finally:
                    self._fds = None
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            for fd in (lock, spool, top):
                if fd >= 0:
                    os.close(fd)

    def load(self, *, set_aside: bool = True) -> State:
        """The saved state; an unreadable or ill-typed file is set aside (reminders start
        afresh: better one duplicate reminder than none at all)."""
        try:
            with self._dirs() as (top, _):
                try:
                    raw = state_files.read_bytes(
                        STATE_NAME, dir_fd=top, dir_path=self.state_dir, limit=_MAX_FILE
                    )
                    return _parse_state(json.loads(raw.decode("utf-8")))
                except FileNotFoundError:
                    return State()
                except PermissionError:
                    raise  # an unusable state directory, not a broken file: the caller names it
                except (OSError, ValueError, AttributeError, TypeError) as exc:
                    log.error("state file %s is unreadable (%s)", self.state_path, exc)
                    if set_aside:
                        aside = STATE_NAME + ".broken"
                        log.error("moved %s to %s; reminders start afresh", self.state_path, aside)
                        with contextlib.suppress(OSError):
                            os.replace(STATE_NAME, aside, src_dir_fd=top, dst_dir_fd=top)
                    return State()
        except FileNotFoundError:
            return State()  # no state directory yet (dry run before the first run)

    def save(self, state: State) -> None:
        """Replace the state file atomically."""
        data = {"version": _VERSION, "sent": state.sent, "days": state.days, "since": state.since}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        with self._dirs() as (top, _):
            owner = state_files.dir_owner(top)
            state_files.atomic_write(STATE_NAME, text.encode(), dir_fd=top, owner=owner, mode=0o600)

    def spool(
        self, message: EmailMessage, sent_keys: list[str], day_keys: list[str], day: str
    ) -> Path:
        """Write `message` to the spool (durably) and return its file."""
        text = message.as_string()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{digest}.json"
        record = {
            "version": _VERSION,
            "day": day,
            "sent_keys": sent_keys,
            "day_keys": day_keys,
            "message": text,
        }
        with self._dirs() as (top, spool):
            if spool is None:
                raise FileNotFoundError(errno.ENOENT, f"{self.spool_dir} does not exist")
            state_files.atomic_write(
                name,
                (json.dumps(record, indent=1) + "\n").encode(),
                dir_fd=spool,
                owner=state_files.dir_owner(top),
                mode=0o600,
            )
        return self.spool_dir / name

    def pending(self) -> list[SpoolEntry]:
        """Every spooled email, oldest first; unreadable files are logged and left alone."""
        entries = []
        with self._dirs() as (_, spool):
            if spool is None:
                return []
            for name in sorted(n for n in os.listdir(spool) if _is_spool_name(n)):
                path = self.spool_dir / name
                try:
                    raw = state_files.read_bytes(
                        name, dir_fd=spool, dir_path=self.spool_dir, limit=_MAX_FILE
                    )
                    entries.append(_parse_spool(path, json.loads(raw.decode("utf-8"))))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.error("spooled email %s is unreadable and stays there: %s", path, exc)
        return entries

    def count_pending(self) -> int:
        """How many files wait in the spool (readable or not)."""
        try:
            with self._dirs() as (_, spool):
                return 0 if spool is None else sum(map(_is_spool_name, os.listdir(spool)))
        except FileNotFoundError:
            return 0

    def remove(self, path: Path) -> None:
        """Drop a delivered email from the spool (durably, so it is never sent again)."""
        with self._dirs() as (_, spool):
            if spool is None:
                raise FileNotFoundError(errno.ENOENT, f"{self.spool_dir} does not exist")
            os.unlink(path.name, dir_fd=spool)
            state_files.fsync_dir(spool)


def _is_spool_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _str_dict(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f'"{what}" must map strings to strings')
    return dict(value)


def _str_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f'"{what}" must be a list of strings')
    return list(value)


def _parse_state(raw: object) -> State:
    if not isinstance(raw, dict):
        raise TypeError("not a JSON object")
    return State(
        sent=_str_dict(raw.get("sent", {}), "sent"),
        days=_str_dict(raw.get("days", {}), "days"),
        since=_str_dict(raw.get("since", {}), "since"),
    )


def _parse_spool(path: Path, raw: object) -> SpoolEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("message"), str):
        raise TypeError('not a JSON object with a "message" string')
    if not isinstance(raw.get("day", ""), str):
        raise TypeError('"day" must be a string')
    # The mail policy, not the default one: headers must stay unfolded on the way out.
    message = email.message_from_string(raw["message"], policy=mail.POLICY)
    return SpoolEntry(
        path=path,
        message=cast(EmailMessage, message),
        sent_keys=_str_list(raw.get("sent_keys", []), "sent_keys"),
        day_keys=_str_list(raw.get("day_keys", []), "day_keys"),
        day=str(raw.get("day", "")),
    )
