"""How much a Redis connection reads per readable event: 64 KiB, more while Redis has
more waiting than a read takes (registry/redis_link.py, READ_MIN and READ_MAX)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import tcp
from twisted.internet.task import Clock

from studios_gateway.registry.redis_link import READ_MAX, READ_MIN, _Heard


class Recorded:
    def __init__(self) -> None:
        self.got: list[int] = []

    def dataReceived(self, data: bytes, *more: Any) -> None:
        self.got.append(len(data))


class Protocol(_Heard, Recorded):
    pass


def connection(transport: Any) -> tuple[Protocol, Clock]:
    clock = Clock()
    p = Protocol()
    p.factory = SimpleNamespace(link=SimpleNamespace(heard=0.0,
                                                     owner=SimpleNamespace(clock=clock)))
    p.transport = transport
    return p, clock


def tcp_transport() -> tcp.Connection:
    t = tcp.Connection.__new__(tcp.Connection)  # what a TCP connection reads with only
    assert t.bufferSize == READ_MIN == 64 * 1024
    return t


def test_a_read_that_fills_the_buffer_makes_the_next_read_larger_up_to_the_most() -> None:
    t = tcp_transport()
    p, clock = connection(t)
    sizes = []
    for _ in range(5):  # a backlog of replies: every read comes back full
        p.dataReceived(b"+OK\r\n" * (t.bufferSize // 5 + 1))
        sizes.append(t.bufferSize)
    assert sizes == [256 * 1024, 1024 * 1024, READ_MAX, READ_MAX, READ_MAX]
    clock.advance(3)
    p.dataReceived(b"+OK\r\n")  # caught up: back to the usual size at once
    assert t.bufferSize == READ_MIN
    assert p.factory.link.heard == 3
    assert len(p.got) == 6  # every read handed on whole


def test_small_reads_leave_the_size_alone_and_tls_reads_are_not_touched() -> None:
    t = tcp_transport()
    p, _ = connection(t)
    for _ in range(3):
        p.dataReceived(b"$5\r\nhello\r\n")
    assert t.bufferSize == READ_MIN
    tls = SimpleNamespace(bufferSize=READ_MIN)  # the TLS layer (CONNECT_REDIS_TLS)
    q, _ = connection(tls)
    q.dataReceived(b"x" * READ_MIN)
    assert tls.bufferSize == READ_MIN
