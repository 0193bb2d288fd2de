#!/usr/bin/env python3
"""TLS throughput of ftps-server against vsftpd, measured in the same run (run by hand, as root).

Both servers run on loopback with the same RSA-2048 certificate, PROT P and session reuse
required (vsftpd: require_ssl_reuse=YES). curl is the client for both. Runs alternate
(A B A B ...) so drift on a noisy machine hits both; the table shows medians and ratios.

    sudo python3 bench/tls_throughput.py [--size-mib 1024] [--runs 5] [--baseline TREE]

`--baseline TREE` adds a third server: ftps-server run from another source tree (e.g. an
`git archive` of the previous commit), so a change is measured before/after in the same run.

It installs vsftpd from Debian if missing (never started as a system service), creates a
system user `ftpbench` for it, and removes nothing it did not create in its temp directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from cgroup_cpu import CpuGroup  # noqa: E402
from support import stop_process  # noqa: E402

from ftps_server.demo import write_pem  # noqa: E402
from ftps_server.pki.passwords import HashParams, hash_password  # noqa: E402

HOST = "127.0.0.1"
BENCH_USER = "ftpbench"


def self_signed(
    directory: Path, hosts: tuple[str, ...] = (HOST,), kind: str = "rsa", name: str = "bench"
) -> tuple[Path, Path]:
    """A self-signed certificate for `hosts` (IP SANs) as `name`.pem/.key in `directory`:
    RSA-2048 (`kind="rsa"`) or EC P-256 (`kind="ec"`)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(host)) for host in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(sans), False)
        .sign(key, hashes.SHA256())
    )
    return write_pem(directory, name, cert, key), directory / f"{name}.key"


def cheap_hash(password: str) -> str:
    """A scrypt hash of ln=10 r=8 p=1: for the benches where the hash is not the subject."""
    return hash_password(password, HashParams(ln=10, r=8, p=1))


@contextlib.contextmanager
def stopped_at_exit(work: Path) -> Iterator[list[Server]]:
    """A list for the servers a bench starts: on leaving, each is stopped and `work` removed."""
    servers: list[Server] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _cert(directory: Path) -> tuple[Path, Path]:
    return self_signed(directory)


def workspace(prefix: str, size_mib: int, user: str) -> tuple[Path, Path]:
    """A work directory (on tmpfs when there is one: the disk is not what is compared) and
    the home of `user` in it holding `file.bin` of `size_mib` MiB of random bytes."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    work.chmod(0o755)
    home = work / "home" / user
    home.mkdir(parents=True)
    with (home / "file.bin").open("wb") as f:
        block = os.urandom(2**20)
        for _ in range(size_mib):
            f.write(block)
    return work, home


# one session of a many-clients bench: ok, seconds, bytes received, why it failed
SessionResult = tuple[bool, float, int, str]


def session_summary(
    name: str, results: list[SessionResult], wall: float
) -> tuple[int, float, list[float]]:
    """(failed sessions, MB/s received over `wall` seconds, the good sessions' times in
    ascending order or [nan]); prints up to five distinct failure reasons to stderr."""
    failures = [r[3] for r in results if not r[0]]
    for reason in sorted(set(failures))[:5]:
        print(f"  {name}: failure x{failures.count(reason)}: {reason}", file=sys.stderr)
    times = sorted(r[1] for r in results if r[0]) or [float("nan")]
    return len(failures), sum(r[2] for r in results) / wall / 1e6, times


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank value at `fraction` (0..1) of an ascending, non-empty list."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` plus its reaped children: the fallback where no cgroup can be
    made (not root); live children (vsftpd's sessions, ftps-server's workers) are missed."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(
        self,
        name: str,
        port: int,
        password: str,
        proc: subprocess.Popen[bytes],
        group: CpuGroup | None = None,
    ) -> None:
        self.name, self.port, self.password, self.proc = name, port, password, proc
        self.group = group

    def cpu_seconds(self) -> float:
        """CPU of every process of the server so far: its cgroup, else /proc of its pid."""
        if self.group is not None:
            return self.group.cpu_seconds()
        return _cpu_seconds(self.pid)

    def memory_kib(self) -> tuple[int, int] | None:
        """(RSS, PSS) in KiB over the server's cgroup, None without one."""
        return self.group.memory_kib() if self.group is not None else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        if self.group is not None:
            self.group.remove()


def _group(name: str) -> CpuGroup | None:
    """A cgroup for one server (None when not root: CPU then comes from /proc)."""
    return CpuGroup.create(name.replace("/", "_").replace(" ", "_"))


