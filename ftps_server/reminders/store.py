"""The reminders' files in `[server] state_dir`: dedup state, its lock, and the mail spool.

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
import email.policy
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

__all__ = ["SpoolEntry", "State", "Store"]

log = logging.getLogger(__name__)

_VERSION = 1
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

    @property
    def subject(self) -> str:
        """The email's subject line."""
        return str(self.message["Subject"] or "")


class Store:
    """The files of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state_path = state_dir / "reminders.json"
        self.lock_path = state_dir / "reminders.lock"
        self.spool_dir = state_dir / "spool"

    def _owner(self) -> tuple[int, int] | None:
        # `ftps-server remind` run by hand as root must not leave root-owned files that the
        # service (User=ftps-server) can no longer replace: give them the directory's owner.
        if os.geteuid() != 0:
            return None
        st = self.state_dir.stat()
        return None if st.st_uid == 0 else (st.st_uid, st.st_gid)

    def _adopt(self, path: Path) -> None:
        owner = self._owner()
        if owner:
            os.chown(path, *owner)

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """Hold the exclusive lock; yield the current state (save it with `save`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if not self.spool_dir.is_dir():
            self.spool_dir.mkdir(mode=0o750)
            self._adopt(self.spool_dir)
        with _THREAD_LOCK, open(self.lock_path, "a+b") as lock:
            self._adopt(self.lock_path)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self.load()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def load(self, *, set_aside: bool = True) -> State:
        """The saved state; an unreadable file is set aside (the run then starts afresh)."""
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
            return State(
                sent=dict(raw.get("sent", {})),
                days=dict(raw.get("days", {})),
                since=dict(raw.get("since", {})),
            )
        except FileNotFoundError:
            return State()
        except PermissionError:
            raise  # an unusable state directory, not a broken file: the caller names the key
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # Better one duplicate reminder than none at all: keep the broken file for a human.
            aside = self.state_path.with_suffix(".json.broken")
            log.error("state file %s is unreadable (%s)", self.state_path, exc)
            if set_aside:
                log.error("moved %s to %s; reminders start afresh", self.state_path, aside)
                with contextlib.suppress(OSError):
                    self.state_path.replace(aside)
            return State()

    def save(self, state: State) -> None:
        """Replace the state file atomically."""
        data = {"version": _VERSION, "sent": state.sent, "days": state.days, "since": state.since}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        _atomic_write(self.state_path, text, self._owner())

    def spool(
        self, message: EmailMessage, sent_keys: list[str], day_keys: list[str], day: str
    ) -> Path:
        """Write `message` to the spool (durably) and return its file."""
        text = message.as_string()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        path = self.spool_dir / f"{stamp}-{digest}.json"
        record = {
            "version": _VERSION,
            "day": day,
            "sent_keys": sent_keys,
            "day_keys": day_keys,
            "message": text,
        }
        _atomic_write(path, json.dumps(record, indent=1) + "\n", self._owner())
        return path

    def pending(self) -> list[SpoolEntry]:
        """Every spooled email, oldest first; unreadable files are logged and left alone."""
        entries = []
        for path in sorted(self.spool_dir.glob("*.json")):
            try:
                raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
                message = email.message_from_string(raw["message"], policy=email.policy.default)
                entries.append(
                    SpoolEntry(
                        path=path,
                        message=cast(EmailMessage, message),
                        sent_keys=list(raw.get("sent_keys", [])),
                        day_keys=list(raw.get("day_keys", [])),
                        day=str(raw.get("day", "")),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("spooled email %s is unreadable and stays there: %s", path, exc)
        return entries

    def count_pending(self) -> int:
        """How many files wait in the spool (readable or not)."""
        if not self.spool_dir.is_dir():
            return 0
        return sum(1 for _ in self.spool_dir.glob("*.json"))

    def remove(self, path: Path) -> None:
        """Drop a delivered email from the spool (durably, so it is never sent again)."""
        path.unlink()
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    # Temp file in the same directory so rename() is atomic; fsync file then directory so a
    # power cut leaves either the old or the new content, never an empty file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            if owner:
                os.fchown(handle.fileno(), *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
