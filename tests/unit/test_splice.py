"""wire.splice: two ends joined, each read written to the other end's transport."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from studios_gateway.wire.splice import SpliceEnd, join


class Pipe:
    """A transport that records writes, half-closes and the producer calls it gets."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.write_closed = False
        self.lost = False
        self.paused = 0
        self.resumed = 0

    def write(self, data: bytes) -> None:
        assert not self.lost and not self.write_closed, "write after the end"
        self.written.append(data)

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def loseConnection(self) -> None:
        self.lost = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1


class Direct(SpliceEnd):
    direct = True


def joined(kind: type[SpliceEnd]) -> tuple[SpliceEnd, Pipe, SpliceEnd, Pipe]:
    a, b = kind(), kind()
    ta, tb = Pipe(), Pipe()
    a.makeConnection(ta)
    b.makeConnection(tb)
    return a, ta, b, tb


def test_reads_before_the_join_are_held_and_every_read_after_it_passes_through() -> None:
    for kind in (SpliceEnd, Direct):
        a, ta, b, tb = joined(kind)
        a.dataReceived(b"early")
        b.readConnectionLost()  # EOF before the join: the other side's write closes at it
        join(a, b)
        assert tb.written == [b"early"] and ta.write_closed
        assert ta.producer is tb and tb.producer is ta and ta.resumed == tb.resumed == 1
        a.dataReceived(b"one")
        a.dataReceived(b"two")
        assert tb.written == [b"early", b"one", b"two"], kind


def test_a_direct_end_reads_straight_into_its_peers_write_and_not_after_the_peer_went() -> None:
    a, ta, b, tb = joined(Direct)
    join(a, b)
    assert a.dataReceived == tb.write and b.dataReceived == ta.write  # one call per read
    b.connectionLost(Failure(ConnectionDone()))
    assert ta.lost and ta.producer is None
    a.dataReceived(b"late")  # the peer's transport is gone: nothing is written to it
    b.dataReceived(b"late")
    assert tb.written == [] and ta.written == []


def test_half_close_passes_through_and_both_halves_closed_end_the_connection() -> None:
    a, ta, b, tb = joined(Direct)
    join(a, b)
    a.readConnectionLost()
    assert tb.write_closed and not ta.lost
    b.dataReceived(b"answer")  # the other way still flows
    assert ta.written == [b"answer"]
    a.writeConnectionLost()
    assert ta.lost
