"""Users from `[user:NAME]`: the pyftpdlib authorizer, the home jail, home creation.

The authorizer answers pyftpdlib's questions (home, permissions, messages) from the config
users. Login decisions are not taken here but in `auth`, because they need the TLS peer
certificate, the worker pool and the ban table; `validate_authentication` exists only to
satisfy the contract and is never called on the event loop.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable
from typing import Any

from pyftpdlib.authorizers import AuthenticationFailed
from pyftpdlib.filesystems import AbstractedFS

from ..config.model import Config, UserConfig

__all__ = ["DeferredFile", "JailedFS", "UserAuthorizer", "ensure_homes", "outside_sentinel"]

log = logging.getLogger(__name__)

HOME_MODE = 0o750


def ensure_homes(config: Config) -> dict[str, str]:
    """Create missing homes (mode 0750); return {user: problem} for homes still unusable."""
    problems: dict[str, str] = {}
    for user in config.users:
        home = user.home
        if not home.exists() and not home.is_symlink():
            try:
                home.mkdir(mode=HOME_MODE, parents=True)
                # mkdir's mode is filtered by the umask; the home must be exactly 0750
                os.chmod(home, HOME_MODE)
                log.info("created home directory %s for user %s (mode 0750)", home, user.name)
            except OSError as exc:
                problems[user.name] = f"cannot create home directory {home}: {exc.strerror}"
                continue
        if not home.is_dir():
            problems[user.name] = f"home {home} is not a directory"
        elif not os.access(home, os.R_OK | os.X_OK):
            problems[user.name] = f"home directory {home} is not readable by this service"
    for name, problem in problems.items():
        log.error("user %s cannot log in: %s", name, problem)
    return problems


class UserAuthorizer:
    """pyftpdlib authorizer over the config users; `update` swaps them in on reload.

    One instance lives for the whole run, so handlers that captured it before a reload see
    the new users and permissions at once (a removed user loses every permission).
    """

    msg_login = "Login successful."
    msg_quit = "Goodbye."

    def __init__(self, users: tuple[UserConfig, ...] = ()) -> None:
        self._users: dict[str, UserConfig] = {}
        self.update(users)

    def update(self, users: tuple[UserConfig, ...]) -> None:
        """Replace the user table."""
        self._users = {u.name: u for u in users}

    def user(self, username: str) -> UserConfig | None:
        """The config of `username`, or None."""
        return self._users.get(username)

    def get_home_dir(self, username: str) -> str:
        """The real path of the user's home (the root of their jail)."""
        user = self._users.get(username)
        if user is None:
            raise AuthenticationFailed("no such user")
        return str(user.home)

    def get_perms(self, username: str) -> str:
        """pyftpdlib permission letters of `username` ('' for unknown users)."""
        user = self._users.get(username)
        return user.permissions if user else ""

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        """True when `username` may do `perm` on `path`, which must lie inside the home."""
        user = self._users.get(username)
        if user is None or perm not in user.permissions:
            return False
        return path is None or _inside(str(user.home), path)

    def get_msg_login(self, username: str) -> str:
        """Text of the 230 reply."""
        return self.msg_login

    def get_msg_quit(self, username: str) -> str:
        """Text of the 221 reply."""
        return self.msg_quit

    def impersonate_user(self, username: str, password: str) -> None:
        """Virtual users all run as the service account: nothing to switch."""

    def terminate_impersonation(self, username: str) -> None:
        """See impersonate_user."""

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        """Always refuse: logins go through `auth.pass_command`, off the event loop."""
        raise AuthenticationFailed("Login incorrect.")


def _inside(root: str, path: str) -> bool:
    return _inside_real(os.path.realpath(root), path)


