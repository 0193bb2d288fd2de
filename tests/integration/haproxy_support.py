"""A real HAProxy (Debian's `haproxy`) on loopback, started and stopped by PID by the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import support


def need_haproxy() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if path is None:
        pytest.skip("haproxy not installed (Debian package haproxy)")
    return path


GLOBAL = """
global
    log stderr format short local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""


def _bound(address: tuple[str, int]) -> bool:
    """True when something listens on `address` (without connecting: that would be proxied)."""
    with socket.socket() as probe:
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


class Haproxy:
    """`haproxy -db -f CONFIG` in the foreground; `stop()` sends SIGTERM to its PID only."""

    def __init__(self, workdir: Path, config: str, wait_for: list[tuple[str, int]]) -> None:
        self.binary = need_haproxy()
        self.config = workdir / f"haproxy-{time.monotonic_ns()}.cfg"
        self.config.write_text(GLOBAL + config)
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.log_path = self.config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        for address in wait_for:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited {self.proc.returncode}: {self.log()}")
                if _bound(address):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"haproxy does not listen on {address}: {self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        support.stop_process(self.proc)
        self._log.close()
