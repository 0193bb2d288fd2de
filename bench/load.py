#!/usr/bin/env python3
"""Load: ftps-server against vsftpd under many concurrent TLS sessions (run by hand, as root).

    sudo python3 bench/load.py [--sessions 1000] [--idle 500] [--logins 48] [--ftps-only]

Four measurements per server, in the same run, on loopback with the same certificate, PROT P
and session reuse required on both (vsftpd: require_ssl_reuse=YES):

1. `--sessions` concurrent sessions (client processes x threads, blocking `ssl` sockets whose
   data connections resume the control session) each connect, AUTH TLS, log in and download
   1 MiB; failures must be 0. Total throughput, p50/p99 session latency, server CPU.
   ftps-server uses a cheap scrypt hash here (ln=10) so the figure is about TLS and transfer,
   not about the password hash; the login row below measures the defaults.
2. Memory per idle TLS session: `--idle` sessions logged in and left idle; the growth of the
   server's RSS (vsftpd: the sum over all its processes) divided by their number.
3. TLS handshakes per second: connect + AUTH TLS + QUIT, no login (`--handshakes`).
4. Login rate with each server's default password hash (ftps-server: scrypt ln=15 r=8 p=3;
   vsftpd: PAM with whatever `chpasswd` gives the system user on this Debian, yescrypt).

Every loop is bounded in count and in time. The vsftpd helpers come from tls_throughput.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ftplib
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import tls_throughput  # noqa: E402
from support import ReusingFTP_TLS  # noqa: E402
from tls_throughput import (  # noqa: E402
    HOST,
    Server,
    _cert,
    start_ftps_server,
    start_vsftpd,
)

from ftps_server.pki.passwords import hash_password  # noqa: E402

# own user and ports, so that a tls_throughput.py run at the same time is left alone
BENCH_USER = tls_throughput.BENCH_USER = "ftpload"
FTPS_PORT, VSFTPD_PORT = 42990, 42991
FILE = "load-1m.bin"
SIZE = 2**20
SESSION_TIMEOUT = 120.0  # per socket operation
PHASE_LIMIT = 600.0  # seconds any one phase may take

Result = tls_throughput.SessionResult


def _context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the bench certificate names 127.0.0.1 only as an IP SAN
    return ctx


def _login(
    ctx: ssl.SSLContext, port: int, password: str, step: list[str] | None = None
) -> ReusingFTP_TLS:
    step = step if step is not None else []
    ftp = ReusingFTP_TLS(context=ctx, timeout=SESSION_TIMEOUT)
    step.append("connect")
    ftp.connect(HOST, port)
    step.append("AUTH TLS")
    ftp.auth()
    step.append("login")
    ftp.login(BENCH_USER, password)
    step.append("PROT P")
    ftp.prot_p()
    return ftp


def _download(ctx: ssl.SSLContext, port: int, password: str) -> Result:
    t0 = time.perf_counter()
    got = 0
    step: list[str] = []
    try:
        ftp = _login(ctx, port, password, step)
        try:

            def count(block: bytes) -> None:
                nonlocal got
                got += len(block)

            step.append("RETR")
            ftp.retrbinary(f"RETR {FILE}", count, blocksize=256 * 1024)
            step.append("QUIT")
            ftp.quit()
        finally:
            ftp.close()
        ok = got == SIZE
        return ok, time.perf_counter() - t0, got, "" if ok else f"short download: {got}"
    except (OSError, EOFError, ssl.SSLError, ftplib.Error) as exc:
        where = step[-1] if step else "start"
        return False, time.perf_counter() - t0, got, f"{where}: {type(exc).__name__}: {exc}"[:200]


def _client_process(args: tuple[int, str, str, int, float, float]) -> list[Result]:
    """One client process: `threads` sessions started at `start_at` (wall clock), spread
    evenly over `ramp` seconds (0: all at once)."""
    port, password, cafile, threads, start_at, ramp = args
    ctx = _context(cafile)
    results: list[Result] = []
    lock = threading.Lock()

    def one(delay: float) -> None:
        time.sleep(delay)
        r = _download(ctx, port, password)
        with lock:
            results.append(r)

    time.sleep(max(0.0, start_at - time.time()))
    workers = [
        threading.Thread(target=one, args=(ramp * i / threads,), daemon=True)
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + PHASE_LIMIT
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    with lock:
        missing = threads - len(results)
        return [*results, *[(False, PHASE_LIMIT, 0, "still running at the limit")] * missing]


def concurrent_downloads(
    server: Server, cafile: str, sessions: int, procs: int, ramp: float = 0.0
) -> dict[str, float]:
    """`sessions` sessions at once (or started over `ramp` s), each downloading 1 MiB."""
    per = [sessions // procs + (1 if i < sessions % procs else 0) for i in range(procs)]
    start_at = time.time() + 2.0  # every process is forked and waiting by then
    cpu0 = server.cpu_seconds()
    with cf.ProcessPoolExecutor(procs) as pool:
        jobs = [(server.port, server.password, cafile, n, start_at, ramp) for n in per if n]
        results = [r for batch in pool.map(_client_process, jobs) for r in batch]
    wall = time.time() - start_at
    time.sleep(2.0)  # vsftpd's session processes exit and are reaped into the parent's CPU
    cpu = server.cpu_seconds() - cpu0
    failed, throughput, latencies = tls_throughput.session_summary(server.name, results, wall)
    return {
        "failures": failed,
        "throughput": throughput,
        "p50": statistics.median(latencies),
        "p99": tls_throughput.percentile(latencies, 0.99),
        "cpu": cpu,
        "wall": wall,
    }


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of `pid` and its descendants summed, in KiB.

    RSS counts pages shared between vsftpd's processes once per process; PSS divides them
    among the processes sharing them, so it is the fairer figure for a forking server.
    """
    rss = pss = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def idle_memory(server: Server, cafile: str, count: int) -> tuple[float, float]:
    """KiB of server (RSS, PSS) per logged-in idle TLS session."""
    ctx = _context(cafile)
    time.sleep(1.0)
    before = memory_kib(server.pid)
    held: list[ReusingFTP_TLS] = []
    deadline = time.monotonic() + PHASE_LIMIT
    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(_login, ctx, server.port, server.password) for _ in range(count)]
        for f in futures:
            try:
                held.append(f.result(timeout=max(0.1, deadline - time.monotonic())))
            except (OSError, EOFError, ssl.SSLError, ftplib.Error, cf.TimeoutError) as exc:
                print(f"  {server.name} idle session failed: {exc}", file=sys.stderr)
    time.sleep(2.0)
    after = memory_kib(server.pid)
    for ftp in held:
        ftp.close()
    time.sleep(1.0)
    n = max(1, len(held))
    return (after[0] - before[0]) / n, (after[1] - before[1]) / n


