"""[server] proxy_protocol and proxy_from: typed, validated, errors naming file/section/key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ftps_server.config.loader import load
from ftps_server.config.model import Config
from ftps_server.errors import ConfigError


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.ini"
    path.write_text(text)
    return load(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_default_is_off(tmp_path: Path) -> None:
    server = _load(tmp_path, "").server
    assert server.proxy_protocol is False and server.proxy_from == ()
    assert not server.is_proxy("127.0.0.1")


def test_networks_and_membership(tmp_path: Path) -> None:
    server = _load(
        tmp_path,
        "[server]\nproxy_protocol = yes\nproxy_from = 10.0.0.0/24, 192.0.2.7, 2001:db8::/64\n",
    ).server
    assert server.proxy_from == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    assert server.is_proxy("10.0.0.200") and server.is_proxy("192.0.2.7")
    assert server.is_proxy("2001:db8::5")
    assert not server.is_proxy("10.0.1.1") and not server.is_proxy("2001:db9::1")


def test_proxy_from_kept_while_switched_off(tmp_path: Path) -> None:
    # switching the balancer off for a while must not need the list deleted
    server = _load(tmp_path, "[server]\nproxy_protocol = no\nproxy_from = 10.0.0.1\n").server
    assert server.proxy_from and not server.is_proxy("10.0.0.1")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("proxy_protocol = yes\n", "proxy_from", "needs the balancers' addresses"),
        ("proxy_protocol = maybe\n", "proxy_protocol", "yes or no"),
        ("proxy_protocol = yes\nproxy_from = 10.0.0.5/24\n", "proxy_from", "'10.0.0.5/24'"),
        ("proxy_protocol = yes\nproxy_from = balancer.example\n", "proxy_from", "not an address"),
        ("proxy_protocol = yes\nproxy_from = 10.0.0.0/33\n", "proxy_from", "'10.0.0.0/33'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    message = _error(tmp_path, "[server]\n" + text)
    assert "[server]" in message and key in message and reason in message
    assert str(tmp_path / "c.ini") in message
