"""File checksums for HASH and the X-commands: algorithms, byte ranges, a cache, bounded workers.

No FTP and no pyftpdlib here. The FTP glue opens the file (jail and permission checked there,
as for RETR), asks `Checksums.lookup` for a cached answer, else `Checksums.start`s a job; the
job reads the file in a worker thread (hashlib and zlib release the GIL on large buffers, so
the event loop keeps answering) and calls `done` in that thread, which the glue hands back to
its loop. Admission is bounded per user and in total, so no client can queue unbounded work.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import stat
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ALGORITHMS",
    "X_COMMANDS",
    "ByteRange",
    "Checksums",
    "FileIdentity",
    "Outcome",
    "RangeError",
    "Refusal",
    "StreamDigest",
    "algorithm_name",
    "default_algorithm",
    "digest_file",
    "hash_feature",
    "new_hasher",
    "open_regular",
    "parse_algorithms",
    "resolve_range",
    "split_range_argument",
]

# the draft's (IANA-style) names, in order of preference; FEAT lists them in this order
ALGORITHMS = ("SHA-256", "SHA-512", "SHA-1", "MD5", "CRC32")
# ProFTPD mod_digest's commands and the algorithm each one asks for
X_COMMANDS = {
    "XSHA256": "SHA-256",
    "XSHA512": "SHA-512",
    "XSHA1": "SHA-1",
    "XMD5": "MD5",
    "XCRC": "CRC32",
}
_HASHLIB_NAMES = {"SHA-256": "sha256", "SHA-512": "sha512", "SHA-1": "sha1", "MD5": "md5"}

GLOBAL_LIMIT = 4  # checksums computed at once by the whole server (each one keeps a core busy)
PER_USER_LIMIT = 2  # ... by one user over all of that user's sessions
CACHE_ENTRIES = 4096  # (file identity, algorithm, range) -> digest; ~200 bytes each
CHUNK = 1024 * 1024  # bytes per read; large enough that hashlib drops the GIL for it
_RANGE_RE = re.compile(r"^(.*\S) +([0-9]{1,20}) +([0-9]{1,20})$", re.ASCII)


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


class _Crc32:
    """zlib.crc32 behind the hashlib interface; the same value as `cksum -a crc32b`."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for one of `ALGORITHMS`."""
    if algorithm == "CRC32":
        return _Crc32()
    # integrity, not secrecy: MD5 and SHA-1 must still work on FIPS-restricted OpenSSL builds
    return hashlib.new(_HASHLIB_NAMES[algorithm], usedforsecurity=False)


def algorithm_name(text: str) -> str:
    """The canonical name for `text` ('sha256', 'SHA-256', 'crc-32' ...); ValueError if unknown."""
    wanted = text.strip().upper().replace("-", "").replace("_", "")
    for name in ALGORITHMS:
        if name.replace("-", "") == wanted:
            return name
    raise ValueError(f"unknown checksum algorithm {text!r} (known: {', '.join(ALGORITHMS)})")


def parse_algorithms(items: tuple[str, ...]) -> tuple[str, ...]:
    """Canonical names of the offered algorithms, in preference order; at least one."""
    wanted = {algorithm_name(item) for item in items}
    if not wanted:
        raise ValueError(f"needs at least one of: {', '.join(ALGORITHMS)}")
    return tuple(name for name in ALGORITHMS if name in wanted)


def default_algorithm(offered: tuple[str, ...]) -> str:
    """The algorithm HASH uses before any OPTS HASH: SHA-256 if offered, else the strongest."""
    return offered[0]


def hash_feature(offered: tuple[str, ...], selected: str) -> str:
    """The FEAT line of the draft, e.g. 'HASH SHA-256*;SHA-512;MD5'."""
    return "HASH " + ";".join(name + ("*" if name == selected else "") for name in offered)


# --- byte ranges -----------------------------------------------------------------------------


class RangeError(ValueError):
    """A byte range that does not fit the file (answered 501)."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes start .. end-1 as asked by the client, not yet checked against the file."""

    start: int
    end: int


def split_range_argument(arg: str) -> tuple[str, ByteRange | None]:
    """'path [start end]' of the X-commands -> (path, range); paths may hold spaces.

    As in mod_digest, end is the offset after the last byte. A path ending in one number
    ('XMD5 report 2024') is a path: mod_digest refuses 'path end' as ambiguous.
    """
    match = _RANGE_RE.match(arg)
    if match is None:
        return arg, None
    return match[1], ByteRange(int(match[2]), int(match[3]))


