"""Join two byte streams (a tunnel stream and a TCP connection, say) with backpressure.

Each side's transport is registered as the streaming producer of the other,
so a slow reader on one side pauses the writer on the other; nothing is
buffered here beyond what arrives before the second side connects (held
while the first side is paused). Half-close passes through: EOF read on one
side becomes a write shutdown on the other, so `scp` and uploads see their
end of file.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


def _shutdown_write(transport: Any) -> None:
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class SpliceEnd(Protocol):
    """One end of a splice. Connect two with :func:`join`."""

    # Set by makeConnection: a TCP connection or a tunnel stream, each a consumer that is
    # also a producer (join registers each end's transport as the other's producer).
    transport: Any
    #: Once joined, each read goes straight to the peer transport's ``write``: ``join``
    #: binds that as this end's ``dataReceived`` (an instance attribute shadowing the
    #: method), one call per read instead of three. Only for ends whose ``dataReceived``
    #: does nothing else once joined, and whose peer's transport keeps its ``write``.
    direct = False

    def __init__(self) -> None:
        self.peer: SpliceEnd | None = None
        self._pending: list[bytes] = []
        self._read_closed = False
        self._write_closed = False
        self._lost = False
        self._peer_eof_pending = False

    # Before the peer exists, hold what arrives (the caller paused us).
    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self._pending.append(data)

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self.peer is not None and self.peer.transport is not None:
            _shutdown_write(self.peer.transport)
        else:
            self._peer_eof_pending = True
        self._maybe_close()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._read_closed and self._write_closed and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self.__dict__.pop("dataReceived", None)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer.__dict__.pop("dataReceived", None)
            if peer.transport is not None and not peer._lost:
                cast(IConsumer, peer.transport).unregisterProducer()
                peer.transport.loseConnection()

    def _attach(self, peer: SpliceEnd) -> None:
        self.peer = peer
        pending, self._pending = self._pending, []
        assert peer.transport is not None
        for chunk in pending:
            peer.transport.write(chunk)
        if self._peer_eof_pending:
            self._peer_eof_pending = False
            _shutdown_write(peer.transport)
        if self.direct:
            self.dataReceived = peer.transport.write  # type: ignore[method-assign]


def join(a: SpliceEnd, b: SpliceEnd) -> None:
    """Splice two connected ends: bytes flow both ways, each paced by the other."""
    assert a.transport is not None and b.transport is not None
    cast(IConsumer, a.transport).registerProducer(cast(IPushProducer, b.transport), True)
    cast(IConsumer, b.transport).registerProducer(cast(IPushProducer, a.transport), True)
    a._attach(b)
    b._attach(a)
    for end in (a, b):
        resume = getattr(end.transport, "resumeProducing", None)
        if resume is not None:
            resume()
    if a._lost:
        a.connectionLost()
    elif b._lost:
        b.connectionLost()
