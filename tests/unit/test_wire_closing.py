"""wire/closing.py: a connection this end closes is gone within CLOSE_GRACE, whatever
its peer does; nothing is armed before a close, nor left armed after it."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from studios_gateway.wire.closing import CLOSE_GRACE, abort_unless_gone, close_within
from tests.support.stuck_socket import StuckSocket


class Lost(Protocol):
    def __init__(self) -> None:
        self.reasons: list[Any] = []

    def connectionLost(self, reason: Any = None) -> None:
        self.reasons.append(reason)


class Layer:
    """A wrapper (as a TLS layer is) over another transport."""

    def __init__(self, transport: Any):
        self.transport = transport

    def loseConnection(self) -> None:
        self.transport.loseConnection()


def logged(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.info]


def test_a_peer_that_reads_nothing_is_reset_after_the_grace() -> None:
    clock = MemoryReactorClock()
    sock = StuckSocket(clock)
    proto = sock.connect(Lost())
    sock.write(b"x" * 100_000)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        close_within(Layer(sock), clock, "tunnel to the studio")
        clock.advance(CLOSE_GRACE - 0.1)
        assert not sock.aborted and sock.disconnecting  # the close waits, for ever
        clock.advance(0.1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sock.aborted and sock.disconnected and len(proto.reasons) == 1
    assert not clock.getDelayedCalls()
    [line] = [t for t in logged(events) if "resetting" in t]
    assert line.startswith("tunnel to the studio (192.0.2.9:4321): the peer took none of "
                           "the last 100000 bytes in 5s")


def test_a_connection_that_closes_in_time_leaves_no_timer() -> None:
    clock = MemoryReactorClock()
    sock = StuckSocket(clock)
    sock.connect(Lost())
    close_within(sock, clock, "HTTP connection")
    abort_unless_gone(sock, clock, "HTTP connection")  # a second close: the same deadline
    assert len(clock.getDelayedCalls()) == 1
    sock.connectionLost(None)  # (the peer took everything; the socket closed)
    assert not clock.getDelayedCalls() and "connectionLost" not in vars(sock)
    clock.advance(CLOSE_GRACE)
    assert not sock.aborted


def test_nothing_is_armed_without_a_socket_under_the_transport() -> None:
    clock = MemoryReactorClock()
    t = StringTransport()
    close_within(t, clock, "stream")
    assert t.disconnecting and not clock.getDelayedCalls()


class SlowSocket(StuckSocket):
    """A peer that takes `rate` bytes each time the socket may write (a slow reader)."""

    rate = 0

    def writeSomeData(self, data: bytes) -> int:
        return min(len(data), self.rate)


def test_a_peer_still_taking_the_bytes_gets_more_time_and_one_that_stops_is_reset() -> None:
    """A slow reader (a browser on a poor link) is not cut off at the end of its answer:
    each grace in which it took some of the bytes buys another; once it takes none in
    one, it is reset."""
    clock = MemoryReactorClock()
    sock = SlowSocket(clock)
    sock.connect(Lost())
    sock.write(b"x" * 100_000)
    close_within(sock, clock, "HTTP connection")
    for _ in range(5):  # 1,000 bytes a grace: far slower than the grace would allow
        sock.rate = 1_000
        sock.doWrite()
        clock.advance(CLOSE_GRACE)
        assert not sock.aborted, "a peer still reading was reset"
    sock.rate = 0  # it stops reading
    clock.advance(CLOSE_GRACE)
    assert sock.aborted and not clock.getDelayedCalls()
