#!/usr/bin/env python3
"""What a SHA-256 of every upload costs: TLS upload MB/s with and without it, same run (by hand).

Two ftps-server processes on loopback, identical but for `[log] upload_digest` (`none` in
the first, `sha256` in the second: every chunk the data handler stores is also fed to
`checksums.StreamDigest`). curl uploads to both, alternating (A B A B ...) so drift on a noisy
machine hits both; medians are shown.
A standalone line gives the digest's own speed over the same 256 KiB memoryview chunks.

    python3 bench/upload_digest.py [--size-mib 256] [--runs 3] [--vsftpd]

Needs no root: the file lives on /dev/shm when there is one, nothing is installed. With
`--vsftpd` (as root; see tls_throughput.py, which it borrows from) vsftpd takes its turn in
the same alternation, so the performance issue's target -- server CPU per GiB uploaded at most
0.45x vsftpd's -- is checked with the digest on, in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from tls_throughput import (  # noqa: E402
    BENCH_USER,
    Server,
    _cert,
    measure,
    start_ftps_server,
    start_vsftpd,
    workspace,
)

from ftps_server.checksums import StreamDigest  # noqa: E402

CHUNK = 256 * 1024  # the data handler's read size (data_channel._BULK)


def start(
    work: Path, name: str, cert: Path, key: Path, home: Path, port: int, passive: str
) -> Server:
    """ftps-server with `[log] upload_digest = NAME` (none or sha256), default password hash."""
    return start_ftps_server(
        work,
        cert,
        key,
        home,
        port,
        {"passive_ports": passive},
        name=name,
        extra_config=f"[log]\nupload_digest = {name}\n",
    )


def digest_alone(src: Path) -> float:
    """MB/s of StreamDigest over the file in the data handler's chunk size, in memory."""
    data = src.read_bytes()[: 256 * 2**20]
    view = memoryview(data)
    t0 = time.perf_counter()
    digest = StreamDigest()
    for i in range(0, len(data), CHUNK):
        digest.update(view[i : i + CHUNK])
    elapsed = time.perf_counter() - t0
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    return len(data) / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vsftpd", action="store_true", help="vsftpd in the same run (root)")
    args = parser.parse_args()
    work, home = workspace("ftps-digest-bench-", args.size_mib, BENCH_USER)
    servers: list[Server] = []
    try:
        cert, key = _cert(work)
        size = args.size_mib * 2**20
        src = home / "file.bin"
        servers = [
            start(work, "none", cert, key, home, 41980, "41000-41099"),
            start(work, "sha256", cert, key, home, 41981, "41100-41199"),
        ]
        if args.vsftpd:
            servers.append(start_vsftpd(work, cert, key, home, 41982))
            shutil.chown(home, BENCH_USER)
            src.chmod(0o666)
            home.chmod(0o777)
        results: dict[str, list[tuple[float, float]]] = {}
        for run in range(args.runs):
            for server in servers:
                results.setdefault(server.name, []).append(
                    measure(server, cert, "upload", size, src)
                )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        alone = digest_alone(src)
        for server in servers[:2]:  # the digest was really on (and off): the entries say
            has_digest = "SHA256=" in (work / f"{server.name}.log").read_text()
            if has_digest != (server.name == "sha256"):
                raise RuntimeError(f"server {server.name}: SHA256 field present: {has_digest}")
    except RuntimeError:
        for log in work.glob("*.log"):
            print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nTLS upload, {args.size_mib} MiB, curl, medians of {args.runs} alternating runs")
    print("| server, upload digest | MB/s | server CPU s/GiB |\n|---|---|---|")
    cpu = {}
    for name in results:
        mbs = statistics.median(r[0] for r in results[name])
        cpu[name] = statistics.median(r[1] for r in results[name])
        label = name if name == "vsftpd" else f"ftps-server, {name}"
        print(f"| {label} | {mbs:.0f} | {cpu[name]:.2f} |")
    if "vsftpd" in cpu:
        for name in ("none", "sha256"):
            ratio = cpu[name] / cpu["vsftpd"]
            verdict = "holds" if ratio <= 0.45 else "MISSED"
            print(f"upload CPU/GiB {name} vs vsftpd: {ratio:.2f}x (target <= 0.45x: {verdict})")
    print(f"\nStreamDigest alone (SHA-256, {CHUNK // 1024} KiB memoryviews): {alone:.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