def login_rate(server: Server, cafile: str, count: int, parallel: int) -> float:
    """Sessions per second doing connect + AUTH TLS + login + QUIT, `parallel` at a time."""
    ctx = _context(cafile)

    def one() -> None:
        ftp = _login(ctx, server.port, server.password)
        ftp.quit()

    t0 = time.perf_counter()
    done = 0
    with cf.ThreadPoolExecutor(parallel) as pool:
        for f in [pool.submit(one) for _ in range(count)]:
            try:
                f.result(timeout=max(0.1, t0 + PHASE_LIMIT - time.perf_counter()))
                done += 1
            except (OSError, EOFError, ssl.SSLError, ftplib.Error, cf.TimeoutError) as exc:
                print(f"  {server.name} login failed: {exc}", file=sys.stderr)
    return done / (time.perf_counter() - t0)


def handshake_rate(server: Server, cafile: str, count: int, parallel: int) -> float:
    """TLS handshakes per second: connect + AUTH TLS + QUIT, no login, `parallel` at a time."""
    ctx = _context(cafile)

    def one() -> None:
        ftp = ReusingFTP_TLS(context=ctx, timeout=SESSION_TIMEOUT)
        ftp.connect(HOST, server.port)
        ftp.auth()
        ftp.quit()

    t0 = time.perf_counter()
    done = 0
    with cf.ThreadPoolExecutor(parallel) as pool:
        for f in [pool.submit(one) for _ in range(count)]:
            try:
                f.result(timeout=max(0.1, t0 + PHASE_LIMIT - time.perf_counter()))
                done += 1
            except (OSError, EOFError, ssl.SSLError, ftplib.Error, cf.TimeoutError) as exc:
                print(f"  {server.name} handshake failed: {exc}", file=sys.stderr)
    return done / (time.perf_counter() - t0)


def listen_backlog(port: int) -> float:
    """The accept queue length of the listener on `port` (Send-Q of `ss -ltn`), or NaN."""
    ss = shutil.which("ss")
    if ss is None:
        return float("nan")
    out = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    fields = out.stdout.split()
    return float(fields[2]) if len(fields) > 2 else float("nan")


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


