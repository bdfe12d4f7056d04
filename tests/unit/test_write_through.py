"""sockopts.write_through on a real TCP connection pair (no reactor running)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from studios_gateway.wire.sockopts import one_send_per_read, write_through


class Bare(tcp.Connection):
    """A Twisted TCP transport on one end of a socketpair, outside any reactor."""

    def __init__(self, sock: socket.socket) -> None:
        self.reactor: Any = self
        super().__init__(sock, None, self)
        self.connected = 1
        self.writing = 0

    def addWriter(self, _: Any) -> None:
        self.writing = 1

    def removeWriter(self, _: Any) -> None:
        self.writing = 0

    def addReader(self, _: Any) -> None:
        pass

    def removeReader(self, _: Any) -> None:
        pass

    def getHandle(self) -> Any:
        return self.socket


def pair() -> tuple[Bare, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return Bare(a), b


def test_sends_at_once_when_nothing_is_queued_and_queues_otherwise() -> None:
    t, peer = pair()
    write_through(t)
    t.write(b"hello")
    assert peer.recv(100) == b"hello" and not t.writing and not t._tempDataLen
    t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = b"x" * (1 << 20)
    t.write(big)  # partly sent; the rest waits for the reactor's turn
    assert t.writing and 0 < t._tempDataLen < len(big)
    t.write(b"after")  # queued behind it, never ahead
    got = b""
    while t.writing or t._tempDataLen or t.offset < len(t.dataBuffer):
        t.doWrite()
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            pass
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            break
        got += chunk
    assert len(got) == len(big) + 5 and got.endswith(b"after")
    t.socket.close()
    peer.close()


def test_after_lose_connection_writes_go_through_the_queue() -> None:
    t, peer = pair()
    write_through(t)
    t.loseConnection()
    t.write(b"late")
    assert t._tempDataLen == 4
    t.socket.close()
    peer.close()


class _Answering(Protocol):
    """Answers each read with three writes, noting what the peer had by then."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self.seen_meanwhile: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        for part in (b"a-" + data, b"b-" + data, b"c-" + data):
            self.transport.write(part)
            self.seen_meanwhile.append(_drain(self.peer))


def _drain(s: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def test_one_send_per_read_holds_a_reads_writes_until_it_is_handled() -> None:
    t, peer = pair()
    write_through(t)
    one_send_per_read(t)
    one_send_per_read(t)  # once only
    proto = _Answering(peer)
    t.protocol = proto
    proto.makeConnection(t)
    t._dataReceived(b"1")
    assert proto.seen_meanwhile == [b"", b"", b""]
    assert _drain(peer) == b"a-1b-1c-1" and not t._tempDataLen
    t.write(b"outside")  # not in a read's handling: at once
    assert _drain(peer) == b"outside"
    t._dataReceived(b"2")
    assert _drain(peer) == b"a-2b-2c-2"
    t.socket.close()
    peer.close()
