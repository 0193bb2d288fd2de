#!/usr/bin/env python3
"""N clients x 3 x 1 MiB at once: ftps-server against stock pyftpdlib (by hand, as root).

    sudo PYTHONPATH=$PWD python3 bench/many_clients.py [--clients 50,200] [--runs 7] \\
        [--baseline TREE]

ftps-server with its default hash (ln=15 r=8 p=3).

The many-clients phase of compare.py alone, with more runs: one phase lasts under a second
(50 clients) to a few seconds (200), so its rate moves by ±10% between runs and a median of
3 decides little. The two servers (three with `--baseline`, another ftps-server source tree)
alternate run by run; the table shows medians of the aggregate rate, of the server CPU of the
phase (cgroup) and of the slowest session. Every client: one session from its own loopback
address, login, three RETR of 1 MiB, 60 s timeout per socket operation. Bounded in count and
time; it stops only the processes it started.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import compare
import tls_throughput


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clients", type=lambda t: [int(n) for n in t.split(",")], default=[50, 200]
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="source tree of a second ftps-server")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (cgroups)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ftps-many-", dir="/dev/shm"))
    work.chmod(0o755)
    with tls_throughput.stopped_at_exit(work) as servers:
        cert, key = compare._cert(work)
        home = work / "home" / compare.BENCH_USER
        home.mkdir(parents=True)
        (home / "sessions-1m.bin").write_bytes(os.urandom(2**20))
        start = tls_throughput.start_ftps_server
        servers.append(
            start(work, cert, key, home, 48990, compare._ftps_options("43000-43499"), name="now")
        )
        if args.baseline:
            options = compare._ftps_options("43500-43999")
            servers.append(
                start(work, cert, key, home, 48991, options, tree=args.baseline, name="baseline")
            )
        stock = tls_throughput.start_stock(work, cert, key, home, 48996, "44500-44999")
        servers.append(stock)
        for path in home.iterdir():
            path.chmod(0o666)
        home.chmod(0o777)
        for server in servers:
            compare.many_clients(server, cert, 5)  # warm up (ftps-server: the verifier cache)
        for clients in args.clients:
            rows: dict[str, list[compare.Row]] = {s.name: [] for s in servers}
            for run in range(args.runs):
                print(f"run {run + 1}: {clients} clients", file=sys.stderr)
                for server in servers:
                    rows[server.name].append(compare.many_clients(server, cert, clients))
                    time.sleep(1.0)
            print(f"\n{clients} clients x 3 x 1 MiB, medians of {args.runs} alternating runs")
            print("| server | failed (worst) | MB/s | server CPU s | slowest s | MB/s, every run |")
            print("|---|---|---|---|---|---|")
            for name, found in rows.items():

                def median(key: str, found: list[compare.Row] = found) -> float:
                    return statistics.median(float(r[key]) for r in found)

                every = ", ".join(f"{float(r['mbps']):.0f}" for r in found)
                worst = max(int(r["failed"]) for r in found)
                print(
                    f"| {name} | {worst} | {median('mbps'):.0f} | {median('cpu'):.2f} "
                    f"| {median('slowest'):.2f} | {every} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
