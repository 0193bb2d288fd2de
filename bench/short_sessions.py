#!/usr/bin/env python3
"""Server CPU per short TLS session: ftps-server against stock pyftpdlib (run by hand).

    python3 bench/short_sessions.py [--sessions 300] [--runs 3] [--baseline TREE]
                                    [--profile FILE]

One session: connect, AUTH TLS, login (a cheap scrypt hash, ln=10 p=1, so the figure is
about everything but the password hash), PBSZ 0, PROT P, LIST and RETR of 1 MiB over
passive data connections that resume the control session, QUIT. `--clients` client
processes run the sessions back to back. Reported: server CPU ms per session (utime + stime
of the server process) and sessions/s, medians over alternating runs (A B C A B C ...).

Servers: ftps-server from this tree; `--baseline TREE` adds ftps-server from another source
tree (same run, before/after); stock pyftpdlib's TLS_FTPHandler (pyOpenSSL) when pyOpenSSL
is installed. `--profile FILE` records each server's first run with py-spy (raw format, FILE.NAME).
Every loop is bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ftplib
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import tls_throughput  # noqa: E402
from support import ReusingFTP_TLS  # noqa: E402
from tls_throughput import HOST, Server, _cert, start_stock  # noqa: E402

BENCH_USER = tls_throughput.BENCH_USER = "ftpshort"
FILE, SIZE = "short-1m.bin", 2**20
TIMEOUT = 60.0  # per socket operation
PHASE_LIMIT = 600.0


def _session(ctx: ssl.SSLContext, port: int, password: str) -> bool:
    ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT)
    try:
        ftp.connect(HOST, port)
        ftp.auth()
        ftp.login(BENCH_USER, password)
        ftp.prot_p()
        ftp.retrlines("LIST", lambda line: None)
        got = 0

        def count(block: bytes) -> None:
            nonlocal got
            got += len(block)

        ftp.retrbinary(f"RETR {FILE}", count, blocksize=256 * 1024)
        ftp.quit()
        return got == SIZE
    except (OSError, EOFError, ssl.SSLError, ftplib.Error):
        return False
    finally:
        ftp.close()


def _client(args: tuple[int, str, str, int]) -> int:
    port, password, cafile, count = args
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    deadline = time.monotonic() + PHASE_LIMIT
    return sum(_session(ctx, port, password) for _ in range(count) if time.monotonic() < deadline)


def measure(server: Server, cafile: str, sessions: int, clients: int) -> tuple[float, float, int]:
    """(server CPU ms per session, sessions/s, failures)."""
    per = [sessions // clients + (i < sessions % clients) for i in range(clients)]
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    with cf.ProcessPoolExecutor(clients) as pool:
        ok = sum(pool.map(_client, [(server.port, server.password, cafile, n) for n in per]))
    elapsed = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    return cpu / sessions * 1000, ok / elapsed, sessions - ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="source tree of a second ftps-server")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of ftps-server")
    args = parser.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="ftps-short-", dir=shm))
    with tls_throughput.stopped_at_exit(work) as servers:
        cert, key = _cert(work)
        home = work / "home" / BENCH_USER
        home.mkdir(parents=True)
        (home / FILE).write_bytes(os.urandom(SIZE))
        options = {"max_connections_per_ip": "1000", "passive_ports": "44000-44099"}
        cheap = tls_throughput.cheap_hash
        servers.append(
            tls_throughput.start_ftps_server(work, cert, key, home, 43990, options, cheap)
        )
        if args.baseline:
            base = {**options, "passive_ports": "44200-44299"}
            servers.append(
                tls_throughput.start_ftps_server(
                    work, cert, key, home, 43991, base, cheap, args.baseline.resolve(), "baseline"
                )
            )
        try:
            import OpenSSL  # noqa: F401

            servers.append(start_stock(work, cert, key, home, 43992, "44100-44199"))
        except ImportError:
            print("pyOpenSSL not installed: no stock pyftpdlib column", file=sys.stderr)
        results: dict[str, list[tuple[float, float, int]]] = {}
        for run in range(args.runs):
            for server in servers:
                spy = None
                if args.profile and run == 0:
                    spy = subprocess.Popen(
                        [
                            *("py-spy", "record", "--native", "-r", "500", "-f", "raw"),
                            *("-o", f"{args.profile}.{server.name}", "-p", str(server.pid)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)
                figures = measure(server, str(cert), args.sessions, args.clients)
                results.setdefault(server.name, []).append(figures)
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        _table(results, args)
    return 0


def _table(results: dict[str, list[tuple[float, float, int]]], args: argparse.Namespace) -> None:
    names = list(results)
    print(
        f"\n{args.sessions} sessions x (AUTH TLS + login + LIST + RETR 1 MiB), "
        f"{args.clients} client processes, medians of {args.runs} alternating runs"
    )
    print("| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for i, label, fmt in (
        (0, "server CPU ms per session", "{:.2f}"),
        (1, "sessions/s", "{:.0f}"),
        (2, "failed sessions (max)", "{:.0f}"),
    ):
        cells = []
        for name in names:
            values = [r[i] for r in results[name]]
            cells.append(fmt.format(max(values) if i == 2 else statistics.median(values)))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
