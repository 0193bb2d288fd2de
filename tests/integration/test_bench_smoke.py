"""The benches in bench/ still run (tiny sizes, one run): they are run by hand, so nothing
else would notice a bench broken by a change in the server or in tests/support.py.

Nothing here is timed: the figures they print are not checked, only that they finish with no
failed session or download and print their tables (the sink client checks the server's 226
and the byte count itself and exits 1 otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the benches run as root (cgroups)")


def _bench(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_parallel_downloads_with_curl_and_sink_clients() -> None:
    out = _bench("bench/parallel_downloads.py", "--size-mib", "8", "--streams", "2", "--runs", "1")
    assert "(curl)" in out and "sink clients" in out
    rows = [line for line in out.splitlines() if line.startswith("| aggregate MB/s |")]
    assert len(rows) == 2 and all(float(cell) > 0 for row in rows for cell in row.split("|")[2:4])


def test_short_sessions() -> None:
    out = _bench("bench/short_sessions.py", "--sessions", "6", "--runs", "1")
    failed = next(line for line in out.splitlines() if line.startswith("| failed sessions"))
    assert set(failed.split("|")[2:-1]) == {" 0 "}, out


def test_many_clients() -> None:
    out = _bench("bench/many_clients.py", "--clients", "4", "--runs", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| now", "| pyftp"))]
    assert len(rows) == 2, out
    assert all(row[2].strip() == "0" and float(row[3]) > 0 for row in rows), out


def test_event_cpu_charges_each_command_in_both_servers() -> None:
    out = _bench("bench/event_cpu.py", "--sessions", "8", "--noops", "2", "--retrs", "1")
    cells = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    rows = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in cells}
    assert rows["what ran in the event"] == ["now", "pyftpdlib"], out
    for label in ("NOOP", "RETR", "PASV", "TLS handshake, data", "all loop events"):
        assert all(float(cell.split(" ")[0]) > 0 for cell in rows[label]), (label, out)
    # each NOOP came alone, in an event of its own, twice per session in both servers
    assert [cell.split(" ")[1] for cell in rows["NOOP"]] == ["(2.00)", "(2.00)"], out
