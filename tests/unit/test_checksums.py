"""checksums: names, ranges, reading, the cache, admission limits, cancellation, the config key."""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from pathlib import Path

import pytest

from ftps_server import checksums
from ftps_server.config.loader import load
from ftps_server.config.model import Config
from ftps_server.errors import ConfigError

DATA = os.urandom(3 * checksums.CHUNK + 12_345)  # several chunks and a partial one


def _reference(algorithm: str, data: bytes) -> str:
    if algorithm == "CRC32":
        return f"{zlib.crc32(data):08x}"
    names = {"SHA-256": "sha256", "SHA-512": "sha512", "SHA-1": "sha1", "MD5": "md5"}
    return hashlib.new(names[algorithm], data).hexdigest()


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


# --- names and FEAT --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("sha256", "SHA-256"),
        ("SHA-256", "SHA-256"),
        (" Sha-512 ", "SHA-512"),
        ("sha1", "SHA-1"),
        ("md5", "MD5"),
        ("crc32", "CRC32"),
        ("CRC-32", "CRC32"),
    ],
)
def test_algorithm_names_are_canonicalised(text: str, name: str) -> None:
    assert checksums.algorithm_name(text) == name


@pytest.mark.parametrize("text", ["sha3-256", "", "sha", "md4", "SHA-256*"])
def test_unknown_algorithm_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        checksums.algorithm_name(text)


def test_offered_algorithms_keep_preference_order_and_default_to_the_strongest() -> None:
    offered = checksums.parse_algorithms(("crc32", "sha-512", "SHA512"))
    assert offered == ("SHA-512", "CRC32")
    assert checksums.default_algorithm(offered) == "SHA-512"
    assert checksums.default_algorithm(checksums.ALGORITHMS) == "SHA-256"
    with pytest.raises(ValueError, match="at least one"):
        checksums.parse_algorithms(())


def test_feat_line_marks_the_selected_algorithm() -> None:
    line = checksums.hash_feature(checksums.ALGORITHMS, "MD5")
    assert line == "HASH SHA-256;SHA-512;SHA-1;MD5*;CRC32"


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "path", "span"),
    [
        ("file", "file", None),
        ("my file.txt", "my file.txt", None),
        ("my file.txt 10 20", "my file.txt", (10, 20)),
        ("f  0   5", "f", (0, 5)),
        ("report 2024", "report 2024", None),  # one number: part of the name
        ("10 20", "10 20", None),  # no path left: the whole text is the path
        ("f -1 5", "f -1 5", None),
        ("f 1 ٣", "f 1 ٣", None),  # only ASCII digits are numbers
    ],
)
def test_x_command_arguments(arg: str, path: str, span: tuple[int, int] | None) -> None:
    got_path, wanted = checksums.split_range_argument(arg)
    assert got_path == path
    assert (None if wanted is None else (wanted.start, wanted.end)) == span


def test_ranges_are_checked_against_the_file_size() -> None:
    assert checksums.resolve_range(None, 0) == (0, 0)
    assert checksums.resolve_range(None, 100) == (0, 100)
    assert checksums.resolve_range(checksums.ByteRange(99, 100), 100) == (99, 100)
    with pytest.raises(checksums.RangeError, match="exceeds the file size"):
        checksums.resolve_range(checksums.ByteRange(0, 101), 100)
    with pytest.raises(checksums.RangeError, match="greater than start"):
        checksums.resolve_range(checksums.ByteRange(5, 5), 100)


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", checksums.ALGORITHMS)
def test_digest_file_matches_hashlib_and_zlib(data_file: Path, algorithm: str) -> None:
    fd = os.open(data_file, os.O_RDONLY)
    try:
        assert checksums.digest_file(fd, algorithm, 0, len(DATA)) == _reference(algorithm, DATA)
        for start, end in ((0, 1), (1, checksums.CHUNK + 1), (len(DATA) - 7, len(DATA))):
            got = checksums.digest_file(fd, algorithm, start, end)
            assert got == _reference(algorithm, DATA[start:end]), (start, end)
        assert checksums.digest_file(fd, algorithm, 0, 0) == _reference(algorithm, b"")
    finally:
        os.close(fd)


def test_a_file_that_shrinks_while_read_is_reported(data_file: Path) -> None:
    fd = os.open(data_file, os.O_RDONLY)
    try:
        os.truncate(data_file, 1000)
        with pytest.raises(checksums.FileChanged):
            checksums.digest_file(fd, "SHA-256", 0, len(DATA))
    finally:
        os.close(fd)


