"""studios-gateway demo picks its own ports distinct from each other and from those given."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from studios_gateway.demo import run


def test_the_picked_ports_are_distinct_free_and_not_taken() -> None:
    ports = run._free_ports(3, {18080})
    assert len(set(ports)) == 3 and 18080 not in ports
    for port in ports:  # free: each can be bound
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_the_kernel_hands_out_twice_or_a_taken_one_is_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may give the same free port to two sockets asked one after the other
    (a demo failed on it: its SSH listener got the tunnel's port)."""
    handed = iter([52757, 52757, 18080, 40001, 40002])

    class Socket:
        def __init__(self) -> None:
            self.port = next(handed)

        def bind(self, address: Any) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def close(self) -> None:
            pass

    monkeypatch.setattr(run.socket, "socket", Socket)
    assert run._free_ports(3, {18080}) == [52757, 40001, 40002]
