#!/usr/bin/env python3
"""Parallel TLS downloads with `[server] workers = 1` against `workers = 2` (run by hand).

    python3 bench/parallel_downloads.py [--size-mib 1024] [--streams 4] [--runs 3]

`--streams` clients download the same file at once, each from its own loopback source
address (127.0.0.2, 127.0.0.3, ...; chosen so that they spread evenly over the workers, since
all sessions of one address go to one worker). Reported per server: aggregate MB/s and server
CPU in % of one core (its cgroup when run as root, else /proc), medians of alternating runs.
Clients (`--client`): curl, which decrypts like any real client, and `sink_client.py`, which
reads the records without decrypting them, so that on a machine with few cores the clients
leave the CPU to the server and its capacity shows (both by default).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import tls_throughput  # noqa: E402
from tls_throughput import HOST, Server, _cert  # noqa: E402

from ftps_server.server.workers import pick  # noqa: E402

BENCH_USER = tls_throughput.BENCH_USER = "ftppar"


def _tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (utime + stime + reaped children) of `pid` and of each live child."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            found[int(entry.name)] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    return found


def sources_for(streams: int, workers: int) -> list[str]:
    """Loopback client addresses, round-robin over the workers of the larger server."""
    by_worker: dict[int, list[str]] = {}
    for last in range(2, 250):
        address = f"127.0.0.{last}"
        by_worker.setdefault(pick(address, workers), []).append(address)
    return [by_worker[i % workers][i // workers] for i in range(streams)]


def _client(
    server: Server, cert: Path, name: str, size: int, source: str, client: str, user: str
) -> list[str]:
    if client == "sink":
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "sink_client.py")]
        cmd += ["--port", str(server.port), "--user", user, "--cafile", str(cert)]
        return [*cmd, "--source", source, "--file", name, "--size", str(size)]
    cmd = ["curl", "-sS", "--ssl-reqd", "--cacert", str(cert), "-K", "-"]
    cmd += ["--max-time", "600", "--interface", source, "-o", "/dev/null"]
    return [*cmd, f"ftp://{HOST}:{server.port}/{name}"]


def measure(
    server: Server,
    cert: Path,
    name: str,
    size: int,
    sources: list[str],
    client: str = "curl",
    user: str = BENCH_USER,
) -> tuple[float, float, float, float]:
    """(aggregate MB/s, server CPU, its busiest process's CPU and client CPU, in % of one
    core) for parallel downloads by `client` (curl, or sink_client.py: see there)."""
    clients0 = _children_cpu()
    secret = server.password if client == "sink" else f'user = "{user}:{server.password}"'
    total0 = server.cpu_seconds()
    cpu0, t0 = _tree_cpu(server.pid), time.perf_counter()
    procs = []
    for source in sources:
        cmd = _client(server, cert, name, size, source, client, user)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(f"{secret}\n".encode())
        proc.stdin.close()
        procs.append(proc)
    for proc in procs:
        if proc.wait(660) != 0:
            assert proc.stderr is not None
            raise RuntimeError(f"{server.name}: {client} failed: {proc.stderr.read().decode()}")
    elapsed = time.perf_counter() - t0
    total = server.cpu_seconds() - total0  # its cgroup: the workers and all
    cpu1 = _tree_cpu(server.pid)
    used = [cpu1[p] - cpu0.get(p, 0.0) for p in cpu1]
    clients = _children_cpu() - clients0
    rate = len(sources) * size / elapsed / 1e6
    return rate, 100 * total / elapsed, 100 * max(used) / elapsed, 100 * clients / elapsed


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers of the second server")
    parser.add_argument(
        "--client",
        choices=("curl", "sink", "both"),
        default="both",
        help="curl decrypts (a real client); sink discards the records (server capacity)",
    )
    args = parser.parse_args()
    work, home = tls_throughput.workspace("ftps-par-", args.size_mib, BENCH_USER)
    with tls_throughput.stopped_at_exit(work) as servers:
        cert, key = _cert(work)
        src = home / "file.bin"

        for port, workers, passive in (
            (45990, 1, "46000-46099"),
            (45991, args.workers, "46100-46199"),
        ):
            options = {"workers": str(workers), "passive_ports": passive}
            server = tls_throughput.start_ftps_server(
                work,
                cert,
                key,
                home,
                port,
                options,
                tls_throughput.cheap_hash,
                name=f"workers={workers}",
            )
            servers.append(server)
        time.sleep(2.0)  # the workers import and load the configuration
        sources = sources_for(args.streams, args.workers)
        clients = ("curl", "sink") if args.client == "both" else (args.client,)
        results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        for run in range(args.runs):
            for client in clients:
                for server in servers:
                    results.setdefault((client, server.name), []).append(
                        measure(server, cert, src.name, args.size_mib * 2**20, sources, client)
                    )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        for client in clients:
            what = "curl" if client == "curl" else "sink clients: records read, not decrypted"
            print(
                f"\n{args.streams} parallel TLS downloads of {args.size_mib} MiB ({what}), "
                f"medians of {args.runs} alternating runs"
            )
            mine = {name: rs for (c, name), rs in results.items() if c == client}
            print("| metric | " + " | ".join(mine) + " |\n|---|" + "---|" * len(mine))
            labels = (
                "aggregate MB/s",
                "server CPU, % of one core (all its processes)",
                "  of which its busiest process",
                "clients' CPU, %",
            )
            for i, label in enumerate(labels):
                cells = [f"{statistics.median(r[i] for r in rs):.0f}" for rs in mine.values()]
                print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
