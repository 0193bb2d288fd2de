"""The client matrix (tests/matrix) as a test: real clients against a real server.

What must hold today: the clients that resume sessions on their own (curl, Python ftplib with
session reuse, Node basic-ftp when installed) work in every mode and TLS version, and no client
is ever told an upload worked while the file on the server differs (the silent truncation of
issue 18). The full table, with the cells that fail for known reasons, is docs/clients.md,
regenerated with `python3 -m tests.matrix`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.matrix.clients import CLIENTS
from tests.matrix.run import Result, render, run_matrix

MUST_WORK = ("curl", "Python ftplib", "Node basic-ftp")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Result]:
    installed = tuple(c for c in CLIENTS if c.name != "rclone" or shutil.which("rclone"))
    return run_matrix(installed, tmp_path_factory.mktemp("matrix"), verbose=False)


def test_clients_that_resume_sessions_work_in_every_mode(results: list[Result]) -> None:
    failures = [
        f"{r.client.name} {r.mode} TLS {r.tls}: {r.outcome.errors} {r.negotiated!r}"
        for r in results
        if r.client.name in MUST_WORK
        and not r.outcome.skipped
        and not r.passed
    ]
    assert not failures, failures
    ran = {r.client.name for r in results if not r.outcome.skipped}
    assert {"curl", "Python ftplib"} <= ran


def test_no_client_is_told_an_upload_worked_when_the_file_differs(results: list[Result]) -> None:
    lies = [
        f"{r.client.name} {r.mode} TLS {r.tls}"
        for r in results
        if r.outcome.steps.get("upload") and not r.upload_exact
    ]
    assert not lies, lies


def test_every_cell_is_a_row_of_the_document(results: list[Result]) -> None:
    text = render(results, 1.0)
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | 1." in line]
    assert len(rows) >= len(results)
    assert "not tested here" in text  # FileZilla/WinSCP from vendor docs
    for r in results:
        assert f"| {r.client.name} | {r.mode} | {r.tls} |" in text