def start_ftps_server(
    work: Path,
    cert: Path,
    key: Path,
    home: Path,
    port: int,
    server_options: dict[str, str] | None = None,
    password_hash: Callable[[str], str] = hash_password,
    tree: Path = ROOT,
    name: str = "ftps-server",
    extra_config: str = "",
    env: dict[str, str] | None = None,
) -> Server:
    """ftps-server (from source `tree`) on HOST:port; `server_options` add to or replace
    [server] keys; `extra_config` is appended to the file (more users); `env` adds to the
    server's environment (a PYTHONPATH there goes before `tree`)."""
    password = secrets.token_urlsafe(12)
    config = work / f"{name}.ini"
    options = {"passive_ports": "41000-41099", **(server_options or {})}
    server_lines = "\n".join(f"{k} = {v}" for k, v in options.items())
    config.write_text(f"""[server]
addresses = {HOST}
state_dir = {work}/state-{name}
root = {home.parent}
{server_lines}
[ports]
explicit = {port}
implicit = 0
[certificate:bench]
cert = {cert}
key = {key}
default = yes
[user:{BENCH_USER}]
home = {home}
permissions = elradfmw
password = {password_hash(password)}
{extra_config}""")
    group = _group(name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftps_server", "serve", "--config", str(config)],
        cwd=work,
        env=_server_env(env, tree),
        stdout=subprocess.DEVNULL,
        stderr=(work / f"{name}.log").open("wb"),
        preexec_fn=group.enter if group else None,
    )
    _wait_port(port)
    return Server(name, port, password, proc, group)