def _inside_real(real_root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def outside_sentinel() -> str:
    """The virtual path `JailedFS.ftpnorm` returns for a climb above the root."""
    return "/.."


class DeferredFile:
    """The destination of an upload, opened only once its data connection is accepted.

    pyftpdlib opens (and for STOR truncates) the file when the command arrives, before any
    data connection exists; a connection refused afterwards (522, TLS failure, never made)
    would leave the old content destroyed. Until `open()` nothing on disk changes.
    """

    def __init__(self, name: str, mode: str, inside: Callable[[str], bool]) -> None:
        self.name = name
        self.mode = mode
        self._inside = inside
        self._file: Any = None
        self._offset: int | None = None
        self._shut = False

    @property
    def opened(self) -> bool:
        return self._file is not None

    @property
    def closed(self) -> bool:
        return self._shut

    def open(self) -> None:
        """Create/truncate/append now; OSError when the file can no longer be opened."""
        if self._file is None:
            if self._shut:
                raise OSError(9, "upload destination already closed", self.name)
            if not self._inside(self.name):  # a link swapped in since the command
                raise PermissionError(13, "Path is outside the home directory", self.name)
            self._file = open(self.name, self.mode)  # noqa: SIM115 - closed by close()
            if self._offset is not None:
                self._file.seek(self._offset)

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._file is not None:
            return int(self._file.seek(offset, whence))
        self._offset = offset  # REST: applied when the file is opened
        return offset

    def write(self, data: Any) -> int:
        if self._file is None:
            raise OSError(0, "upload destination not opened yet")
        return int(self._file.write(data))

    def close(self) -> None:
        self._shut = True
        if self._file is not None:
            self._file.close()


def _check_writable(path: str, create: bool) -> None:
    """Raise what open(path, "wb"/"ab") would, without creating or truncating anything."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise FileNotFoundError(2, "No such file or directory", path) from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", path) from None
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if not os.access(path, os.W_OK):
        raise PermissionError(13, "Permission denied", path)


class JailedFS(AbstractedFS):
    """AbstractedFS that refuses, rather than clamps, every way out of the home.

    pyftpdlib silently turns `CWD ..` at the root into `/`; here a `..` that climbs above the
    root maps to a path outside it, so the handler's `validpath` check answers 550 and the
    attempt is visible. Absolute client paths are virtual (relative to the home) as in any
    FTP server. Symlinks are resolved by `validpath`, which refuses targets outside the home.
    """

    def ftpnorm(self, ftppath: str) -> str:
        """Normalise a client path against the cwd; a climb above / yields the sentinel."""
        base = "/" if ftppath.startswith("/") else self.cwd
        depth = 0
        for part in f"{base}/{ftppath}".split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    return outside_sentinel()
            elif part not in ("", "."):
                depth += 1
        result: str = super().ftpnorm(ftppath)
        return result

    def ftp2fs(self, ftppath: str) -> str:
        """Real path for a client path; climbs above the home land outside it (refused)."""
        if self.ftpnorm(ftppath) == outside_sentinel():
            return os.path.dirname(os.path.normpath(self.root))
        result: str = super().ftp2fs(ftppath)
        return result

    _real_root: tuple[str, str] | None = None  # (root, the root with symlinks resolved)

    def validpath(self, path: str) -> bool:
        """True when `path`, symlinks resolved, lies inside the home.

        The home itself is resolved once per session (several checks per command each
        paid for it): a home an administrator re-points while a session runs refuses that
        session everything, never lets it follow."""
        cached = self._real_root
        if cached is None or cached[0] != self.root:
            cached = self._real_root = (self.root, os.path.realpath(self.root))
        return _inside_real(cached[1], path)

    def open(self, filename: str, mode: str) -> Any:
        """Open a file, refusing (again, at the last moment) a path resolving outside.

        Modes that create or truncate ("wb" for STOR, "ab" for APPE) give a `DeferredFile`:
        the checks run now, so a refusal is still a 550, but the file changes only when the
        data connection is accepted. "r+b" (STOR after REST) changes nothing by opening.
        """
        if not self.validpath(filename):
            raise PermissionError(13, "Path is outside the home directory", filename)
        if mode in ("wb", "ab"):
            _check_writable(filename, create=True)
            return DeferredFile(filename, mode, self.validpath)
        return super().open(filename, mode)

    def mkstemp(
        self, suffix: str = "", prefix: str = "", dir: str | None = None, mode: str = "wb"
    ) -> Any:
        """STOU: a fresh unique name, created (exclusively) only when the transfer starts."""
        directory = dir or self.root
        for _ in range(50):
            name = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}{suffix}")
            if not os.path.lexists(name):
                if self.validpath(directory):
                    _check_writable(name, create=True)
                # outside the home: pyftpdlib's permission check on the name answers 550;
                # nothing was created, and open() would refuse it again
                return DeferredFile(name, "xb", self.validpath)
        raise FileExistsError(17, "No usable unique file name found", directory)

    def readlink(self, path: str) -> str:
        """A link's target as the client sees it; targets outside the home are withheld.

        format_list shows a link whose readlink fails without a target (like a broken
        link); an absolute target inside the home is shown as its virtual path, so the
        real location of the home is not disclosed either.
        """
        if not self.validpath(path):
            raise PermissionError(13, "Link target is outside the home directory", path)
        target = os.readlink(path)
        if os.path.isabs(target):
            return str(self.fs2ftp(os.path.realpath(path)))
        return target

    def stat(self, path: str) -> Any:
        """stat() that refuses paths (links) resolving outside the home.

        MLSD lists entries through stat(); a refused one is skipped like a broken link.
        """
        if not self.validpath(path):
            raise PermissionError(13, "Path is outside the home directory", path)
        return super().stat(path)

    def listdir(self, path: str) -> list[str]:
        """List a directory inside the home."""
        if not self.validpath(path):
            raise PermissionError(13, "Path is outside the home directory", path)
        result: list[str] = super().listdir(path)
        return result
