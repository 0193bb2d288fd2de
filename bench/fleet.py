#!/usr/bin/env python3
"""Aggregate TLS download throughput through HAProxy: 2 ftps-server nodes vs 1 (run by hand).

One HAProxy process in front of two local ftps-server processes sharing one directory, as the
`balancer` role configures it (mode tcp, send-proxy-v2, leastconn, one passive range per node
forwarded to that node only). Two control frontends on the same VIP, in the same HAProxy: port
A balances over node 1 alone, port B over both nodes. Rounds alternate A B A B ... so drift on a
noisy machine hits both; each round starts `--clients` curl downloads at once (explicit FTPS,
PROT P, session reuse) and takes total bytes / wall time. The table shows medians and the ratio.

    python3 bench/fleet.py [--size-mib 256] [--clients 4] [--rounds 5]

Needs haproxy and curl on PATH. Loopback only: VIP 127.0.0.50, nodes 127.0.0.51 and .52,
the balancer's source address 127.0.0.53 (the nodes' proxy_from). Files live in /dev/shm
when there is one (the disk is not what is being compared). Stops only what it started.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from support import stop_process  # noqa: E402
from tls_throughput import cheap_hash, self_signed  # noqa: E402

VIP = "127.0.0.50"
NODES = {"node1": "127.0.0.51", "node2": "127.0.0.52"}
SOURCE = "127.0.0.53"
USER = "bench"
PASSIVE_SIZE = 20


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _free_range(count: int) -> int:
    """A first port such that FIRST..FIRST+count-1 are free on the VIP and every node."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        first = rng.randrange(20000, 60000 - count)
        try:
            for host in (VIP, *NODES.values()):
                for port in range(first, first + count):
                    with socket.socket() as s:
                        s.bind((host, port))
            return first
        except OSError:
            continue
    raise RuntimeError("no free passive port range on loopback")


def _cert(directory: Path) -> tuple[Path, Path]:
    """Self-signed certificate for the VIP and the nodes (the client verifies it)."""
    return self_signed(directory, (VIP, *NODES.values()), kind="ec")


