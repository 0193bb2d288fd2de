"""`[metrics] listen` parsing and the bounded labels of ftps_server.server.metrics (issue 14.3).

The figures themselves are scraped from the real server in tests/integration/test_metrics_serve.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftps_server.config.loader import load
from ftps_server.errors import ConfigError
from ftps_server.server import metrics


def config_with(tmp_path: Path, listen: str) -> Path:
    path = tmp_path / "ftps-server.ini"
    path.write_text(f"[metrics]\nlisten = {listen}\n")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9101", ("127.0.0.1", 9101)),
        ("[::1]:9101", ("::1", 9101)),
        ("", None),
    ],
)
def test_listen_is_address_and_port_or_off(
    tmp_path: Path, text: str, expected: tuple[str, int] | None
) -> None:
    assert load(config_with(tmp_path, text)).metrics.listen == expected


def test_listen_default_is_off(tmp_path: Path) -> None:
    path = tmp_path / "ftps-server.ini"
    path.write_text("[server]\n")
    assert load(path).metrics.listen is None


@pytest.mark.parametrize(
    "text", ["9101", "localhost:9101", "127.0.0.1:0", "127.0.0.1:70000", "::1:9101", "1.2.3:9"]
)
def test_bad_listen_names_file_section_and_key(tmp_path: Path, text: str) -> None:
    path = config_with(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert f"{path} [metrics] listen" in str(exc.value)


def test_unknown_metrics_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ftps-server.ini"
    path.write_text("[metrics]\nport = 9101\n")
    with pytest.raises(ConfigError, match=r"\[metrics\] port"):
        load(path)


def test_handshake_reasons_are_bounded_labels() -> None:
    label = metrics.reason_label
    assert label("certificate verify failed: unable to get local issuer certificate") == (
        "certificate verify failed"
    )
    assert label("http request") == "http request"
    assert label("tlsv13 alert certificate required") == "tlsv13 alert certificate required"
    # a flood of distinct reasons cannot grow the label set without bound
    seen = {label(f"reason {'x' * n}: detail") for n in range(200)}
    assert "other" in seen and len(seen) <= 33


def test_without_prometheus_client_hooks_do_nothing_and_listen_is_reported() -> None:
    """The extra is optional: the server must run without it and say why nothing is served."""
    import subprocess
    import sys

    code = """
import logging, sys, types
sys.modules["prometheus_client"] = None  # as if not installed
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
from ftps_server.server import metrics
assert not metrics.available()
metrics.login("ok", "password"); metrics.ban(); metrics.transferred(True, 5)
metrics.handshake_failed("http request", "control")
config = types.SimpleNamespace(metrics=types.SimpleNamespace(listen=("127.0.0.1", 9101)))
metrics.listeners_applied(None, types.SimpleNamespace(config=config))
"""
    root = str(Path(__file__).parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("CRITICAL [metrics] listen is set but prometheus_client is not")
