"""Issue 13.2 on loopback: a hand-over (SIGUSR2, or a reload after the installed code changed)
starts a new process on the same listening sockets; a download in progress in the old
process finishes byte-exact, new connections reach the new process, the old one exits
once its sessions ended; a new process with a broken config leaves the old one serving.

The sd_notify socket is the test's own (support.ServerProcess), so the MAINPID= hand-over
systemd would see is checked here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from test_ftps import FAST_HASH, PASSWORD

HOST = "127.0.0.6"
SIZE = 32 * 1024 * 1024


def _config(
    pki: support.Pki, tmp_path: Path, drain: int = 60, broken: bool = False, workers: int = 1
) -> Path:
    cert = pki.server("handover", HOST)
    return support.node_config(
        tmp_path / "handover.ini",
        cert,
        support.section("user:alice", password=FAST_HASH),
        addresses=HOST,
        explicit=_config.ports[0],
        implicit=_config.ports[1],
        server=f"""
        drain_timeout = {drain}
        workers = {workers}
        passive_ports = {_config.passive}
        {"no_such_key = 1" if broken else ""}
        """,
    )


_config.ports = (0, 0)  # type: ignore[attr-defined]
_config.passive = "61100-61139"  # type: ignore[attr-defined]


@pytest.fixture
def served(pki: support.Pki, tmp_path: Path) -> Iterator[tuple[support.ServerProcess, bytes]]:
    _config.ports = (support.free_port(HOST), support.free_port(HOST))  # type: ignore[attr-defined]
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    data = os.urandom(SIZE)
    (home / "big.bin").write_bytes(data)
    server = support.ServerProcess(_config(pki, tmp_path), tmp_path)
    successors: list[int] = []
    server.successors = successors  # type: ignore[attr-defined]
    try:
        yield server, data
    finally:
        server.stop()
        for pid in successors:  # started by the server under test, stopped by its PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _login(pki: support.Pki) -> support.ReusingFTP_TLS:
    ftp = support.explicit_client(pki, HOST, _config.ports[0])  # type: ignore[attr-defined]
    ftp.login("alice", PASSWORD)
    return ftp


def _owner_of_connection(client: socket.socket) -> int | None:
    """The PID whose socket is the server end of `client`'s TCP connection."""
    local = client.getsockname()
    wanted = f"{_hex_addr(client.getpeername())} {_hex_addr(local)}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            inode = fields[9]
    if inode is None:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(proc.name)
    return None


def _hex_addr(addr: tuple[str, int]) -> str:
    packed = socket.inet_aton(addr[0])
    return f"{int.from_bytes(packed, 'little'):08X}:{addr[1]:04X}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def _main_pid(message: str) -> int | None:
    for line in message.split("\n"):
        if line.startswith("MAINPID="):
            return int(line[8:])
    return None


def test_download_survives_hand_over_and_new_connections_reach_new_process(
    pki: support.Pki, served: tuple[support.ServerProcess, bytes]
) -> None:
    server, data = served
    old = server.pid
    ftp = _login(pki)
    assert _owner_of_connection(ftp.sock) == old
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    got = hashlib.sha256()
    received = 0
    while received < 1024 * 1024:  # the download is under way, then stalls on our side
        chunk = conn.recv(65536)
        assert chunk
        got.update(chunk)
        received += len(chunk)

    os.kill(old, signal.SIGUSR2)
    server.wait_for("RELOADING=1")
    ready = server.wait_for("READY=1", timeout=30)
    new = _main_pid(ready)
    assert new is not None and new != old, ready
    server.successors.append(new)  # type: ignore[attr-defined]
    assert _alive(new)

    # New connections: the new process; the download: still the old one, which waits for it.
    other = _login(pki)
    assert _owner_of_connection(other.sock) == new
    assert other.nlst() == ["big.bin"]
    other.quit()
    assert server.proc.poll() is None, "the old process left before its download ended"

    while chunk := conn.recv(1024 * 1024):
        got.update(chunk)
        received += len(chunk)
    conn.unwrap().close()  # type: ignore[attr-defined]
    assert ftp.voidresp().startswith("226")
    ftp.quit()
    assert received == SIZE
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()

    # Its last session over, the old process exits on its own; the new one goes on.
    assert server.proc.wait(timeout=15) == 0
    assert server.wait_log("handed the listeners over to PID")
    assert server.wait_log("drained: every session ended")
    assert _alive(new)
    again = _login(pki)
    assert _owner_of_connection(again.sock) == new
    again.quit()


def test_broken_config_leaves_the_old_process_serving(
    pki: support.Pki, served: tuple[support.ServerProcess, bytes], tmp_path: Path
) -> None:
    server, _data = served
    old = server.pid
    _config(pki, tmp_path, broken=True)
    os.kill(old, signal.SIGUSR2)
    server.wait_for("RELOADING=1")
    ready = server.wait_for("READY=1", timeout=30)
    assert _main_pid(ready) is None, ready
    assert "hand-over failed" in server.status(), server.status()
    assert server.wait_log("no_such_key")  # the new process said why
    assert server.proc.poll() is None
    ftp = _login(pki)
    assert _owner_of_connection(ftp.sock) == old
    assert ftp.nlst() == ["big.bin"]
    ftp.quit()


