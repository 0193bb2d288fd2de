"""Accepting a burst of connections: up to the bound per readiness event, the rest next time."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ftps_server.server.listeners import ACCEPT_BATCH, pending_connections


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connect(listener: socket.socket, count: int) -> list[socket.socket]:
    clients = [socket.create_connection(listener.getsockname()[:2], 5) for _ in range(count)]
    # the kernel completes each handshake before connect() returns: all are queued now
    return clients


def test_every_queued_connection_is_taken_in_one_call(listener: socket.socket) -> None:
    clients = _connect(listener, 7)
    taken = list(pending_connections(listener, ACCEPT_BATCH))
    assert len(taken) == 7
    assert sorted(addr[1] for _, addr in taken) == sorted(c.getsockname()[1] for c in clients)
    assert all(not conn.getblocking() for conn, _ in taken)
    for conn, _ in taken:
        conn.close()
    for client in clients:
        client.close()


def test_the_bound_leaves_the_rest_for_the_next_event(listener: socket.socket) -> None:
    clients = _connect(listener, 5)
    first = list(pending_connections(listener, 3))
    second = list(pending_connections(listener, 3))
    third = list(pending_connections(listener, 3))
    assert (len(first), len(second), len(third)) == (3, 2, 0)
    for conn, _ in first + second:
        conn.close()
    for client in clients:
        client.close()


def test_an_empty_queue_yields_nothing(listener: socket.socket) -> None:
    assert list(pending_connections(listener, ACCEPT_BATCH)) == []
