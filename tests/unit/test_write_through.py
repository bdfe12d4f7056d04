"""sockopts.write_through on a real TCP connection pair (no reactor running)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from studios_gateway.wire.sockopts import write_through


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



class Port:
    """Like Twisted's tcp.Port: makes each accepted connection with ``transport``."""

    transport: type


class Accepted(Bare):
    def __init__(self, sock: socket.socket, port: Port) -> None:
        self.server = port
        super().__init__(sock)


def test_a_listeners_next_connections_write_through_from_birth() -> None:
    port = Port()
    port.transport = Accepted
    a, b = socket.socketpair()
    first = Accepted(a, port)
    write_through(first)
    made = port.transport
    assert issubclass(made, Accepted) and made is not Accepted
    assert type(first) is made and "write" not in vars(first)  # this one: its class changed
    c, d = socket.socketpair()
    for s in (c, d):
        s.setblocking(False)
    later = made(c, port)
    before = sorted(vars(later))
    write_through(later)
    assert sorted(vars(later)) == before and "write" not in before  # nothing added
    later.write(b"hello")
    assert d.recv(100) == b"hello" and not later.writing and not later._tempDataLen
    later.loseConnection()
    later.write(b"late")  # after loseConnection: through the queue, as before
    assert later._tempDataLen == 4
    for s in (a, b, c, d):
        s.close()


def test_a_fitted_connection_takes_a_write_after_it_was_lost() -> None:
    """A TLS layer flushes its close_notify from connectionLost, after Twisted dropped
    the transport's socket: the write is dropped, as Twisted's own is, not an
    AttributeError that stops the connection's cleanup (a gateway's drain then waited
    its whole timeout)."""
    port = Port()
    port.transport = Accepted
    a, b = socket.socketpair()
    write_through(Accepted(a, port))
    c, d = socket.socketpair()
    lost = port.transport(c, port)
    lost.protocol = Protocol()
    lost.connectionLost(Failure(error.ConnectionDone()))  # tcp.Connection: the socket goes
    assert not hasattr(lost, "socket")
    lost.write(b"close_notify")
    for s in (a, b, c, d):
        s.close()
