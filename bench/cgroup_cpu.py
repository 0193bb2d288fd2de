"""Server CPU and memory counted over a cgroup per server (benches run by hand, as root).

A server's CPU read from `/proc/PID/stat` misses what matters for a forking or multi-process
server: vsftpd runs each session in processes of its own (their CPU reaches the parent's
`cutime` only once they are reaped), ftps-server's `workers` are live children, and nothing
counts grandchildren. A cgroup counts every process started in it, alive or gone.

`CpuGroup.create(name)` makes `/sys/fs/cgroup/unified/ftps-bench-NAME-PID` (cgroup v2; the
base `cpu.stat` needs no controller) or, where only cgroup v2 is mounted at /sys/fs/cgroup,
a directory there; it returns None when cgroups are not writable (not root), and the benches
fall back to /proc. Pass `group.enter` as `preexec_fn` so the server is inside before it
runs a line of its own. `remove()` waits for the group to empty and removes the directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


class CpuGroup:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str) -> CpuGroup | None:
        for root in _ROOTS:
            if not (root / "cgroup.procs").exists() or not (root / "cpu.stat").exists():
                continue
            path = root / f"ftps-bench-{name}-{os.getpid()}"
            try:
                path.mkdir()
            except FileExistsError:
                pass
            except OSError:
                return None
            return cls(path)
        return None

    def enter(self) -> None:
        """Move the calling process into the group (a `preexec_fn`)."""
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def cpu_seconds(self) -> float:
        """User + system CPU of every process that has run in the group."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        raise RuntimeError(f"{self.path}/cpu.stat has no usage_usec")

    def pids(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text()
        return [int(p) for p in text.split()]

    def memory_kib(self) -> tuple[int, int]:
        """(RSS, PSS) summed over the group's processes, KiB. PSS shares pages mapped by
        several processes among them, so it is the fair figure for a forking server."""
        rss = pss = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        return rss, pss

    def remove(self, timeout: float = 10.0) -> None:
        """Remove the group once its processes are gone (the caller stops them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.2)