def _wait_port(host: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def _start_node(
    work: Path, name: str, address: str, port: int, passive: str, cert: Path, key: Path, pw: str
) -> subprocess.Popen[bytes]:
    config = work / f"{name}.ini"
    config.write_text(f"""[server]
addresses = {address}
passive_ports = {passive}
state_dir = {work}/state-{name}
root = {work}/storage
proxy_protocol = yes
proxy_from = {SOURCE}
max_connections_per_ip = 100
[ports]
explicit = {port}
implicit = 0
[certificate:bench]
cert = {cert}
key = {key}
default = yes
[user:{USER}]
home = {work}/storage/{USER}
permissions = elr
password = {cheap_hash(pw)}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftps_server", "serve", "--config", str(config)],
        cwd=work,
        env=dict(os.environ, PYTHONPATH=str(ROOT), FTPS_SERVER_LOG="stderr"),
        stdout=subprocess.DEVNULL,
        stderr=(work / f"{name}.log").open("wb"),
    )
    _wait_port(address, port)
    return proc


def _haproxy_config(node_port: int, port_one: int, port_two: int, first: int) -> str:
    """The role's shape (ansible/roles/balancer/templates/haproxy.cfg.j2), without checks."""
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        f"frontend one_node\n    bind {VIP}:{port_one}\n    default_backend one_node",
        f"frontend two_nodes\n    bind {VIP}:{port_two}\n    default_backend two_nodes",
        "backend one_node\n    balance leastconn",
        f"    server node1 {NODES['node1']}:{node_port} send-proxy-v2 source {SOURCE}",
        "backend two_nodes\n    balance leastconn",
    ]
    lines += [
        f"    server {name} {address}:{node_port} send-proxy-v2 source {SOURCE}"
        for name, address in NODES.items()
    ]
    for index, (name, address) in enumerate(sorted(NODES.items())):
        low = first + index * PASSIVE_SIZE
        lines += [
            f"frontend passive_{name}\n    bind {VIP}:{low}-{low + PASSIVE_SIZE - 1}",
            f"    default_backend passive_{name}",
            f"backend passive_{name}\n    server {name} {address} send-proxy-v2 source {SOURCE}",
        ]
    return "\n".join(lines) + "\n"


def _download(url: str, ca: Path, password: str) -> int:
    """One curl download to /dev/null; the bytes it received."""
    cmd = ["curl", "-sS", "--ssl-reqd", "--cacert", str(ca), "-K", "-", "--max-time", "600"]
    cmd += ["-o", "/dev/null", "-w", "%{size_download}", url]
    config = f'user = "{USER}:{password}"\n'  # through stdin: never on a command line
    r = subprocess.run(cmd, input=config.encode(), capture_output=True, timeout=660)
    if r.returncode != 0:
        raise RuntimeError(f"curl {url} failed: {r.stderr.decode().strip()}")
    return int(r.stdout.decode().strip())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(
    url: str, ca: Path, password: str, clients: int, size: int, nodes: list[int]
) -> tuple[float, list[float]]:
    """Aggregate MB/s of `clients` downloads started together, and each node's CPU use in
    the round (1.0 = one core busy all the time: a single-threaded node's ceiling)."""
    cpu0 = [_cpu_seconds(pid) for pid in nodes]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        sizes = list(pool.map(lambda _: _download(url, ca, password), range(clients)))
        elapsed = time.perf_counter() - t0
    if sizes != [size] * clients:
        raise RuntimeError(f"short downloads: {sizes}")
    busy = [(_cpu_seconds(pid) - c) / elapsed for pid, c in zip(nodes, cpu0, strict=True)]
    return clients * size / elapsed / 1e6, busy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists() or not shutil.which("curl"):
        print("needs haproxy and curl", file=sys.stderr)
        return 2
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="ftps-fleet-bench-", dir=shm))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cert, key = _cert(work)
        home = work / "storage" / USER
        home.mkdir(parents=True)
        size = args.size_mib * 2**20
        with (home / "file.bin").open("wb") as f:
            block = os.urandom(2**20)
            for _ in range(args.size_mib):
                f.write(block)
        password = secrets.token_urlsafe(12)
        node_port = _free_port(NODES["node1"])
        first = _free_range(PASSIVE_SIZE * len(NODES))
        for index, (name, address) in enumerate(sorted(NODES.items())):
            low = first + index * PASSIVE_SIZE
            passive = f"{low}-{low + PASSIVE_SIZE - 1}"
            procs.append(_start_node(work, name, address, node_port, passive, cert, key, password))
        port_one, port_two = _free_port(VIP), _free_port(VIP)
        config = work / "haproxy.cfg"
        config.write_text(_haproxy_config(node_port, port_one, port_two, first))
        check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stdout}{check.stderr}")
        procs.append(
            subprocess.Popen(
                [haproxy, "-db", "-f", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=(work / "haproxy.log").open("wb"),
            )
        )
        _wait_port(VIP, port_two)
        urls = {
            "1 node": f"ftp://{VIP}:{port_one}/file.bin",
            "2 nodes": f"ftp://{VIP}:{port_two}/file.bin",
        }
        pids = [p.pid for p in procs[: len(NODES)]]
        _round(urls["2 nodes"], cert, password, args.clients, size, pids)  # warm-up
        results: dict[str, list[float]] = {name: [] for name in urls}
        busy: dict[str, list[list[float]]] = {name: [] for name in urls}
        for n in range(args.rounds):
            for name, url in urls.items():
                rate, cpu = _round(url, cert, password, args.clients, size, pids)
                results[name].append(rate)
                busy[name].append(cpu)
            print(
                f"round {n + 1}/{args.rounds}: "
                + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()),
                file=sys.stderr,
            )
        one = statistics.median(results["1 node"])
        two = statistics.median(results["2 nodes"])

        def node_cpu(name: str) -> str:
            per_node = zip(*busy[name], strict=True)
            return " / ".join(f"{statistics.median(c) * 100:.0f}%" for c in per_node)

        print(
            f"\nTLS downloads through one HAProxy, {args.clients} clients at once x "
            f"{args.size_mib} MiB, medians of {args.rounds} alternating rounds, "
            f"{os.cpu_count()} CPUs"
        )
        print(f"load average before: {load}")
        print("| backend | aggregate MB/s | ratio | node1 / node2 CPU (of one core) |")
        print("|---|---|---|---|")
        print(f"| 1 node | {one:.0f} | 1.00x | {node_cpu('1 node')} |")
        print(f"| 2 nodes | {two:.0f} | {two / one:.2f}x | {node_cpu('2 nodes')} |")
    except RuntimeError:
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
