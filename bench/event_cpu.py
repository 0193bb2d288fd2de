#!/usr/bin/env python3
"""Server CPU per command of short sessions: ftps-server against stock pyftpdlib (by hand).

    sudo PYTHONPATH=$PWD python3 bench/event_cpu.py [--sessions 400] [--noops 0] [--retrs 0] \\
        [--baseline TREE]

Where a short session's CPU goes, command by command, in both servers. A probe loaded into
each server process (a `sitecustomize` on its PYTHONPATH, written to the work directory)
charges the thread CPU of every event of pyftpdlib's loop to what ran in it: a command
("PASS"), the accept and banner, a TLS handshake (control or data), a close. An event that ran
several (a client that sent its next command before the reply was read) is its own row
("PASS + PBSZ"). The sessions: 4 client threads, each connect, AUTH TLS, login, PBSZ and
PROT P, `--noops` NOOPs, `--retrs` RETRs of a one-byte file, QUIT; ftps-server with a cheap
hash after one warming login (the verifier cache answers, as for repeat logins).

The table: µs of server CPU per session and events per session for each label, most costly
first; the sum of all loop events; the process CPU per session from its cgroup (everything,
other threads included). The probe's own cost (two clock reads per event) is in the figures of
both servers alike. Found with it: one more `recv` per command that ended in EAGAIN and three
exceptions (docs/performance.md, "Short sessions"). Bounded in count and time; it stops only
the processes it started.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import short_sessions
import tls_throughput
from tls_throughput import Server

PROBE = r'''
"""event_cpu.py's probe: per-event thread CPU of pyftpdlib's loop, by what ran in it."""
import collections, json, os, threading, time
_OUT = os.environ.get("EVENT_CPU_OUT")
if _OUT:
    import pyftpdlib.ioloop as _io
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.handlers.ftp.data import DTPHandler
    from pyftpdlib.handlers.ftp.dispatchers import PassiveDTP
    _acc = collections.defaultdict(lambda: [0.0, 0])
    _now, _late = [], [False]

    def _event(run):
        def wrapper(obj):
            if not _late[0]:
                _late[0] = True
                _hook_ftps_server()
            _now.clear()
            start = time.thread_time()
            try:
                return run(obj)
            finally:
                cell = _acc[" + ".join(dict.fromkeys(_now)) or "other: " + type(obj).__name__]
                cell[0] += time.thread_time() - start
                cell[1] += 1
        return wrapper

    def _mark(cls, name, label):
        run = getattr(cls, name)
        def wrapper(self, *args, **kwargs):
            _now.append(label(self, args) if callable(label) else label)
            return run(self, *args, **kwargs)
        setattr(cls, name, wrapper)

    def _handshake(channel, args):
        return "TLS handshake, " + ("data" if isinstance(channel, DTPHandler) else "control")

    def _hook_ftps_server():
        try:
            from ftps_server.server.tls_channel import TlsChannel
        except ImportError:
            return  # stock pyftpdlib
        _mark(TlsChannel, "_tls_handshake", _handshake)

    _io._read, _io._write = _event(_io._read), _event(_io._write)
    _mark(FTPHandler, "pre_process_command", lambda self, args: args[1])
    _mark(FTPHandler, "handle", "accept, banner")
    _mark(FTPHandler, "close", "close, control")
    _mark(DTPHandler, "close", "close, data")
    _mark(PassiveDTP, "handle_accepted", "data connection accepted")
    try:
        from pyftpdlib.handlers.ftps.ssl import SSLConnectionMixin
        _mark(SSLConnectionMixin, "_do_ssl_handshake", _handshake)
    except ImportError:
        pass

    def _dump():
        while True:
            time.sleep(0.25)
            with open(_OUT + ".tmp", "w") as f:
                json.dump({k: v for k, v in _acc.items()}, f)
            os.replace(_OUT + ".tmp", _OUT)

    threading.Thread(target=_dump, name="event-cpu", daemon=True).start()
'''


def _sessions(server: Server, context: ssl.SSLContext, count: int, noops: int, retrs: int) -> None:
    def client() -> None:
        for _ in range(count // 4):
            ftp = short_sessions.ReusingFTP_TLS(context=context, timeout=30)
            ftp.connect(tls_throughput.HOST, server.port)
            ftp.auth()
            ftp.login(tls_throughput.BENCH_USER, server.password)
            ftp.prot_p()
            for _ in range(noops):
                ftp.voidcmd("NOOP")
            for _ in range(retrs):
                ftp.retrbinary("RETR one.bin", lambda _: None)
            ftp.quit()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)


def _read(path: Path, before: dict[str, list[float]]) -> dict[str, list[float]]:
    """The probe's totals now, less `before`."""
    time.sleep(0.8)  # the probe writes every 0.25 s
    totals: dict[str, list[float]] = json.loads(path.read_text())
    zero = [0.0, 0.0]
    return {
        k: [v[0] - before.get(k, zero)[0], v[1] - before.get(k, zero)[1]] for k, v in totals.items()
    }


