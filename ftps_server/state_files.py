"""Files in `[server] state_dir`, never reached through a link the service user planted.

The service user owns `state_dir`, while `ftps-server remind` and `pending-certs` may run as
root. So every file there is opened relative to a descriptor of its directory with
`O_NOFOLLOW` (a link `reminders.lock -> /etc/shadow` or `spool -> /etc` is refused, not
followed), ownership is changed with `fchown` on the descriptor that was opened (never by
name), and a file with a second hard link is never chowned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import stat
from pathlib import Path

__all__ = [
    "SERVICE_USER",
    "UnsafeStateFile",
    "adopt",
    "atomic_write",
    "check_dir_owner",
    "dir_owner",
    "open_dir",
    "open_file",
    "read_bytes",
]

#: The account the service runs as (systemd User=); root may only use a directory it owns.
SERVICE_USER = "ftps-server"
#: Names another service account (a name or a numeric uid): tests, or a renamed account.
SERVICE_USER_ENV = "FTPS_SERVER_SERVICE_USER"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeStateFile(OSError):
    """A file or directory in state_dir that must not be used (a link, not a regular file...)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.ELOOP, f"{path} {why}; refusing to use it (remove it)")


def service_uid() -> int | None:
    """The service account's uid, None when no such account exists."""
    name = os.environ.get(SERVICE_USER_ENV, SERVICE_USER)
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _where(name: str, dir_path: Path | None) -> str:
    return str(dir_path / name) if dir_path else name


def open_dir(
    name: str | Path,
    *,
    dir_fd: int | None = None,
    dir_path: Path | None = None,
    create: bool = False,
) -> int:
    """A descriptor of directory `name` (relative to dir_fd), refusing a symbolic link."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o750, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and dir_fd is not None:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            what = "is a symbolic link" if stat.S_ISLNK(st.st_mode) else "is not a directory"
            raise UnsafeStateFile(_where(str(name), dir_path), what) from None
        raise


def open_file(
    name: str, flags: int, *, dir_fd: int, dir_path: Path | None = None, mode: int = 0o640
) -> int:
    """Open regular file `name` in the directory `dir_fd` without following a link."""
    # O_NONBLOCK: a FIFO planted under the name must not hang a root run in open().
    all_flags = flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(name, all_flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStateFile(_where(name, dir_path), "is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeStateFile(_where(name, dir_path), "is not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_bytes(name: str, *, dir_fd: int, dir_path: Path | None = None, limit: int) -> bytes:
    """The content of regular file `name`; ValueError past `limit` bytes."""
    fd = open_file(name, os.O_RDONLY, dir_fd=dir_fd, dir_path=dir_path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def dir_owner(dir_fd: int) -> tuple[int, int] | None:
    """Whom files made here by root should belong to: the directory's owner (None: keep)."""
    if os.geteuid() != 0:
        return None
    st = os.fstat(dir_fd)
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def check_dir_owner(dir_fd: int, path: Path) -> None:
    """Run as root, refuse a state directory owned by anyone but root or the service user."""
    if os.geteuid() != 0:
        return
    uid = os.fstat(dir_fd).st_uid
    allowed = {0, service_uid()}
    if uid not in allowed:
        raise OSError(
            errno.EPERM,
            f"{path} is owned by uid {uid}, neither root nor the service user "
            f"{os.environ.get(SERVICE_USER_ENV, SERVICE_USER)}; refusing to work there as root",
        )


def adopt(fd: int, owner: tuple[int, int] | None, what: str) -> None:
    """Give the file or directory open as `fd` to `owner` (by descriptor, never by name)."""
    if owner is None:
        return
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == owner:
        return
    if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
        # a hard link to a file elsewhere (e.g. /etc/shadow) must not change hands
        raise UnsafeStateFile(what, "has more than one hard link")
    os.fchown(fd, *owner)


def fsync_dir(dir_fd: int) -> None:
    """Make renames and unlinks in the directory durable."""
    os.fsync(dir_fd)


def atomic_write(
    name: str,
    data: bytes,
    *,
    dir_fd: int,
    owner: tuple[int, int] | None = None,
    mode: int = 0o640,
) -> None:
    """Replace `name` in `dir_fd` with `data`: temp file, fsync, rename, fsync the directory.

    The temp file is created with O_EXCL (never through a link) and the rename replaces a
    link planted under `name` rather than writing through it.
    """
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=dir_fd,
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # the umask must not narrow or widen it
            os.fsync(handle.fileno())
            if owner:
                os.fchown(handle.fileno(), *owner)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    fsync_dir(dir_fd)
