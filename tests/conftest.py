"""Fixtures shared by every test directory: a PKI made at test time and real server processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import secret_scan
import support


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    """One CA for the session; leaf certificates are made per test as needed."""
    return support.Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., support.ServerProcess]]:
    """Start `ftps-server serve` on a config file; every server is stopped at teardown."""
    started: list[support.ServerProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> support.ServerProcess:
        server = support.ServerProcess(config, tmp_path, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- no secret in anything the suite produced --------------------------------------------
# A session-end check rather than a last test: it sees every test that ran whatever was
# selected (-k, a single file, a re-run), it cannot be ordered before the tests it checks,
# and it reads the captured output of every test, which a test cannot. It fails the run.

_captured: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, text in report.sections:
        _captured.append((f"{report.nodeid} [{name}]", text))
    if report.failed:
        _captured.append((f"{report.nodeid} [failure report]", report.longreprtext))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    root = factory.getbasetemp() if factory is not None else None
    secrets = secret_scan.gather_secrets(root)
    findings = secret_scan.scan_texts(_captured, secrets)
    if root is not None:
        findings += secret_scan.scan_files(root, secrets)
    if not findings:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "secrets found in test output and files", red=True)
        for finding in findings[:50]:
            reporter.write_line(str(finding))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
