#!/usr/bin/env python3
"""Logins at the default password hash (run by hand; no root, loopback only).

    python3 bench/logins.py [--count 48]

Starts `ftps-server serve` from this tree with users hashed at the default cost
(scrypt ln=15 r=8 p=3) and measures, each bounded in count and time:

1. repeat logins of one user (connect + AUTH TLS + USER/PASS + QUIT), 1 and 4 at a time:
   after the first, the verifier cache answers without scrypt;
2. first logins of distinct users from distinct addresses, 1 and `cores` at a time: every one
   pays scrypt; the parallel rate over the serial one shows how many cores the hashing uses;
3. a flood from 127.0.0.2 (8 threads, USER/PASS with ever new wrong passwords, closing
   without waiting) while 127.0.0.3 logs in: the worst login time of the bystander.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ftplib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support import Pki, ReusingFTP_TLS, ServerProcess, client_context, free_port  # noqa: E402

from ftps_server.pki.passwords import hash_password  # noqa: E402

HOST = "127.0.0.1"
PASSWORD = "bench horse battery"
LIMIT = 120.0  # seconds any one phase may take


def _login(pki: Pki, port: int, user: str, password: str, source: str = HOST) -> float:
    started = time.monotonic()
    ftp = ReusingFTP_TLS(context=client_context(pki), timeout=30, source_address=(source, 0))
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.login(user, password)
    ftp.quit()
    return time.monotonic() - started


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(count: int, parallel: int, one: object, pid: int) -> tuple[float, float]:
    """(logins/s, server CPU as a share of one core) for `count` logins."""
    started, cpu = time.monotonic(), _cpu(pid)
    with cf.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(count)))  # type: ignore[arg-type]
    wall = time.monotonic() - started
    return count / wall, (_cpu(pid) - cpu) / wall


def _flood(pki: Pki, port: int, until: float, worker: int) -> None:
    for n in range(1000):
        if time.monotonic() > until:
            return
        try:
            ftp = ReusingFTP_TLS(context=client_context(pki), timeout=5)
            ftp.source_address = ("127.0.0.2", 0)
            ftp.connect(HOST, port)
            ftp.auth()
            ftp.putcmd("USER u0")
            ftp.putcmd(f"PASS wrong {worker} {n}")
            ftp.sock.close()
        except (ftplib.Error, OSError, EOFError):
            time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="logins per measurement")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    tmp = Path(tempfile.mkdtemp(prefix="ftps-logins-"))
    pki = Pki(tmp / "pki")
    cert = pki.server("server", HOST)
    port = free_port(HOST)
    users = args.count * 2 + 1
    lines = [
        f"[server]\naddresses = {HOST}\nstate_dir = {tmp}/state\nroot = {tmp}/homes",
        "max_connections_per_ip = 100",
        f"[ports]\nexplicit = {port}\nimplicit = 0",
        f"[certificate:main]\ncert = {cert.cert}\nkey = {cert.key}\ndefault = yes",
    ]
    lines += [f"[user:u{i}]\npassword = {hash_password(PASSWORD)}" for i in range(users)]
    config = tmp / "ftps-server.ini"
    config.write_text("\n".join(lines) + "\n")
    server = ServerProcess(config, tmp)
    try:
        _login(pki, port, "u0", PASSWORD)
        pid = server.proc.pid
        for parallel in (1, 4):
            rate, cpu = _rate(
                args.count, parallel, lambda _: _login(pki, port, "u0", PASSWORD), pid
            )
            print(f"repeat logins of one user, {parallel} at a time: {rate:.1f}/s, CPU {cpu:.0%}")
        names = iter(range(1, users))
        lock = threading.Lock()

        def fresh(_: int) -> float:
            with lock:
                n = next(names)
            # one address per partner, as in the field: one address alone may hold at most
            # half the hashing workers
            return _login(pki, port, f"u{n}", PASSWORD, f"127.0.5.{n % 250 + 1}")

        half = args.count // 2
        serial, cpu1 = _rate(half, 1, fresh, pid)
        rate_n, cpu_n = _rate(half, cores, fresh, pid)
        print(f"first logins of distinct users, 1 at a time: {serial:.2f}/s, CPU {cpu1:.0%}")
        print(
            f"first logins of distinct users, {cores} at a time: {rate_n:.2f}/s, "
            f"CPU {cpu_n:.0%} ({rate_n / serial:.2f}x serial on {cores} cores)"
        )
        until = time.monotonic() + 8
        flooders = [threading.Thread(target=_flood, args=(pki, port, until, w)) for w in range(8)]
        for thread in flooders:
            thread.start()
        worst = 0.0
        while time.monotonic() < until:
            with lock:
                n = next(names, 0)  # once the fresh names run out: u0, a cached verifier
            worst = max(worst, _login(pki, port, f"u{n}", PASSWORD, "127.0.0.3"))
        for thread in flooders:
            thread.join(LIMIT)
        failed = server.log().count("failed login for u0 from 127.0.0.2")
        print(f"flood from 127.0.0.2: {failed} checks counted; bystander worst login {worst:.2f} s")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
