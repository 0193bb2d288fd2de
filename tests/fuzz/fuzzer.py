"""Control-channel fuzzer: seeded random and malformed input against a real `ftps-server serve`.

Each *input* is one thing thrown at the server: a command line (known or not, truncated,
overlong, with NUL or non-UTF-8 bytes, out of order), a blob of garbage where a TLS
ClientHello belongs, or a real ClientHello cut off halfway. Inputs travel in connections of
a few inputs each, several connections at once. After every batch the server must still be
running, must have logged no traceback, and a real client must log in and transfer.

Everything is derived from one seed (printed), so a failing run is reproduced with `--seed`.
"""

from __future__ import annotations

import io
import os
import random
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for _p in (_TESTS, _TESTS / "integration", _TESTS.parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import support  # noqa: E402
from test_ftp_policy import _config as policy_config  # noqa: E402
from test_ftps import PASSWORD  # noqa: E402

__all__ = ["FuzzReport", "Fuzzer", "fuzz_server"]

HOST = "127.0.0.1"
# bans and long failure delays would only slow the fuzzer down and lock out the real client
FUZZ_SERVER = """
handshake_timeout = 3
idle_timeout = 20
max_connections = 1000
max_connections_per_ip = 200
max_login_failures = 1000
failure_window = 1
ban_time = 0
passive_ports = 52000-52199
"""
COMMANDS = [
    "ABOR", "ACCT", "ALLO", "APPE", "AUTH", "CCC", "CDUP", "CWD", "DELE", "EPRT", "EPSV", "FEAT",
    "HELP", "LIST", "MDTM", "MFMT", "MKD", "MLSD", "MLST", "MODE", "NLST", "NOOP", "OPTS",
    "PASS", "PASV", "PBSZ", "PORT", "PROT", "PWD", "QUIT", "REIN", "REST", "RETR", "RMD",
    "RNFR", "RNTO", "SITE", "SIZE", "SMNT", "STAT", "STOR", "STOU", "STRU", "SYST", "TYPE",
    "USER", "XCUP", "XCWD", "XMKD", "XPWD", "XRMD", "ADAT", "CONF", "ENC", "MIC", "LANG",
]
ARGS = [
    "", "TLS", "TLS-C", "TLS-P", "SSL", "GSSAPI", "0", "P", "C", "S", "E", "alice", "root",
    "anonymous", "x" * 300, "../../etc/passwd", "/../..", "..", "/", "*", "-la",
    "-1", "99999999999999999999", "127,0,0,1,0,21", "127,0,0,1,300,1", "1,2,3", "|1|127.0.0.1|80|",
    "|2|::1|2121|", "|3|x|y|", "I", "A", "L 8", "UTF8 ON", "MLST type;size;", "CHMOD 777 /",
    "CHMOD 999 ../x", "HELP", "20260101000000 f", "%s%s%n", "\u00e9t\u00e9", "f\u202eexe.txt",
]
SEQUENCES = [  # commands in an order a server must survive
    ["PROT P", "PBSZ 0", "PROT P"], ["PASS x", "USER alice"], ["PASS " + PASSWORD],
    ["USER alice", "USER bob", "PASS x"], ["REST 10", "RETR a", "ABOR", "REST 99", "STOR b"],
    ["PASV", "REST 1", "RETR x", "ABOR", "ABOR"], ["EPSV ALL", "PASV", "PORT 127,0,0,1,4,0"],
    ["RNTO y", "RNFR x", "RNFR x", "DELE x"], ["CCC", "CCC", "PROT C"], ["STOU", "APPE", "ALLO 9"],
    ["AUTH TLS", "AUTH TLS"], ["QUIT", "NOOP"], ["REIN", "USER alice"], ["OPTS", "OPTS UTF8"],
]


@dataclass
class Case:
    """One connection: how it starts and what it sends."""

    kind: str  # plain | auth_garbage | implicit_garbage | abandon_explicit | abandon_implicit
    #            | tls_explicit | tls_implicit
    chunks: list[bytes] = field(default_factory=list)
    login: bool = False


@dataclass
class FuzzReport:
    seed: int
    inputs: int = 0
    connections: int = 0
    batches: int = 0
    crashes: int = 0
    tracebacks: int = 0
    client_checks_ok: int = 0
    rss_kib_start: int = 0
    rss_kib_end: int = 0
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"seed: {self.seed}",
            f"inputs tried: {self.inputs} in {self.connections} connections, "
            f"{self.batches} batches, {self.seconds:.1f} s",
            "per kind: " + ", ".join(f"{k}={v}" for k, v in sorted(self.kinds.items())),
            f"server crashes: {self.crashes}; tracebacks in the server log: {self.tracebacks}",
            f"real client logged in and transferred after {self.client_checks_ok} of "
            f"{self.batches} batches",
            f"server RSS: {self.rss_kib_start} KiB at start, {self.rss_kib_end} KiB at the end",
        ]