def test_drain_timeout_closes_what_is_left(
    pki: support.Pki, served: tuple[support.ServerProcess, bytes], tmp_path: Path
) -> None:
    """An idle session does not keep the old process for ever: drain_timeout ends it."""
    server, _data = served
    _config(pki, tmp_path, drain=1)
    server.reload()  # the old process has drain_timeout = 1 now
    idle = _login(pki)
    os.kill(server.pid, signal.SIGUSR2)
    ready = server.wait_for("READY=1", timeout=30)
    new = _main_pid(ready)
    assert new is not None
    server.successors.append(new)  # type: ignore[attr-defined]
    started = time.monotonic()
    assert server.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert server.wait_log("drain_timeout reached: closing 1 connections")
    with pytest.raises((EOFError, OSError)):
        idle.nlst()


def test_reload_after_the_code_changed_on_disk_hands_over(
    pki: support.Pki, served: tuple[support.ServerProcess, bytes]
) -> None:
    """A reload (SIGHUP, what ExecReload sends) reloads in place while the code on disk is the
    one running, and hands over once it changed, as dpkg's unpacking of an upgrade does
    (every file a new inode; here: a new mtime on one module, put back afterwards)."""
    server, _data = served
    old = server.pid
    server.reload()
    assert _main_pid(server.messages[-1]) is None
    module = Path(support.ROOT) / "ftps_server" / "checksums.py"
    st = module.stat()
    try:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        os.kill(old, signal.SIGHUP)
        ready = server.wait_for("READY=1", timeout=30)
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    new = _main_pid(ready)
    assert new is not None and new != old, ready
    server.successors.append(new)  # type: ignore[attr-defined]
    assert server.proc.wait(timeout=15) == 0  # no session: drained at once
    ftp = _login(pki)
    assert _owner_of_connection(ftp.sock) == new
    ftp.quit()


def test_workers_drain_their_sessions_after_a_hand_over(
    pki: support.Pki, served: tuple[support.ServerProcess, bytes], tmp_path: Path
) -> None:
    """With `workers = 2` the sessions live in the old main process's workers: a hand-over
    makes them stop taking connections and finish what they serve, byte-exact."""
    first, data = served
    first.stop()
    server = support.ServerProcess(_config(pki, tmp_path, workers=2), tmp_path)
    successors: list[int] = []
    try:
        old = server.pid
        ftp = _login(pki)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR big.bin")
        got = hashlib.sha256(conn.recv(65536))
        os.kill(old, signal.SIGUSR2)
        server.wait_for("RELOADING=1")
        ready = server.wait_for("READY=1", timeout=30)
        new = _main_pid(ready)
        assert new is not None and new != old, ready
        successors.append(new)
        other = _login(pki)  # served by the new process's workers
        assert other.nlst() == ["big.bin"]
        other.quit()
        while chunk := conn.recv(1024 * 1024):
            got.update(chunk)
        conn.unwrap().close()  # type: ignore[attr-defined]
        assert ftp.voidresp().startswith("226")
        ftp.quit()
        assert got.hexdigest() == hashlib.sha256(data).hexdigest()
        assert server.proc.wait(timeout=20) == 0  # the old main process, its workers ended
    finally:
        server.stop()
        for pid in successors:  # started by the server under test, stopped by its PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


# A slow look at the code on disk (a loaded machine, a cold cache): the loop is busy when the
# reload's signal comes.
SLOW_CODE_CHECK = """
import time
import ftps_server.server.handover as handover
_fingerprint = handover.code_fingerprint
def code_fingerprint():
    time.sleep(float(__import__("os").environ["FTPS_TEST_CODE_CHECK_S"]))
    return _fingerprint()
handover.code_fingerprint = code_fingerprint
"""


def test_reload_is_announced_at_the_signal_not_when_the_loop_gets_to_it(
    pki: support.Pki, served: tuple[support.ServerProcess, bytes], tmp_path: Path
) -> None:
    """systemd ends `systemctl reload` when ExecReload's `kill` exits unless RELOADING=1 came
    first; postinst then takes an unchanged MainPID for a reload in place (an old version) and
    restarts, cutting the sessions a hand-over keeps. RELOADING=1 must leave at the signal, before
    the reload's work (here a code check slowed to 1.5 s), and READY=1 follow it."""
    first, _data = served
    first.stop()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_CODE_CHECK)
    env = {"PYTHONPATH": f"{site}:{support.ROOT}", "FTPS_TEST_CODE_CHECK_S": "1.5"}
    server = support.ServerProcess(_config(pki, tmp_path), tmp_path, env=env)
    try:
        for signum in (signal.SIGHUP, signal.SIGHUP):  # twice: the second one is no different
            sent = time.monotonic()
            os.kill(server.pid, signum)
            server.wait_for("RELOADING=1", timeout=5)
            announced = time.monotonic() - sent
            server.wait_for("READY=1", timeout=10)
            ready = time.monotonic() - sent
            assert announced < 0.5 < 1.5 <= ready, (announced, ready)
            assert _main_pid(server.messages[-1]) is None  # the code did not change: in place
        assert server.proc.poll() is None
    finally:
        server.stop()