def test_open_regular_refuses_fifos_without_blocking_and_directories(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PermissionError, match="Not a regular file"):
        checksums.open_regular(str(tmp_path / "fifo"))  # would hang without O_NONBLOCK
    with pytest.raises(IsADirectoryError):
        checksums.open_regular(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        checksums.open_regular(str(tmp_path / "missing"))


def test_stream_digest_of_memoryview_chunks_equals_one_pass() -> None:
    digest = checksums.StreamDigest()
    view = memoryview(DATA)
    for i in range(0, len(DATA), 65_536):
        digest.update(view[i : i + 65_536])
    assert digest.size == len(DATA)
    assert digest.hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert checksums.StreamDigest("CRC32").hexdigest() == "00000000"


# --- the service: cache, limits, cancellation ------------------------------------------------


class _Run:
    """A job started on the service whose chunks can be held at a gate."""

    def __init__(
        self,
        service: checksums.Checksums,
        path: Path,
        user: str = "alice",
        gate: threading.Event | None = None,
        algorithm: str = "SHA-256",
    ) -> None:
        self.outcome: checksums.Outcome | None = None
        self.finished = threading.Event()
        self.started = threading.Event()
        self.cancel = False
        fd, st = checksums.open_regular(str(path))
        self.identity = checksums.FileIdentity.of(st)
        self.fd = fd

        def should_stop() -> bool:
            self.started.set()
            if gate is not None:
                gate.wait(10)
            return self.cancel

        def done(outcome: checksums.Outcome) -> None:
            self.outcome = outcome
            self.finished.set()

        self.refusal = service.start(user, fd, algorithm, (0, st.st_size), should_stop, done)
        if self.refusal is not None:
            os.close(fd)


def test_a_finished_job_is_cached_for_the_unchanged_file_only(data_file: Path) -> None:
    service = checksums.Checksums()
    run = _Run(service, data_file)
    assert run.refusal is None and run.finished.wait(10)
    assert run.outcome == checksums.Outcome(hexdigest=hashlib.sha256(DATA).hexdigest())
    assert service.lookup(run.identity, "SHA-256", 0, len(DATA)) == run.outcome.hexdigest
    assert service.lookup(run.identity, "SHA-512", 0, len(DATA)) is None
    assert service.lookup(run.identity, "SHA-256", 1, len(DATA)) is None
    st = data_file.stat()
    data_file.write_bytes(b"x" * len(DATA))  # same size, mtime set back: ctime differs
    os.utime(data_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = checksums.FileIdentity.of(data_file.stat())
    assert changed != run.identity
    assert service.lookup(changed, "SHA-256", 0, len(DATA)) is None
    service.close()


def test_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    service = checksums.Checksums(cache_entries=2)
    runs = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]))
        runs.append(_Run(service, path))
        assert runs[-1].finished.wait(10)
    assert service.lookup(runs[0].identity, "SHA-256", 0, 1) is None
    assert service.lookup(runs[2].identity, "SHA-256", 0, 1) is not None
    service.close()


def test_admission_is_limited_per_user_and_in_total(data_file: Path) -> None:
    service = checksums.Checksums(total=3, per_user=2)
    gate = threading.Event()
    try:
        a1, a2 = _Run(service, data_file, "alice", gate), _Run(service, data_file, "alice", gate)
        assert a1.refusal is None and a2.refusal is None
        assert _Run(service, data_file, "alice", gate).refusal is checksums.Refusal.USER
        b1 = _Run(service, data_file, "bob", gate)
        assert b1.refusal is None
        assert _Run(service, data_file, "carol", gate).refusal is checksums.Refusal.SERVER
        assert service.running() == 3
    finally:
        gate.set()
    for run in (a1, a2, b1):
        assert run.finished.wait(10)
    assert service.running() == 0
    assert _Run(service, data_file, "carol").refusal is None  # shares given back
    service.close()


def test_a_cancelled_job_stops_gives_back_its_share_and_closes_its_file(data_file: Path) -> None:
    service = checksums.Checksums(total=1, per_user=1)
    gate = threading.Event()
    run = _Run(service, data_file, "alice", gate)
    assert run.started.wait(10)
    run.cancel = True
    gate.set()
    assert run.finished.wait(10)
    assert run.outcome == checksums.Outcome(cancelled=True)
    assert service.running() == 0
    with pytest.raises(OSError):
        os.fstat(run.fd)  # the job owned the descriptor and closed it
    assert service.lookup(run.identity, "SHA-256", 0, len(DATA)) is None
    service.close()


def test_close_stops_running_jobs(data_file: Path) -> None:
    service = checksums.Checksums()
    gate = threading.Event()
    run = _Run(service, data_file, "alice", gate)
    assert run.started.wait(10)
    service.close()
    gate.set()
    assert run.finished.wait(10)
    assert run.outcome is not None and run.outcome.cancelled


# --- [server] checksum_algorithms ------------------------------------------------------------


def _load(tmp_path: Path, server: str) -> Config:
    path = tmp_path / "c.ini"
    path.write_text(f"[server]\nstate_dir = {tmp_path}/s\nroot = {tmp_path}/h\n{server}\n")
    return load(path)


def test_config_key_defaults_to_every_algorithm(tmp_path: Path) -> None:
    assert _load(tmp_path, "").server.checksum_algorithms == checksums.ALGORITHMS
    got = _load(tmp_path, "checksum_algorithms = sha512, sha-256").server.checksum_algorithms
    assert got == ("SHA-256", "SHA-512")


@pytest.mark.parametrize(("value", "message"), [("sha256, rot13", "rot13"), (",", "at least one")])
def test_config_key_errors_name_file_section_and_key(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f"checksum_algorithms = {value}")
    text = str(info.value)
    assert "c.ini" in text and "server" in text and "checksum_algorithms" in text
    assert message in text


def test_nothing_starts_after_close(data_file: Path) -> None:
    service = checksums.Checksums()
    service.close()
    assert _Run(service, data_file).refusal is checksums.Refusal.SERVER
    assert service.running() == 0