def _line(rng: random.Random) -> bytes:
    """One command line, well-formed or broken in one of several ways."""
    roll = rng.random()
    if roll < 0.08:
        return os.urandom(rng.randint(1, 200)) + b"\r\n"  # binary garbage
    if roll < 0.12:
        return b"A" * rng.randint(2_000, 70_000) + b"\r\n"  # overlong
    cmd = rng.choice(COMMANDS)
    if rng.random() < 0.2:
        cmd = cmd.lower() if rng.random() < 0.5 else cmd[: rng.randint(1, len(cmd))]
    arg = rng.choice(ARGS)
    text = f"{cmd} {arg}" if arg else cmd
    data = text.encode("utf-8", "surrogateescape")
    roll = rng.random()
    if roll < 0.1:
        pos = rng.randint(0, len(data))
        data = data[:pos] + b"\x00" + data[pos:]
    elif roll < 0.2:
        pos = rng.randint(0, len(data))
        data = data[:pos] + bytes(rng.choice([0xFF, 0xC3, 0x80, 0xED, 0xFE])
                                  for _ in range(rng.randint(1, 4))) + data[pos:]
    elif roll < 0.25:
        data = data[: rng.randint(0, len(data))]  # truncated
    ending = rng.choices([b"\r\n", b"\n", b"\r", b"", b"\r\r\n"], [80, 8, 4, 4, 4])[0]
    return data + ending


