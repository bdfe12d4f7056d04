"""The tunnel's TCP segment size: small after an attempt that stalled before its bind
(a path MTU black hole), announced in the SYN of the next connection."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from studios_gateway.studio.segments import (
    SMALL_MSS,
    SURE_AFTER,
    SURE_FOR,
    ClampedTCP,
    SegmentSize,
)
from studios_gateway.wire.sockopts import TCP_RTO_MAX_MS, TUNNEL_RTO_MAX_MS


def test_a_stalled_attempt_makes_the_next_one_use_the_other_size() -> None:
    sizes = SegmentSize()
    assert sizes.mss is None  # the path's own at first
    sizes.stalled()
    assert sizes.mss == SMALL_MSS
    sizes.stalled()  # a stall with small ones too (a gateway that was away): full again
    assert sizes.mss is None
    assert sizes.bound() is None  # full-size segments bound: nothing to say


def test_one_small_bind_after_a_stall_is_kept_for_that_tunnel_only() -> None:
    """A gateway too busy to finish handshakes stalls an attempt as a black hole does:
    the tunnel that bound with small segments keeps them (they are the connection's),
    and the next connection tries the path's own size again."""
    sizes = SegmentSize()
    sizes.stalled()
    assert sizes.mss == SMALL_MSS
    assert sizes.bound() == 1  # said: may be a black hole, or a busy gateway
    assert sizes.mss is None and not sizes.sure  # the next connection: the path's own
    assert sizes.bound() is None  # it bound: a sound path, nothing more to say
    assert sizes.small_binds == 0
    sizes.stalled()  # another busy moment later: again once, not "sure"
    assert sizes.bound() == 1 and sizes.mss is None and not sizes.sure


def test_twice_in_a_row_the_client_keeps_small_segments() -> None:
    sizes = SegmentSize()
    sizes.stalled()
    assert sizes.bound() == 1 and sizes.mss is None
    sizes.stalled()  # the path's own size stalls again at the next connection
    assert sizes.mss == SMALL_MSS
    assert sizes.bound() == SURE_AFTER and sizes.sure
    assert sizes.mss == SMALL_MSS  # kept (for SURE_FOR: below)
    assert sizes.bound() is None  # said once
    sizes.stalled()  # a small attempt stalls (the gateway away): small ones still
    assert sizes.mss == SMALL_MSS
    assert sizes.bound() is None


def test_what_the_attempts_said_is_kept_per_gateway() -> None:
    """A stalled attempt moves on to the next gateway listed: its small bind there says
    nothing of the first one's path (review52)."""
    sizes = SegmentSize()
    sizes.toward("a")
    assert sizes.mss is None
    sizes.stalled("a")  # a ends the attempt before its bind
    sizes.toward("b")
    assert sizes.mss is None  # b's path: its own size
    assert sizes.bound("b") is None  # bound with full-size segments: nothing to say
    sizes.toward("a")
    assert sizes.mss == SMALL_MSS  # a's next attempt: small
    sizes.stalled("a")  # ends again (small too: not the packets' size)
    sizes.toward("b")
    assert sizes.bound("b") is None and not sizes.sure
    sizes.toward("a")
    assert sizes.mss is None


def test_a_black_hole_is_tried_again_after_sure_for() -> None:
    """Taken for a black hole, a path keeps small segments for SURE_FOR; its next
    connection after that tries full-size ones once more (a studio on a sound path that
    a busy gateway stalled at two restarts in a row gets its size back)."""
    clock = Clock()
    sizes = SegmentSize(clock)
    sizes.toward("a")
    sizes.stalled("a")
    assert sizes.bound("a") == 1
    sizes.toward("a")
    sizes.stalled("a")
    assert sizes.bound("a") == SURE_AFTER and sizes.sure
    clock.advance(SURE_FOR - 1)
    sizes.toward("a")
    assert sizes.mss == SMALL_MSS  # still small
    clock.advance(1)
    sizes.toward("a")
    assert sizes.mss is None and not sizes.sure  # full size once more
    assert sizes.bound("a") is None and sizes.small_binds == 0  # a sound path: forgotten


def test_a_real_black_hole_is_taken_for_one_again_at_once_after_sure_for() -> None:
    clock = Clock()
    sizes = SegmentSize(clock)
    for _ in range(SURE_AFTER):
        sizes.toward("a")
        sizes.stalled("a")
        sizes.bound("a")
    assert sizes.sure
    clock.advance(SURE_FOR)
    sizes.toward("a")
    assert sizes.mss is None  # tried once more ...
    sizes.stalled("a")  # ... it stalls: small again, and sure again with that bind
    assert sizes.mss == SMALL_MSS
    assert sizes.bound("a") == SURE_AFTER and sizes.sure
    sizes.toward("a")
    assert sizes.mss == SMALL_MSS


def test_a_stall_with_small_segments_then_a_bind_with_full_ones_is_nothing_to_say() -> None:
    sizes = SegmentSize()
    assert sizes.bound() is None
    sizes.stalled()
    sizes.stalled()
    assert (sizes.mss, sizes.bound()) == (None, None)


def test_a_connection_made_in_small_mode_announces_small_segments() -> None:
    """The SYN carries the size: the gateway's end of the connection sends no more.
    Every connection's SYNs are at most 2 s apart."""
    sizes = SegmentSize()
    tcp = ClampedTCP(reactor, sizes)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        full = tcp.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(Protocol), 5)
        sizes.stalled()
        small = tcp.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(Protocol), 5)
        try:
            # Before the connect, the socket reports the size it will announce.
            assert small.transport.socket.getsockopt(socket.IPPROTO_TCP,
                                                     socket.TCP_MAXSEG) == SMALL_MSS
            assert full.transport.socket.getsockopt(socket.IPPROTO_TCP,
                                                    socket.TCP_MAXSEG) != SMALL_MSS
            # Either way its SYNs are at most 2 s apart (the kernel's: 1, 2, 4 ... s).
            for connector in (full, small):
                assert connector.transport.socket.getsockopt(
                    socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == TUNNEL_RTO_MAX_MS
            # Connected (the kernel does it; no reactor turn needed for a blocking peer):
            small.transport.socket.setblocking(True)
            small.transport.socket.connect(("127.0.0.1", port))
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) <= SMALL_MSS
        finally:
            for connector in (full, small):
                connector.stopConnecting()


def test_everything_else_is_the_reactors_own() -> None:
    clock = MemoryReactorClock()
    tcp = ClampedTCP(clock, SegmentSize())
    tcp.callLater(1, lambda: None)
    assert len(clock.getDelayedCalls()) == 1
    tcp.connectTCP("127.0.0.1", 1, ClientFactory.forProtocol(Protocol), 5)
    assert clock.tcpClients[0][:2] == ("127.0.0.1", 1)
