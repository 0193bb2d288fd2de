#!/usr/bin/env python3
"""ftps-server now, its first release, vsftpd and stock pyftpdlib in ONE run (by hand, as root).

    sudo PYTHONPATH=$PWD python3 bench/compare.py --old /path/to/first-release-tree \\
        [--size-mib 1024] [--runs 3] [--idle 200]

Every server runs on loopback with the same EC P-256 certificate, TLS 1.3, PROT P (session
reuse required by ftps-server and vsftpd), each in a cgroup of its own, so server CPU counts
every process it forks (vsftpd: per session; ftps-server: workers). The phases run in the
order below; inside a phase the servers alternate (A B C D A B C D ...) so drift on this
shared machine hits all alike; the table shows medians and ratios against vsftpd.

Servers: `now` (this tree), `first` (the tree given by `--old`), vsftpd 3.0.3 (Debian,
installed by tls_throughput.py if missing) and stock pyftpdlib's TLS_FTPHandler (pyOpenSSL,
plain-text passwords: it has no hash). ftps-server runs twice: with a cheap scrypt hash (ln=10
p=1) for transfers, idle memory and handshakes, where the hash is not the subject, and with the
default hash (ln=15 r=8 p=3) for every login row and the many-clients rows. vsftpd checks
PAM's yescrypt, its default. A third `now` instance has `workers = 2`.

Phases: idle TLS sessions (fresh servers; PSS growth over the cgroup / sessions), TLS
handshakes/s, 1 GiB download and upload with curl, repeat logins of one user, first logins of
distinct users (ftps-server only: 1 at a time and 4 at a time, with the server's CPU share),
N clients x 3 x 1 MiB (each client: one session, three RETR of 1 MiB, all started at once from
distinct loopback addresses), 4 parallel 1 GiB downloads with workers = 1 and 2, by curl and by
sink clients (parallel_downloads.py). Every loop is
bounded in count and time; it stops only the processes it started.
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

import parallel_downloads as parallel  # noqa: E402
import tls_throughput  # noqa: E402
from support import ReusingFTP_TLS  # noqa: E402
from tls_throughput import HOST, Server  # noqa: E402

from ftps_server.pki.passwords import hash_password  # noqa: E402

BENCH_USER = tls_throughput.BENCH_USER = "ftpcmp"
PASSWORD_USERS = "distinct users' password"
TIMEOUT = 60.0  # per socket operation
PHASE_LIMIT = 300.0  # seconds any one measurement may take
PARALLEL_CLIENTS = ("curl", "sink")  # see parallel_downloads.py and sink_client.py
Row = dict[str, float]


def _cert(directory: Path) -> tuple[Path, Path]:
    return tls_throughput.self_signed(directory, kind="ec")


def _context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _login(
    ctx: ssl.SSLContext, port: int, user: str, password: str, source: str = HOST
) -> ReusingFTP_TLS:
    ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT, source_address=(source, 0))
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


# --- phases -------------------------------------------------------------------------------


def idle_pss(server: Server, cafile: Path, count: int) -> Row:
    """KiB of server PSS (over its cgroup) per logged-in idle TLS session."""
    ctx = _context(cafile)
    time.sleep(1.0)
    before = server.memory_kib()
    held: list[ReusingFTP_TLS] = []
    deadline = time.monotonic() + PHASE_LIMIT
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(_login, ctx, server.port, BENCH_USER, server.password) for _ in range(count)
        ]
        for f in futures:
            try:
                held.append(f.result(timeout=max(0.1, deadline - time.monotonic())))
            except (OSError, EOFError, ssl.SSLError, ftplib.Error, cf.TimeoutError) as exc:
                print(f"  {server.name}: idle session failed: {exc}", file=sys.stderr)
    time.sleep(2.0)
    after = server.memory_kib()
    for ftp in held:
        ftp.close()
    time.sleep(2.0)
    assert before is not None and after is not None, "no cgroup: run as root"
    n = max(1, len(held))
    return {"idle_pss": (after[1] - before[1]) / n, "idle_ok": len(held)}


def _rate(
    server: Server, one: Callable[[int], None], count: int, parallel: int, seconds: float
) -> tuple[float, float, int, float]:
    """(per second, server CPU s per item, done, server CPU share of one core) for up to
    `count` calls of `one`, `parallel` at a time, started within `seconds`."""
    done = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def wrapped(i: int) -> None:
        nonlocal done
        if time.monotonic() > stop_at:
            return
        try:
            one(i)
        except (OSError, EOFError, ssl.SSLError, ftplib.Error) as exc:
            print(f"  {server.name}: failed: {exc}", file=sys.stderr)
            return
        with lock:
            done += 1

    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    with cf.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(wrapped, range(count), timeout=PHASE_LIMIT))
    wall = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu0
    return done / wall, cpu / max(1, done), done, cpu / wall


def handshakes(server: Server, cafile: Path, count: int) -> Row:
    ctx = _context(cafile)

    def one(_: int) -> None:
        ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT)
        ftp.connect(HOST, server.port)
        ftp.auth()
        ftp.quit()

    rate, cpu, _, _ = _rate(server, one, count, 4, 6.0)
    return {"hs_rate": rate, "hs_cpu_ms": cpu * 1000}


def repeat_logins(server: Server, cafile: Path, count: int) -> Row:
    ctx = _context(cafile)

    def one(_: int) -> None:
        ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT)
        ftp.connect(HOST, server.port)
        ftp.auth()
        ftp.login(BENCH_USER, server.password)
        ftp.quit()

    one(0)  # the repeat logins follow one that succeeded
    rate, cpu, _, _ = _rate(server, one, count, 4, 8.0)
    return {"login_rate": rate, "login_cpu_ms": cpu * 1000}


def _thread_cpu(server: Server) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of every process in the server's cgroup."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[tuple[int, int], float] = {}
    for pid in server.group.pids() if server.group else [server.pid]:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[(pid, int(task.name))] = (int(fields[11]) + int(fields[12])) / tick
    return found


def first_logins(server: Server, cafile: Path, users: list[str], serial: int) -> Row:
    """First logins of distinct users (each pays the hash): `serial` one at a time, the rest
    four at a time from distinct addresses."""
    ctx = _context(cafile)

    def one(i: int) -> None:
        user = users[i]
        n = int(user[1:])
        ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT, source_address=(f"127.0.5.{n}", 0))
        ftp.connect(HOST, server.port)
        ftp.auth()
        ftp.login(user, PASSWORD_USERS)
        ftp.quit()

    r1, _, _, share1 = _rate(server, one, serial, 1, PHASE_LIMIT)
    rest = users[serial:]
    users[:] = rest

    def one_rest(i: int) -> None:
        one(i)

    threads0 = _thread_cpu(server)
    r4, cpu4, _, share4 = _rate(server, one_rest, len(rest), 4, PHASE_LIMIT)
    threads1 = _thread_cpu(server)
    used = sorted((threads1[t] - threads0.get(t, 0.0) for t in threads1), reverse=True)
    # threads that did at least 150 ms (over half a default-cost hash): the hash threads;
    # the event loop does a few ms per login
    busy = sum(1 for u in used if u >= 0.15)
    return {
        "first_serial": r1,
        "first_par": r4,
        "first_share1": share1 * 100,
        "first_share": share4 * 100,
        "first_cpu_ms": cpu4 * 1000,
        "first_threads": busy,
        "first_top2": 100 * sum(used[:2]) / max(1e-9, sum(used)),
    }


Result = tls_throughput.SessionResult


def _session(ctx: ssl.SSLContext, port: int, password: str, source: str) -> Result:
    t0 = time.perf_counter()
    got = 0
    step = "connect"
    try:
        ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT, source_address=(source, 0))
        try:
            ftp.connect(HOST, port)
            step = "AUTH TLS"
            ftp.auth()
            step = "login"
            ftp.login(BENCH_USER, password)
            step = "PROT P"
            ftp.prot_p()

            def count(block: bytes) -> None:
                nonlocal got
                got += len(block)

            for _ in range(3):
                step = "RETR"
                ftp.retrbinary("RETR sessions-1m.bin", count, blocksize=256 * 1024)
            step = "QUIT"
            ftp.quit()
        finally:
            ftp.close()
        ok = got == 3 * 2**20
        return ok, time.perf_counter() - t0, got, "" if ok else f"short: {got}"
    except (OSError, EOFError, ssl.SSLError, ftplib.Error) as exc:
        return False, time.perf_counter() - t0, got, f"{step}: {type(exc).__name__}: {exc}"[:160]


def _client_process(args: tuple[int, str, str, list[str], float]) -> list[Result]:
    port, password, cafile, sources, start_at = args
    ctx = _context(Path(cafile))
    results: list[Result] = []
    lock = threading.Lock()

    def one(source: str) -> None:
        r = _session(ctx, port, password, source)
        with lock:
            results.append(r)

    time.sleep(max(0.0, start_at - time.time()))
    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in sources]
    for t in threads:
        t.start()
    deadline = time.monotonic() + PHASE_LIMIT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        missing = len(sources) - len(results)
        return [*results, *[(False, PHASE_LIMIT, 0, "still running at the limit")] * missing]


def many_clients(server: Server, cafile: Path, clients: int, procs: int = 4) -> Row:
    """`clients` sessions at once, each from its own loopback address: login, 3 x RETR 1 MiB."""
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(clients)]
    start_at = time.time() + 2.0
    cpu0 = server.cpu_seconds()
    with cf.ProcessPoolExecutor(procs) as pool:
        jobs = [
            (server.port, server.password, str(cafile), sources[i::procs], start_at)
            for i in range(procs)
        ]
        results = [r for batch in pool.map(_client_process, jobs) for r in batch]
    wall = time.time() - start_at
    time.sleep(1.0)
    cpu = server.cpu_seconds() - cpu0
    failed, mbps, ok_times = tls_throughput.session_summary(server.name, results, wall)
    return {
        "failed": failed,
        "mbps": mbps,
        "p50": statistics.median(ok_times),
        "p90": tls_throughput.percentile(ok_times, 0.9),
        "slowest": ok_times[-1],
        "cpu": cpu,
    }


def parallel_downloads(server: Server, cert: Path, size: int, sources: list[str]) -> Row:
    row: Row = {}
    # vsftpd keeps a data connection open after the last record until the client answers its
    # close_notify, which a client that never decrypts cannot know to send: the sink client
    # waits for ever there, so vsftpd is measured with curl only
    for client in PARALLEL_CLIENTS if server.name != "vsftpd" else ("curl",):
        mbps, cpu, _, clients = parallel.measure(
            server, cert, "file.bin", size, sources, client, user=BENCH_USER
        )
        row |= {f"par_{client}_mbps": mbps, f"par_{client}_cpu": cpu}
        row[f"par_{client}_clients"] = clients
    return row


# --- driver -------------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], list[float]] = {}

    def add(self, column: str, row: Row) -> None:
        for k, v in row.items():
            self.data.setdefault((column, k), []).append(v)

    def med(self, column: str, key: str) -> float | None:
        values = self.data.get((column, key))
        return statistics.median(values) if values else None

    def worst(self, column: str, key: str) -> float | None:
        values = self.data.get((column, key))
        return max(values) if values else None


def _ftps_options(passive: str, workers: int | None = None) -> dict[str, str]:
    options = {
        "passive_ports": passive,
        "max_connections": "5000",
        "max_connections_per_ip": "1000",
    }
    if workers is not None:
        options["workers"] = str(workers)
    return options


def _users_config(count: int, home_root: Path) -> str:
    """Users u1..uN, one default-cost hash shared (the verifier cache is per user, so every
    user's first login still pays scrypt)."""
    stored = hash_password(PASSWORD_USERS)
    return "".join(
        f"[user:u{i}]\nhome = {home_root}/u{i}\npermissions = elr\npassword = {stored}\n"
        for i in range(1, count + 1)
    )


def run(args: argparse.Namespace, work: Path) -> tuple[Results, list[str]]:
    cert, key = _cert(work)
    home = work / "home" / BENCH_USER
    home.mkdir(parents=True)
    size = args.size_mib * 2**20
    block = os.urandom(2**20)
    with (home / "file.bin").open("wb") as f:
        for _ in range(args.size_mib):
            f.write(block)
    (home / "sessions-1m.bin").write_bytes(os.urandom(2**20))
    users_home = work / "home"
    n_users = args.runs * (args.first_serial + args.first_parallel)
    for i in range(1, n_users + 1):
        (users_home / f"u{i}").mkdir()
    users_cfg = _users_config(n_users, users_home)
    old = args.old.resolve()
    start = tls_throughput.start_ftps_server
    log: list[str] = []
    res = Results()
    servers: list[Server] = []
    try:
        print("starting servers", file=sys.stderr)
        cheap = {
            "now": start(
                work,
                cert,
                key,
                home,
                47990,
                _ftps_options("45000-45099", 1),
                tls_throughput.cheap_hash,
                name="now",
            ),
            "first": start(
                work,
                cert,
                key,
                home,
                47991,
                _ftps_options("45100-45199"),
                tls_throughput.cheap_hash,
                tree=old,
                name="first",
            ),
        }
        servers += cheap.values()
        vsftpd = tls_throughput.start_vsftpd(
            work,
            cert,
            key,
            home,
            47995,
            {
                "pasv_min_port": "44000",
                "pasv_max_port": "44499",
                "max_clients": "5000",
                "max_per_ip": "0",
            },
        )
        servers.append(vsftpd)
        stock = tls_throughput.start_stock(
            work, cert, key, home, 47996, "44500-44999", args.stock_logging
        )
        servers.append(stock)
        for path in home.iterdir():
            path.chmod(0o666)
        home.chmod(0o777)
        cafile = cert
        transfer = {**cheap, "vsftpd": vsftpd, "pyftpdlib": stock}

        print(f"phase: {args.idle} idle TLS sessions (fresh servers)", file=sys.stderr)
        for name, server in transfer.items():
            res.add(name, idle_pss(server, cafile, args.idle))

        # the default-hash and workers = 2 servers start only now: their imports and the
        # hashing of the config do not disturb the idle figures
        default = {
            "now": start(
                work,
                cert,
                key,
                home,
                47992,
                _ftps_options("43000-43499"),
                name="now-default",
                extra_config=users_cfg,
            ),
            "first": start(
                work,
                cert,
                key,
                home,
                47993,
                _ftps_options("43500-43999"),
                tree=old,
                name="first-default",
                extra_config=users_cfg,
            ),
        }
        servers += default.values()
        w2 = start(
            work,
            cert,
            key,
            home,
            47994,
            _ftps_options("45200-45299", 2),
            tls_throughput.cheap_hash,
            name="now-workers2",
        )
        servers.append(w2)
        time.sleep(3.0)
        logins = {**default, "vsftpd": vsftpd, "pyftpdlib": stock}

        for run_no in range(args.runs):
            print(f"run {run_no + 1}: handshakes, transfers, logins", file=sys.stderr)
            for name, server in transfer.items():
                res.add(name, handshakes(server, cafile, 300))
            for direction in ("download", "upload"):
                for name, server in transfer.items():
                    mbps, cpu = tls_throughput.measure(
                        server, cert, direction, size, home / "file.bin"
                    )
                    res.add(name, {f"{direction}_mbps": mbps, f"{direction}_cpu": cpu})
            for name, server in logins.items():
                res.add(name, repeat_logins(server, cafile, 400))
            for name in ("now", "first"):
                users = [f"u{i}" for i in range(1, n_users + 1)]
                per = args.first_serial + args.first_parallel
                mine = users[run_no * per : (run_no + 1) * per]
                res.add(name, first_logins(default[name], cafile, mine, args.first_serial))
        for clients in args.clients:
            for run_no in range(args.runs):
                print(f"run {run_no + 1}: {clients} clients x 3 x 1 MiB", file=sys.stderr)
                for name, server in logins.items():
                    row = many_clients(server, cafile, clients)
                    res.add(name, {f"c{clients}_{k}": v for k, v in row.items()})
                    time.sleep(2.0)
        sources = parallel.sources_for(4, 2)
        for run_no in range(args.runs):
            print(f"run {run_no + 1}: 4 parallel downloads", file=sys.stderr)
            for name, server in (("now", cheap["now"]), ("now-w2", w2), ("vsftpd", vsftpd)):
                res.add(name, parallel_downloads(server, cert, size, sources))
        log.append("ok")
    except Exception:
        for path in work.glob("*.log"):
            print(f"--- {path.name}\n{path.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
    return res, log


def table(res: Results, args: argparse.Namespace) -> str:
    cols = ("now", "first", "vsftpd", "pyftpdlib")

    def cell(col: str, key: str, fmt: str, how: str = "med") -> str:
        v = res.worst(col, key) if how == "max" else res.med(col, key)
        return "" if v is None else fmt.format(v)

    def ratio(key: str, col: str = "now") -> str:
        a, b = res.med(col, key), res.med("vsftpd", key)
        return f"{a / b:.2f}x" if a is not None and b else ""

    lines = [
        "| metric | ftps-server now | first release (536ebf5) | vsftpd 3.0.3 | stock pyftpdlib 2.2 "
        "| now / vsftpd |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, key: str, fmt: str, how: str = "med", ratio_ok: bool = True) -> None:
        cells = " | ".join(cell(c, key, fmt, how) for c in cols)
        lines.append(f"| {label} | {cells} | {ratio(key) if ratio_ok else ''} |")

    gib = f"{args.size_mib} MiB" if args.size_mib != 1024 else "1 GiB"
    row(f"{gib} download, curl, MB/s", "download_mbps", "{:.0f}")
    row(f"{gib} upload, curl, MB/s", "upload_mbps", "{:.0f}")
    row("server CPU s/GiB, download", "download_cpu", "{:.2f}")
    row("server CPU s/GiB, upload", "upload_cpu", "{:.2f}")
    row("TLS handshakes/s (connect + AUTH TLS + QUIT, 4 at a time)", "hs_rate", "{:.0f}")
    row("server CPU ms per handshake", "hs_cpu_ms", "{:.1f}")
    row(
        "TLS logins/s, default hash, repeat logins of one user (4 at a time)",
        "login_rate",
        "{:.1f}",
    )
    row("server CPU ms per login, same", "login_cpu_ms", "{:.1f}")
    row("first logins of distinct users, 1 at a time, /s", "first_serial", "{:.2f}", ratio_ok=False)
    row("  same, 4 at a time (distinct addresses), /s", "first_par", "{:.2f}", ratio_ok=False)
    row("  server CPU, % of one core, 1 at a time", "first_share1", "{:.0f}", ratio_ok=False)
    row("  server CPU, % of one core, 4 at a time", "first_share", "{:.0f}", ratio_ok=False)
    row("  server CPU ms per first login", "first_cpu_ms", "{:.0f}", ratio_ok=False)
    row(
        "  server threads with >= 150 ms CPU (hashing), 4 at a time",
        "first_threads",
        "{:.0f}",
        ratio_ok=False,
    )
    for n in args.clients:
        row(
            f"{n} clients x 3 x 1 MiB, default hash: failed sessions (worst run)",
            f"c{n}_failed",
            "{:.0f}",
            how="max",
            ratio_ok=False,
        )
        row("  aggregate MB/s", f"c{n}_mbps", "{:.0f}")
        row("  p50 session s", f"c{n}_p50", "{:.2f}")
        row("  p90 session s", f"c{n}_p90", "{:.2f}")
        row("  slowest session s", f"c{n}_slowest", "{:.2f}")
        row("  server CPU s", f"c{n}_cpu", "{:.1f}")
    row(f"idle TLS session, PSS KiB ({args.idle} sessions, one measurement)", "idle_pss", "{:.1f}")
    par: list[str] = []
    for client, what in (
        ("curl", "curl"),
        ("sink", "sink clients: records read by the kernel, not decrypted (sink_client.py)"),
    ):
        par += [
            "",
            f"4 parallel {gib} downloads ({what}, distinct source addresses):",
            "",
            "| metric | now, workers = 1 | now, workers = 2 | vsftpd 3.0.3 |",
            "|---|---|---|---|",
        ]
        for label, key, fmt in (
            ("server CPU, % of one core (cgroup)", f"par_{client}_cpu", "{:.0f}"),
            ("aggregate MB/s", f"par_{client}_mbps", "{:.0f}"),
            ("clients' CPU, % of one core", f"par_{client}_clients", "{:.0f}"),
        ):
            par.append(
                f"| {label} | "
                + " | ".join(cell(c, key, fmt) for c in ("now", "now-w2", "vsftpd"))
                + " |"
            )
    raw = ["", "Every run (in order), for the record:", ""]
    for (col, key), values in sorted(res.data.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        raw.append(f"- {key} {col}: " + ", ".join(f"{v:.3g}" for v in values))
    return "\n".join(lines + par + raw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="source tree of the first release")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument(
        "--stock-logging",
        choices=("warning", "default"),
        default="warning",
        help="stock pyftpdlib logs warnings only, or at its own default (INFO, a line per command)",
    )
    parser.add_argument("--first-serial", type=int, default=4)
    parser.add_argument("--first-parallel", type=int, default=8)
    parser.add_argument(
        "--clients", type=lambda t: [int(n) for n in t.split(",")], default=[50, 200]
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (cgroups, vsftpd and its system user)", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    up0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ftps-compare-", dir="/dev/shm"))
    work.chmod(0o755)
    try:
        res, _ = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    up1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nuptime before: {up0}\nuptime after:  {up1}")
    print(f"wall time {time.monotonic() - t0:.0f} s; medians of {args.runs} alternating runs")
    print(f"stock pyftpdlib logging: {args.stock_logging}\n")
    print(table(res, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
