"""The tunnel's TCP segment size: small after an attempt that stalled before its bind
(a path MTU black hole), announced in the SYN of the next connection."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock

from studios_gateway.studio.segments import SMALL_MSS, ClampedTCP, SegmentSize
from studios_gateway.wire.sockopts import TCP_RTO_MAX_MS, TUNNEL_RTO_MAX_MS


def test_a_stalled_attempt_makes_the_next_one_use_the_other_size() -> None:
    sizes = SegmentSize()
    assert sizes.mss is None  # the path's own at first
    sizes.stalled()
    assert sizes.mss == SMALL_MSS
    assert sizes.bound() is True  # small segments bound where full ones stalled: said
    assert sizes.mss == SMALL_MSS  # and kept
    sizes.stalled()  # a stall with small ones too (a gateway that was away): full again
    assert sizes.mss is None
    assert sizes.bound() is False
    sizes.stalled()
    assert (sizes.mss, sizes.bound()) == (SMALL_MSS, False)  # said once per process


def test_a_bind_with_the_paths_own_size_is_nothing_to_say() -> None:
    sizes = SegmentSize()
    assert sizes.bound() is False
    sizes.stalled()
    sizes.stalled()
    assert (sizes.mss, sizes.bound()) == (None, False)


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