def _server_env(extra: dict[str, str] | None, tree: Path | None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    paths = [p for p in ((extra or {}).get("PYTHONPATH"), str(tree) if tree else None) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def start_vsftpd(
    work: Path, cert: Path, key: Path, home: Path, port: int, options: dict[str, str] | None = None
) -> Server:
    """vsftpd on HOST:port as configured below; `options` add to or replace its settings."""
    if not shutil.which("vsftpd"):
        policy = Path("/usr/sbin/policy-rc.d")
        if not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "vsftpd"],
            check=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
    password = secrets.token_urlsafe(12)
    if subprocess.run(["id", BENCH_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--home-dir", str(home), "--shell", "/bin/sh", BENCH_USER],
            check=True,
        )
    subprocess.run(["usermod", "--home", str(home), BENCH_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{BENCH_USER}:{password}".encode(), check=True)
    shutil.chown(home, BENCH_USER)
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    conf = work / "vsftpd.conf"
    conf.write_text(f"""listen=YES
listen_ipv6=NO
listen_address={HOST}
listen_port={port}
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_root={home}
pasv_min_port=42000
pasv_max_port=42099
ssl_enable=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
ssl_ciphers=HIGH
rsa_cert_file={cert}
rsa_private_key_file={key}
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
pam_service_name=vsftpd
xferlog_enable=NO
""")
    if options:
        lines = dict(line.split("=", 1) for line in conf.read_text().splitlines() if line)
        lines.update(options)
        conf.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    group = _group(f"vsftpd-{port}")
    proc = subprocess.Popen(
        ["vsftpd", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=group.enter if group else None,
    )
    _wait_port(port)
    return Server("vsftpd", port, password, proc, group)


def _listening(port: int) -> bool:
    """True when a socket listens on TCP `port` (read from /proc/net, no connection made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _wait_port(port: int, timeout: float = 15) -> None:
    # Not by connecting: the bench ports lie in the ephemeral range, and a connect to a port
    # nobody listens on yet can pick that same port as its source and connect to itself
    # (seen here). That looked like a listening server, and its TIME_WAIT then kept the
    # server from binding the port for a minute.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def _curl(server: Server, cert: Path, *args: str) -> None:
    # the password goes through stdin (-K -), never onto a command line or into output
    cmd = [
        "curl",
        "-sS",
        "--ssl-reqd",
        "--cacert",
        str(cert),
        "-K",
        "-",
        "--max-time",
        "600",
        *args,
    ]
    config = f'user = "{BENCH_USER}:{server.password}"\n'
    r = subprocess.run(cmd, input=config.encode(), capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"{server.name}: curl {args[-1]} failed: {r.stderr.decode().strip()}")


def start_stock(
    work: Path,
    cert: Path,
    key: Path,
    home: Path,
    port: int,
    passive: str,
    logging_: str = "warning",
    env: dict[str, str] | None = None,
) -> Server:
    """Stock pyftpdlib 2.x TLS_FTPHandler (pyOpenSSL), TLS required on both channels.

    `logging_`: "warning" logs warnings only (no line per session); "default" leaves
    pyftpdlib's own default, INFO to stderr (a line per command), as ftps-server logs sessions.
    """
    setup = "logging.basicConfig(level=logging.WARNING)" if logging_ == "warning" else ""
    password = "stock-" + os.urandom(6).hex()
    low, high = (int(p) for p in passive.split("-"))
    script = work / f"stock-{port}.py"
    script.write_text(
        textwrap.dedent(f"""
        import logging
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import TLS_FTPHandler
        from pyftpdlib.servers import FTPServer
        {setup}
        auth = DummyAuthorizer()
        auth.add_user({BENCH_USER!r}, {password!r}, {str(home)!r}, perm="elradfmw")
        TLS_FTPHandler.certfile = {str(cert)!r}
        TLS_FTPHandler.keyfile = {str(key)!r}
        TLS_FTPHandler.tls_control_required = True
        TLS_FTPHandler.tls_data_required = True
        TLS_FTPHandler.authorizer = auth
        TLS_FTPHandler.passive_ports = range({low}, {high + 1})
        server = FTPServer(({HOST!r}, {port}), TLS_FTPHandler)
        server.max_cons = 5000
        server.serve_forever()
        """)
    )
    group = _group(f"pyftpdlib-{port}")
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=_server_env(env, None),
        stderr=(work / f"stock-{port}.log").open("wb"),
        preexec_fn=group.enter if group else None,
    )
    _wait_port(port)
    return Server("pyftpdlib", port, password, proc, group)


def measure(
    server: Server, cert: Path, direction: str, size: int, src: Path
) -> tuple[float, float]:
    """(MB/s, server CPU seconds per GiB) for one transfer."""
    url = f"ftp://{HOST}:{server.port}/"
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    if direction == "download":
        _curl(server, cert, "-o", "/dev/null", url + src.name)
    else:
        _curl(server, cert, "-T", str(src), url + "upload.bin")
    elapsed = time.perf_counter() - t0
    time.sleep(1.0)  # let vsftpd's per-session processes finish
    cpu = server.cpu_seconds() - cpu0
    if direction == "upload":
        uploaded = src.parent / "upload.bin"
        assert uploaded.stat().st_size == size, f"{server.name}: upload incomplete"
        uploaded.unlink()
    return size / elapsed / 1e6, cpu / (size / 2**30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="source tree of a second ftps-server")
    parser.add_argument("--download-only", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it installs vsftpd and a system user for it)", file=sys.stderr)
        return 2
    work, home = workspace("ftps-bench-", args.size_mib, BENCH_USER)
    servers: list[Server] = []
    try:
        cert, key = _cert(work)
        size = args.size_mib * 2**20
        src = home / "file.bin"
        servers = [
            start_ftps_server(work, cert, key, home, 41990),
            start_vsftpd(work, cert, key, home, 41991),
        ]
        if args.baseline:
            servers.append(
                start_ftps_server(
                    work,
                    cert,
                    key,
                    home,
                    41992,
                    {"passive_ports": "41100-41199"},
                    tree=args.baseline.resolve(),
                    name="baseline",
                )
            )
        shutil.chown(home, BENCH_USER)
        src.chmod(0o666)
        home.chmod(0o777)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for run in range(args.runs):
            for direction in _directions(args):
                for server in servers:
                    results.setdefault((server.name, direction), []).append(
                        measure(server, cert, direction, size, src)
                    )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        _table(results, args)
    except RuntimeError:
        for log in work.glob("*.log"):
            print(log.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _directions(args: argparse.Namespace) -> tuple[str, ...]:
    return ("download",) if args.download_only else ("download", "upload")


def _table(
    results: dict[tuple[str, str], list[tuple[float, float]]], args: argparse.Namespace
) -> None:
    def med(name: str, direction: str, i: int) -> float:
        return statistics.median(r[i] for r in results[(name, direction)])

    base = bool(args.baseline)
    print(f"\nTLS, {args.size_mib} MiB file, curl client, medians of {args.runs} alternating runs")
    print(
        "| metric | ftps-server | vsftpd | ratio |"
        + (" baseline |" if base else "")
        + "\n|---|---|---|---|"
        + ("---|" if base else "")
    )
    for direction in _directions(args):
        for i, label, fmt in (
            (0, f"TLS {direction} MB/s", "{:.0f}"),
            (1, f"server CPU s/GiB, {direction}", "{:.2f}"),
        ):
            a, b = med("ftps-server", direction, i), med("vsftpd", direction, i)
            row = f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f}x |"
            if base:
                row += f" {fmt.format(med('baseline', direction, i))} |"
            print(row)


if __name__ == "__main__":
    sys.exit(main())