def _client_hello(ctx: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client, to be cut off halfway."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=HOST)
    with suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def make_case(rng: random.Random, hello: bytes) -> Case:
    """A random connection scenario."""
    kind = rng.choices(
        ["plain", "auth_garbage", "implicit_garbage", "abandon_explicit", "abandon_implicit",
         "tls_explicit", "tls_implicit"],
        [30, 8, 8, 6, 6, 21, 21],
    )[0]
    case = Case(kind)
    if kind in ("plain", "tls_explicit", "tls_implicit"):
        n = rng.randint(3, 12)
        while len(case.chunks) < n:
            if rng.random() < 0.15:
                # end whatever line came before: a PASS glued to an unterminated line would
                # be that line's argument, and the server rightly logs those
                case.chunks += [b"\r\n", *(c.encode() + b"\r\n" for c in rng.choice(SEQUENCES))]
            else:
                case.chunks.append(_line(rng))
        case.login = kind != "plain" and rng.random() < 0.5
    elif kind in ("auth_garbage", "implicit_garbage"):
        garbage = rng.choice([
            os.urandom(rng.randint(1, 4096)),
            b"\x16\x03\x01" + os.urandom(rng.randint(0, 600)),  # a record header, then noise
            b"\x16\x03\x03\xff\xff" + b"\x01" * 50,  # a record claiming 64 KiB
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x80\x80\x01\x03\x01" + os.urandom(40),  # SSLv2-style hello
            bytes(hello[: len(hello) // 2]) + os.urandom(32),
        ])
        case.chunks = [garbage]
    else:
        case.chunks = [hello[: rng.randint(0, max(0, len(hello) - 1))]]
    return case


def _drain(sock: socket.socket | ssl.SSLSocket, seconds: float) -> None:
    sock.settimeout(seconds)
    with suppress(OSError, ssl.SSLError, ValueError):
        while sock.recv(65536):
            pass


def run_case(case: Case, explicit: int, implicit: int, ctx: ssl.SSLContext) -> None:
    """Throw one case at the server; every network error is an acceptable outcome."""
    port = implicit if case.kind in ("implicit_garbage", "abandon_implicit", "tls_implicit") else (
        explicit)
    try:
        raw = socket.create_connection((HOST, port), timeout=5)
    except OSError:
        return
    sock: socket.socket | ssl.SSLSocket = raw
    try:
        if case.kind in ("plain", "auth_garbage", "abandon_explicit", "tls_explicit"):
            raw.recv(1024)
        if case.kind in ("auth_garbage", "abandon_explicit", "tls_explicit"):
            raw.sendall(b"AUTH TLS\r\n")
            raw.recv(1024)
        if case.kind in ("tls_explicit", "tls_implicit"):
            sock = ctx.wrap_socket(raw, server_hostname=HOST)
            if case.kind == "tls_implicit":
                sock.recv(1024)
            if case.login:
                sock.sendall(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
        for chunk in case.chunks:
            sock.sendall(chunk)
        if case.kind.startswith("abandon"):
            return  # half a handshake, then gone
        if case.kind in ("plain", "tls_explicit", "tls_implicit"):
            sock.sendall(b"QUIT\r\n")
        _drain(sock, 1.0)
    except (OSError, ssl.SSLError, ValueError):
        pass
    finally:
        with suppress(OSError):
            sock.close()


def real_client_works(pki: support.Pki, explicit: int, implicit: int) -> bool:
    """A normal client logs in on both ports and moves a file both ways, byte-exact."""
    data = os.urandom(100_000)
    for ftp in (
        support.explicit_client(pki, HOST, explicit),
        support.implicit_client(pki, HOST, implicit),
    ):
        ftp.login("alice", PASSWORD)
        ftp.storbinary("STOR check.bin", io.BytesIO(data))
        got = io.BytesIO()
        ftp.retrbinary("RETR check.bin", got.write)
        ftp.quit()
        if got.getvalue() != data:
            return False
    return True


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextmanager
def fuzz_server(workdir: Path) -> Iterator[tuple[support.Pki, support.ServerProcess, int, int]]:
    """A PKI and a running server with the fuzzing config in `workdir`."""
    pki = support.Pki(workdir / "pki")
    config, ports = policy_config(pki, workdir, server_extra=FUZZ_SERVER)
    server = support.ServerProcess(config, workdir)
    try:
        yield pki, server, ports["explicit"], ports["implicit"]
    finally:
        server.stop()


class Fuzzer:
    """Runs batches of cases against one server and checks it after each batch."""

    def __init__(self, pki: support.Pki, server: support.ServerProcess, explicit: int,
                 implicit: int, seed: int, workers: int = 8) -> None:
        self.pki, self.server, self.explicit, self.implicit = pki, server, explicit, implicit
        self.rng = random.Random(seed)
        self.ctx = support.client_context(pki)
        self.hello = _client_hello(self.ctx)
        self.workers = workers
        self.report = FuzzReport(seed, rss_kib_start=rss_kib(server.pid))

    def run(self, inputs: int, batch: int = 500, max_seconds: float = 3600.0,
            progress: Callable[[FuzzReport], None] | None = None) -> FuzzReport:
        """Throw at least `inputs` inputs (or stop at `max_seconds`), checking between batches."""
        start = time.monotonic()
        report = self.report
        with ThreadPoolExecutor(self.workers) as pool:
            while report.inputs < inputs and time.monotonic() - start < max_seconds:
                cases: list[Case] = []
                count = 0
                while count < min(batch, inputs - report.inputs):
                    case = make_case(self.rng, self.hello)
                    cases.append(case)
                    count += len(case.chunks)
                    report.kinds[case.kind] = report.kinds.get(case.kind, 0) + len(case.chunks)
                list(pool.map(lambda c: run_case(c, self.explicit, self.implicit, self.ctx),
                              cases))
                report.inputs += count
                report.connections += len(cases)
                report.batches += 1
                if not self._check():
                    break
                if progress:
                    progress(report)
        report.seconds = time.monotonic() - start
        report.rss_kib_end = rss_kib(self.server.pid) if self.server.proc.poll() is None else 0
        return report

    def _check(self) -> bool:
        report = self.report
        if self.server.proc.poll() is not None:
            report.crashes += 1
            return False
        report.tracebacks = self.server.log().count("Traceback")
        try:
            ok = real_client_works(self.pki, self.explicit, self.implicit)
        except (OSError, EOFError, ssl.SSLError) as exc:
            print(f"real client failed: {exc!r}", file=sys.stderr)
            ok = False
        except Exception as exc:  # ftplib.all_errors and assertion-like failures
            print(f"real client failed: {exc!r}", file=sys.stderr)
            ok = False
        report.client_checks_ok += ok
        return ok


def fuzz(inputs: int, seed: int | None = None, workdir: Path | None = None,
         max_seconds: float = 3600.0, verbose: bool = False) -> tuple[FuzzReport, str]:
    """Start a server, fuzz it, stop it; the report and the server's log."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    work = workdir or Path(tempfile.mkdtemp(prefix="ftps-fuzz-"))
    with fuzz_server(work) as (pki, server, explicit, implicit):
        fuzzer = Fuzzer(pki, server, explicit, implicit, seed)

        def show(r: FuzzReport) -> None:
            if verbose and r.batches % 10 == 0:
                print(f"  {r.inputs} inputs, RSS {rss_kib(server.pid)} KiB", file=sys.stderr)

        report = fuzzer.run(inputs, max_seconds=max_seconds, progress=show)
        return report, server.log()
