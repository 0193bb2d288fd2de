"""Fixtures shared by every test directory: a PKI made at test time and real server processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

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