def _table(results: dict[str, tuple[dict[str, list[float]], float]], count: int) -> None:
    names = list(results)
    labels = sorted(
        {label for events, _ in results.values() for label in events},
        key=lambda label: -max(results[n][0].get(label, [0, 0])[0] for n in names),
    )
    print(f"\nserver CPU per session, µs (events per session); {count} sessions each")
    print("| what ran in the event | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label in labels:
        cells = []
        for n in names:
            seconds, events = results[n][0].get(label, [0.0, 0])
            cells.append(f"{seconds / count * 1e6:.0f} ({events / count:.2f})" if events else "")
        if any(cells):
            print(f"| {label} | " + " | ".join(cells) + " |")
    sums = [sum(v[0] for v in results[n][0].values()) / count * 1e6 for n in names]
    print("| all loop events | " + " | ".join(f"{s:.0f}" for s in sums) + " |")
    print("| process CPU (cgroup) | " + " | ".join(f"{results[n][1]:.0f}" for n in names) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--noops", type=int, default=0)
    parser.add_argument("--retrs", type=int, default=0)
    parser.add_argument("--baseline", type=Path, help="source tree of a second ftps-server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftps-event-cpu-", dir="/dev/shm"))
    work.chmod(0o755)
    with tls_throughput.stopped_at_exit(work) as servers:
        probe = work / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(PROBE)
        cert, key = tls_throughput.self_signed(work, kind="ec")
        home = work / "home" / tls_throughput.BENCH_USER
        home.mkdir(parents=True)
        (home / "one.bin").write_bytes(b"x")
        options = {"max_connections_per_ip": "1000"}

        def env(name: str) -> dict[str, str]:
            return {"PYTHONPATH": str(probe), "EVENT_CPU_OUT": str(work / f"{name}.json")}

        start = tls_throughput.start_ftps_server
        cheap = tls_throughput.cheap_hash
        trees = [("now", tls_throughput.ROOT)]
        if args.baseline:
            trees.append(("baseline", args.baseline.resolve()))
        for n, (name, tree) in enumerate(trees):
            passive = f"{24000 + 500 * n}-{24499 + 500 * n}"
            settings = {**options, "passive_ports": passive}
            servers.append(
                start(work, cert, key, home, 28990 + n, settings, cheap, tree, name, env=env(name))
            )
        stock = tls_throughput.start_stock(
            work, cert, key, home, 28996, "25000-25499", env=env("pyftpdlib")
        )
        servers.append(stock)
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        results = {}
        for server in servers:
            _sessions(server, context, 4, 0, 1)  # the verifier cache, the first contexts
            out = work / f"{server.name}.json"
            before = _read(out, {}) if out.exists() else {}
            cpu = server.cpu_seconds()
            _sessions(server, context, args.sessions, args.noops, args.retrs)
            events = _read(out, before)  # waits for the probe, and for the last closes
            results[server.name] = (events, (server.cpu_seconds() - cpu) / args.sessions * 1e6)
        _table(results, args.sessions - args.sessions % 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
