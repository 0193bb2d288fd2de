"""The tests' port picker: two listeners of one config must never get the same port."""

from __future__ import annotations

import support


def test_free_port_never_hands_out_a_port_twice() -> None:
    # the kernel picks bind(0) ports at random from ~28,000: 300 picks repeat one about four
    # times in five, which is how two listeners of one test config once got the same port
    ports = [support.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port <= 65535 for port in ports)