def resolve_range(wanted: ByteRange | None, size: int) -> tuple[int, int]:
    """(start, end) to hash in a file of `size` bytes; the whole file when `wanted` is None."""
    if wanted is None:
        return 0, size
    if wanted.end > size:
        raise RangeError(f"end {wanted.end} exceeds the file size ({size} bytes)")
    if wanted.start >= wanted.end:
        raise RangeError(f"end ({wanted.end}) must be greater than start ({wanted.start})")
    return wanted.start, wanted.end


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    """What must be unchanged for a cached digest to hold.

    ctime as well as mtime: a client can write same-size content and then set the old mtime
    back with MFMT, but no client can set ctime.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Cancelled(Exception):
    """The session went away (or the server stops) while its checksum was computed."""


class FileChanged(Exception):
    """The file changed while it was read: the digest would describe no version of it."""


def digest_file(
    fd: int,
    algorithm: str,
    start: int,
    end: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> str:
    """Hex digest of bytes start..end-1 of the open file `fd`; for a worker thread."""
    hasher = new_hasher(algorithm)
    buf = bytearray(min(CHUNK, max(end - start, 1)))
    view = memoryview(buf)
    pos = start
    while pos < end:
        if should_stop():
            raise Cancelled
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if n == 0:
            raise FileChanged("the file became shorter while it was read")
        hasher.update(view[:n])
        pos += n
    return hasher.hexdigest()


# --- the service -----------------------------------------------------------------------------


class Refusal(enum.Enum):
    """Why a checksum was not started: the user's share or the server's is used up."""

    USER = "user"
    SERVER = "server"


@dataclass(frozen=True)
class Outcome:
    """A finished job: the digest, or an error text for the client."""

    hexdigest: str | None = None
    error: str | None = None
    cancelled: bool = False


class _Slots:
    """Counts running jobs per user and in total (the loop thread and the workers touch it)."""

    def __init__(self, total: int, per_user: int) -> None:
        self.total, self.per_user = total, per_user
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user: str) -> Refusal | None:
        with self._lock:
            if self._running.get(user, 0) >= self.per_user:
                return Refusal.USER
            if sum(self._running.values()) >= self.total:
                return Refusal.SERVER
            self._running[user] = self._running.get(user, 0) + 1
            return None

    def release(self, user: str) -> None:
        with self._lock:
            left = self._running.get(user, 0) - 1
            if left > 0:
                self._running[user] = left
            else:
                self._running.pop(user, None)

    def running(self) -> int:
        with self._lock:
            return sum(self._running.values())


_CacheKey = tuple[FileIdentity, str, int, int]


class Checksums:
    """Cache, admission and worker threads for the checksums of one server process."""

    def __init__(
        self,
        *,
        total: int = GLOBAL_LIMIT,
        per_user: int = PER_USER_LIMIT,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._slots = _Slots(total, per_user)
        # as many threads as admitted jobs: nothing ever waits in the executor's queue
        self._pool = ThreadPoolExecutor(max_workers=total, thread_name_prefix="ftps-checksum")
        self._cache: OrderedDict[_CacheKey, str] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def lookup(self, identity: FileIdentity, algorithm: str, start: int, end: int) -> str | None:
        """The cached digest for this version of the file and range, if any."""
        key = (identity, algorithm, start, end)
        with self._lock:
            digest = self._cache.get(key)
            if digest is not None:
                self._cache.move_to_end(key)
            return digest

    def _remember(self, key: _CacheKey, digest: str) -> None:
        with self._lock:
            self._cache[key] = digest
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)

    def running(self) -> int:
        """Jobs being computed now."""
        return self._slots.running()

    def start(
        self,
        user: str,
        fd: int,
        algorithm: str,
        span: tuple[int, int],
        should_stop: Callable[[], bool],
        done: Callable[[Outcome], None],
    ) -> Refusal | None:
        """Hash `fd` in a worker; `done` is called in that worker. The job owns `fd`.

        On a refusal nothing started and the caller still owns `fd`.
        """
        refusal = self._slots.acquire(user)
        if refusal is not None:
            return refusal

        def job() -> None:
            try:
                outcome = self._run(fd, algorithm, span, should_stop)
            finally:
                os.close(fd)
                self._slots.release(user)
            done(outcome)

        try:
            self._pool.submit(job)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._slots.release(user)
            return Refusal.SERVER
        return None

    def _run(
        self, fd: int, algorithm: str, span: tuple[int, int], should_stop: Callable[[], bool]
    ) -> Outcome:
        def stop() -> bool:
            return self._stopping.is_set() or should_stop()

        try:
            before = FileIdentity.of(os.fstat(fd))
            digest = digest_file(fd, algorithm, span[0], span[1], stop)
            if FileIdentity.of(os.fstat(fd)) != before:
                raise FileChanged("the file changed while it was read")
        except Cancelled:
            return Outcome(cancelled=True)
        except FileChanged as exc:
            return Outcome(error=str(exc))
        except OSError as exc:
            return Outcome(error=exc.strerror or str(exc))
        self._remember((before, algorithm, span[0], span[1]), digest)
        return Outcome(hexdigest=digest)

    def close(self) -> None:
        """Stop running jobs at their next chunk; queued callbacks are dropped."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open `path` for reading without ever blocking; OSError unless it is a regular file.

    O_NONBLOCK: opening a FIFO planted in a home would otherwise wait for a writer, on the
    event loop thread.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(1, "Not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class StreamDigest:
    """SHA-256 (or another algorithm) of a stream fed chunk by chunk, e.g. an upload.

    Cheap: hashlib takes memoryviews without a copy and drops the GIL for chunks over 2 KiB.
    """

    def __init__(self, algorithm: str = "SHA-256") -> None:
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next bytes of the stream."""
        self._hasher.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        """Digest of everything fed so far (the stream may go on)."""
        return self._hasher.hexdigest()