FTPS_OPTIONS = {
    "passive_ports": "46000-48999",
    "max_connections": "5000",
    "max_connections_per_ip": "5000",
}
VSFTPD_OPTIONS = {
    "pasv_min_port": "43000",
    "pasv_max_port": "45999",
    "max_clients": "5000",
    "max_per_ip": "0",
}


def run(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    cert, key = _cert(work)
    home = work / "home" / BENCH_USER
    home.mkdir(parents=True)
    (home / FILE).write_bytes(os.urandom(SIZE))
    cafile = str(cert)
    results: dict[str, dict[str, float]] = {"ftps-server": {}, "vsftpd": {}}
    starters: dict[str, Callable[[Callable[[str], str]], Server]] = {
        "ftps-server": lambda h: start_ftps_server(
            work, cert, key, home, FTPS_PORT, FTPS_OPTIONS, password_hash=h
        ),
        # vsftpd's hash is the system's: one instance serves all three phases
        "vsftpd": lambda h: start_vsftpd(work, cert, key, home, VSFTPD_PORT, VSFTPD_OPTIONS),
    }
    if args.ftps_only:
        del starters["vsftpd"]
    for name, start in starters.items():
        server = start(tls_throughput.cheap_hash)
        if name == "vsftpd":
            shutil.chown(home, BENCH_USER)
            (home / FILE).chmod(0o644)
            home.chmod(0o755)
        try:
            # idle sessions first, on a fresh server: afterwards the allocator would hand
            # out memory freed by the download phase and hide the growth
            print(f"{name}: {args.idle} idle sessions", file=sys.stderr)
            results[name]["backlog"] = listen_backlog(server.port)
            rss, pss = idle_memory(server, cafile, args.idle)
            results[name].update(idle_rss=rss, idle_pss=pss)
            for label, ramp in (("burst", 0.0), ("ramp", args.ramp)):
                print(f"{name}: {args.sessions} sessions, {label}", file=sys.stderr)
                figures = concurrent_downloads(
                    server, cafile, args.sessions, args.client_procs, ramp
                )
                results[name].update({f"{label}_{k}": v for k, v in figures.items()})
                time.sleep(2.0)
            print(f"{name}: TLS handshake rate", file=sys.stderr)
            results[name]["handshakes"] = handshake_rate(
                server, cafile, args.handshakes, args.parallel
            )
            if name == "ftps-server":  # again with the default hash, for the login rate
                server.stop()
                server = start(hash_password)
            print(f"{name}: login rate", file=sys.stderr)
            results[name]["logins"] = login_rate(server, cafile, args.logins, args.parallel)
        finally:
            server.stop()
        time.sleep(1.0)
    return results


def table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    a, b = results["ftps-server"], results["vsftpd"]
    rows = [("listen backlog (accept queue)", "backlog", "{:.0f}")]
    for label, how in (("burst", "all started at once"), ("ramp", f"started over {args.ramp} s")):
        rows += [
            (f"{args.sessions} sessions x 1 MiB, {how}: failures", f"{label}_failures", "{:.0f}"),
            ("  total MB/s", f"{label}_throughput", "{:.0f}"),
            ("  session latency p50, s", f"{label}_p50", "{:.2f}"),
            ("  session latency p99, s", f"{label}_p99", "{:.2f}"),
            ("  server CPU s", f"{label}_cpu", "{:.1f}"),
        ]
    rows += [
        (f"RSS per idle TLS session, KiB ({args.idle} sessions)", "idle_rss", "{:.0f}"),
        (f"PSS per idle TLS session, KiB ({args.idle} sessions)", "idle_pss", "{:.0f}"),
        ("TLS handshakes/s (connect+AUTH TLS+QUIT)", "handshakes", "{:.0f}"),
        ("logins/s, default hash (connect+AUTH TLS+login+QUIT)", "logins", "{:.1f}"),
    ]
    out = ["| metric | ftps-server | vsftpd | ratio |", "|---|---|---|---|"]
    for label, k, fmt in rows:
        ratio = f"{a[k] / b[k]:.2f}x" if b.get(k) else "-"
        theirs = fmt.format(b[k]) if k in b else "-"
        out.append(f"| {label} | {fmt.format(a[k])} | {theirs} | {ratio} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds to start sessions over")
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--logins", type=int, default=48)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--ftps-only", action="store_true", help="skip vsftpd")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it installs vsftpd and a system user for it)", file=sys.stderr)
        return 2
    _raise_fd_limit()  # inherited by both servers and the client processes
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="ftps-load-", dir=shm))
    work.chmod(0o755)
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results, args))
    return (
        1
        if results["ftps-server"]["burst_failures"] or results["ftps-server"]["ramp_failures"]
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())
