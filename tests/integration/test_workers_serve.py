"""`[server] workers = 2` (issue 17.3): one worker per client address, passive transfers in the
worker's own slice of passive_ports, a killed worker replaced, reload reaching every worker."""

from __future__ import annotations

import io
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import support

from ftps_server.pki.passwords import HashParams, hash_password
from ftps_server.server.workers import pick

PASSWORD = "Worker-Horse-Battery-7"
HOST = "127.0.0.1"
CLIENTS = ("127.0.0.2", "127.0.0.3")  # they hash to different workers of two
PASSIVE = (47100, 47119)
DATA = os.urandom(200_000)
_OPENED = re.compile(r"session \w+: connection from (127\.0\.0\.\d+) port \d+[^\n]* WORKER=(\d+)")
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@dataclass
class Site:
    pki: support.Pki
    port: int
    server: support.ServerProcess


@pytest.fixture(scope="module")
def site(pki: support.Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("workers")
    cert = pki.server("main", HOST, "localhost")
    home = tmp / "home" / "alice"
    home.mkdir(parents=True)
    (home / "data.bin").write_bytes(DATA)
    port = support.free_port()
    password = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))
    config = support.node_config(
        tmp / "ftps-server.ini",
        cert,
        support.section("user:alice", home=home, permissions="elradfmw", password=password),
        addresses=HOST,
        explicit=port,
        server=f"passive_ports = {PASSIVE[0]}-{PASSIVE[1]}\nworkers = 2",
    )
    server = support.ServerProcess(config, tmp)
    try:
        yield Site(pki, port, server)
    finally:
        server.stop()


def _session(site: Site, source: str) -> int:
    """Log in from `source`, list and download over PASV; the passive port used."""
    ftp = support.ReusingFTP_TLS(context=support.client_context(site.pki), timeout=10)
    ftp.connect(HOST, site.port, source_address=(source, 0))
    try:
        ftp.auth()
        ftp.prot_p()
        ftp.login("alice", PASSWORD)
        _host, passive_port = ftp.makepasv()
        got = io.BytesIO()
        ftp.retrbinary("RETR data.bin", got.write)
        assert got.getvalue() == DATA
        assert "data.bin" in ftp.nlst()
        ftp.quit()
    finally:
        ftp.close()
    return passive_port


def _workers_of(log: str) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = {}
    for address, worker in _OPENED.findall(log):
        seen.setdefault(address, set()).add(int(worker))
    return seen


def _pids(log: str) -> dict[int, int]:
    """The newest pid of each worker index."""
    return {int(index): int(pid) for index, pid in _STARTED.findall(log)}


def _slice(index: int) -> range:
    size = (PASSIVE[1] - PASSIVE[0] + 1) // 2
    return range(PASSIVE[0] + index * size, PASSIVE[0] + (index + 1) * size)


def test_every_session_of_an_address_is_served_by_its_one_worker(site: Site) -> None:
    assert pick(CLIENTS[0], 2) != pick(CLIENTS[1], 2)
    for _ in range(3):
        for source in CLIENTS:
            passive_port = _session(site, source)
            # PASV binds only in the worker's own slice, so the data connection reaches it
            assert passive_port in _slice(pick(source, 2))
    assert site.server.wait_log(" ended after ")
    seen = _workers_of(site.server.log())
    assert seen == {source: {pick(source, 2)} for source in CLIENTS}
    assert "2/2 workers" in site.server.status()


def test_a_killed_worker_is_replaced_and_serves_its_addresses_again(site: Site) -> None:
    index = pick(CLIENTS[0], 2)
    old = _pids(site.server.log())[index]
    os.kill(old, signal.SIGKILL)
    assert site.server.wait_log(f"worker {index} (pid {old}) ended with signal SIGKILL")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _pids(site.server.log())[index] == old:
        time.sleep(0.1)
    new = _pids(site.server.log())[index]
    assert new != old
    _session(site, CLIENTS[0])  # connections wait in the socket until the worker reads them
    _session(site, CLIENTS[1])  # the other worker was never touched
    assert site.server.proc.poll() is None


def test_reload_reaches_every_worker(site: Site) -> None:
    site.server.reload()
    for index in (0, 1):
        assert site.server.wait_log(f"worker {index} reloaded")
    for source in CLIENTS:
        _session(site, source)
