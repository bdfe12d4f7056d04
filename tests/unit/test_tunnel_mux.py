"""The yamux multiplexer: windows, backpressure, keepalive, drain, resets, half-close."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from studios_gateway.wire import frames
from studios_gateway.wire.closing import CLOSE_GRACE
from studios_gateway.wire.frames import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    INITIAL_WINDOW,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    Frame,
    FrameDecoder,
    ProtocolError,
)
from studios_gateway.wire.mux import (
    MAX_FRAMES_PER_TURN,
    MAX_UNREAD_ANSWERS,
    RESET_RELAYED,
    Keepalive,
    Multiplexer,
    TunnelLost,
    TunnelUnavailable,
    broke,
)
from studios_gateway.wire.stream import ReceiveWindow, SendWindow, Stream, StreamReset
from tests.support.stuck_socket import StuckSocket

KiB = 1024
MiB = 1024 * 1024


# Helpers -------------------------------------------------------------------------


class Collector(Protocol):
    """Records what a stream delivers."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        assert self.lost is None and not self.eof
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert self.lost is None, "connectionLost twice"
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloser(Collector):
    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        self.write_closed = True


@implementer(IPushProducer)
class Producer:
    """A streaming producer that records pause/resume."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        assert self.paused
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


def parse(raw: bytes) -> list[Frame]:
    return FrameDecoder(2**32 - 1).feed(raw)


def take(transport: StringTransport) -> list[Frame]:
    raw = transport.value()
    transport.clear()
    return parse(raw)


def test_gather_sends_a_turns_first_frame_at_once_and_the_rest_at_its_end() -> None:
    clock, mux, transport = counted_mux(gather=True)
    a, b, c = mux.open_stream(), mux.open_stream(), mux.open_stream()
    assert transport.writes == 1  # a's SYN: the turn's first send, at once
    for stream, request in ((a, b"GET /a"), (b, b"GET /b"), (c, b"GET /c")):
        stream.write(request)
    assert transport.writes == 1  # the rest of the turn waits for its end...
    clock.advance(0)
    assert transport.writes == 2  # ...and goes out in one send, in order
    assert [(f.type, f.stream_id, f.data) for f in parse(transport.value())] == [
        (WINDOW_UPDATE, 1, b""), (WINDOW_UPDATE, 3, b""), (WINDOW_UPDATE, 5, b""),
        (DATA, 1, b"GET /a"), (DATA, 3, b"GET /b"), (DATA, 5, b"GET /c")]
    a.write(b"next turn")  # a new turn: at once again
    assert transport.writes == 3 and transport.value().endswith(b"next turn")
    clock.advance(0)
    assert transport.writes == 3
    assert [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()] == []


def test_gather_lets_a_bulk_frame_and_what_waits_before_it_go_at_once() -> None:
    clock, mux, transport = counted_mux(gather=True, window_size=6 * MiB)
    stream = mux.open_stream()
    stream.write(b"small")
    assert transport.writes == 1
    stream.write(b"x" * 64 * KiB)  # one frame's worth: no holding it back
    assert transport.writes == 2
    assert [f.data[:5] for f in parse(transport.value())][1:] == [b"small", b"xxxxx"]


def test_gather_a_held_frame_goes_out_before_the_tunnel_closes() -> None:
    clock, mux, transport = counted_mux(gather=True)
    stream = mux.open_stream()
    stream.write(b"held")
    mux.close()
    assert [f.data for f in parse(transport.value())][-1] == b"held"
    assert transport.disconnecting and clock.getDelayedCalls() == []


def test_gather_keeps_an_opening_and_its_request_one_write_without_a_turn() -> None:
    clock, mux, transport = counted_mux(gather=True)
    stream = mux.open_stream(b"T")
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    assert transport.writes == 1 and len(parse(transport.value())) == 3


class TurnClock(Clock):
    """A fake clock with a reactor loop's doIteration: the multiplexer counts turns."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0

    def doIteration(self, timeout: float | None) -> None:
        self.polls += 1

    def next_turn(self) -> None:
        self.doIteration(None)

    def turn_ends(self) -> list[Any]:
        """The calls set for the end of this turn (not the keepalive's)."""
        return [c for c in self.getDelayedCalls() if c.getTime() <= self.seconds()]


def test_with_a_turn_counter_a_lone_frame_per_turn_sets_no_timer() -> None:
    clock = TurnClock()
    mux = Multiplexer(is_client=True, clock=clock, gather=True)
    transport = CountingTransport()
    mux.makeConnection(transport)
    stream = mux.open_stream(b"T")
    assert clock.turn_ends() != []  # the held opening waits for the turn's end...
    stream.write(b"GET /1")
    assert transport.writes == 1  # ...or, as here, for the request: one send
    clock.advance(0)
    for n in range(2, 5):  # one request per turn: each at once, and no timer set
        clock.next_turn()
        stream.write(b"GET /%d" % n)
        assert transport.writes == n and clock.turn_ends() == []
    assert clock.polls == 3  # the counter wraps the loop's own doIteration


def test_with_a_turn_counter_a_turns_later_frames_wait_for_its_end() -> None:
    clock = TurnClock()
    mux = Multiplexer(is_client=True, clock=clock, gather=True)
    transport = CountingTransport()
    mux.makeConnection(transport)
    a, b = mux.open_stream(), mux.open_stream()
    assert transport.writes == 1  # a's SYN at once, b's held for the turn's end
    clock.advance(0)
    assert transport.writes == 2
    clock.next_turn()
    a.write(b"a1")
    b.write(b"b1")
    a.write(b"a2")
    assert transport.writes == 3 and len(clock.turn_ends()) == 1
    clock.advance(0)
    assert transport.writes == 4
    assert [f.data for f in parse(transport.value()) if f.type == DATA] == [b"a1", b"b1", b"a2"]
    clock.next_turn()
    a.write(b"a3")
    assert transport.writes == 5 and clock.turn_ends() == []


def test_a_frame_written_before_the_polls_last_event_waits_for_the_others() -> None:
    """A poll that returned several events (several browsers' requests): the turn's
    first frame waits too while events of the same poll are still to come, and the
    frames go out in one write at the last one's frame, or at the turn's end."""
    from studios_gateway.wire.turns import turns_of

    clock = TurnClock()
    mux = Multiplexer(is_client=True, clock=clock, gather=True)
    transport = CountingTransport()
    mux.makeConnection(transport)
    turns = turns_of(clock)
    assert turns is not None
    a, b = mux.open_stream(), mux.open_stream()
    clock.advance(0)
    sent = transport.writes
    clock.next_turn()
    turns.more = 2  # the first of three events
    a.write(b"a1")
    turns.more = 1
    b.write(b"b1")
    assert transport.writes == sent and len(clock.turn_ends()) == 1
    turns.more = 0  # the last: its frame takes the held ones along
    a.write(b"a2")
    assert transport.writes == sent + 1
    assert [f.data for f in parse(transport.value()) if f.type == DATA] == [b"a1", b"b1", b"a2"]
    clock.advance(0)  # the turn's end: nothing left to send
    assert transport.writes == sent + 1
    clock.next_turn()
    turns.more = 1  # held, and the poll's last event writes nothing here: the turn's end
    b.write(b"b2")
    turns.more = 0
    assert transport.writes == sent + 1
    clock.advance(0)
    assert transport.writes == sent + 2
    clock.next_turn()
    b.write(b"b3")  # a poll of one event: at once, no timer
    assert transport.writes == sent + 3 and clock.turn_ends() == []


def test_the_turn_counter_wraps_again_after_someone_restores_the_loop() -> None:
    from studios_gateway.wire.turns import turns_of

    clock = TurnClock()
    original = clock.doIteration
    turns = turns_of(clock)
    assert turns is not None and turns_of(clock) is turns
    clock.next_turn()
    assert turns.n == 1
    clock.doIteration = original  # type: ignore[method-assign]  # e.g. metrics unwrapping
    clock.next_turn()
    assert turns.n == 1
    assert turns_of(clock) is turns
    clock.next_turn()
    assert turns.n == 2 and clock.polls == 3
    assert turns_of(Clock()) is None


class Link:
    """Two multiplexers joined by StringTransports; bytes move only when told to."""

    def __init__(self, clock: Clock | None = None, **kw: Any):
        self.clock = clock or Clock()
        self.accepted: dict[str, list[Stream]] = {"client": [], "server": []}
        self.protocols: dict[str, list[Collector]] = {"client": [], "server": []}
        self.go_aways: dict[str, list[int]] = {"client": [], "server": []}
        self.closes: dict[str, list[Failure]] = {"client": [], "server": []}
        self.t = {"client": StringTransport(), "server": StringTransport()}
        self.inflight = {"client": b"", "server": b""}  # written by that side, not yet read
        self.mux: dict[str, Multiplexer] = {}
        for side in ("client", "server"):
            self.mux[side] = Multiplexer(
                is_client=side == "client", clock=self.clock,
                on_stream=lambda s, side=side: self._accept(side, s),
                on_go_away=self.go_aways[side].append, on_close=self.closes[side].append,
                **kw)
            self.mux[side].makeConnection(self.t[side])

    @property
    def client(self) -> Multiplexer:
        return self.mux["client"]

    @property
    def server(self) -> Multiplexer:
        return self.mux["server"]

    def _accept(self, side: str, stream: Stream) -> Collector:
        self.accepted[side].append(stream)
        p = HalfCloser()
        self.protocols[side].append(p)
        return p

    def move(self, sender: str, limit: int | None = None) -> int:
        """Deliver up to ``limit`` bytes written by ``sender`` to the other side."""
        t = self.t[sender]
        self.inflight[sender] += t.value()
        t.clear()
        data = self.inflight[sender]
        n = len(data) if limit is None else min(limit, len(data))
        self.inflight[sender] = data[n:]
        if n:
            self.mux["server" if sender == "client" else "client"].dataReceived(data[:n])
        return n

    def pump(self) -> None:
        for _ in range(10_000):
            if not (self.move("client") + self.move("server")):
                return
        raise AssertionError("link never settled")


def open_pair(link: Link, opener: str = "client") -> tuple[Stream, Collector, Stream, Collector]:
    """Open a stream from ``opener``; returns (local stream, its protocol, remote, remote's)."""
    other = "server" if opener == "client" else "client"
    local = link.mux[opener].open_stream()
    mine = HalfCloser()
    local.attach(mine)
    link.pump()
    return local, mine, link.accepted[other][-1], link.protocols[other][-1]


# Plain objects -------------------------------------------------------------------


def test_send_window_takes_what_is_there_and_refuses_overflow() -> None:
    w = SendWindow()
    assert w.take(10) == 10 and w.available == INITIAL_WINDOW - 10
    assert w.take(10 * MiB) == INITIAL_WINDOW - 10 and w.available == 0
    assert w.take(5) == 0
    w.grant(100)
    assert w.available == 100
    with pytest.raises(ProtocolError):
        w.grant(2**32)


def test_receive_window_advertises_each_eighth_and_refuses_excess() -> None:
    w = ReceiveWindow(1 * MiB)
    assert w.advertise() == 1 * MiB - INITIAL_WINDOW and w.remaining == 1 * MiB
    w.received(600 * KiB)
    assert w.consumed(100 * KiB) == 0  # under an eighth: nothing to say yet
    assert w.consumed(28 * KiB) == 128 * KiB  # an eighth consumed: tell the peer
    assert w.remaining == 1 * MiB - 600 * KiB + 128 * KiB
    with pytest.raises(ProtocolError, match="window"):
        w.received(w.remaining + 1)
    with pytest.raises(ValueError):
        ReceiveWindow(INITIAL_WINDOW - 1)


def test_keepalive_one_ping_outstanding() -> None:
    k = Keepalive(timeout=20)
    first = k.next_ping(0.0)
    assert first is not None and k.next_ping(5.0) is None
    assert not k.expired(19.9) and k.expired(20.0)
    assert not k.acked(first + 1, 3.0)
    assert k.acked(first, 3.0) and k.rtt == 3.0
    assert not k.expired(22.9) and k.expired(23.0)  # the answer was the last thing heard
    assert k.next_ping(10.0) != first


def test_keepalive_a_silent_peer_is_dead_a_timeout_after_the_last_frame_heard() -> None:
    k = Keepalive(timeout=5, now=100.0)
    assert k.dead_at() == 105.0
    k.heard(103.0)
    assert not k.expired(107.9) and k.expired(108.0)
    k.next_ping(104.0)  # a Ping unanswered is no later than the silence
    k.heard(106.0)
    assert k.dead_at() == 109.0


# Opening -------------------------------------------------------------------------


def test_open_is_one_frame_with_syn_and_the_window_growth() -> None:
    link = Link(window_size=6 * MiB)
    stream = link.client.open_stream()
    stream.write(b"T")
    assert take(link.t["client"]) == [
        Frame(WINDOW_UPDATE, SYN, 1, 6 * MiB - INITIAL_WINDOW),
        Frame(DATA, 0, 1, 1, b"T")]
    assert link.client.open_stream().stream_id == 3
    assert link.server.open_stream().stream_id == 2



class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def counted_mux(**kw: Any) -> tuple[Clock, Multiplexer, CountingTransport]:
    clock = Clock()
    mux = Multiplexer(is_client=True, clock=clock, **kw)
    transport = CountingTransport()
    mux.makeConnection(transport)
    return clock, mux, transport


def test_an_opening_with_first_bytes_goes_out_in_one_write_with_the_first_request() -> None:
    clock, mux, transport = counted_mux(window_size=6 * MiB)
    stream = mux.open_stream(b"T")
    assert transport.value() == b""  # held for the opener's next write...
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    assert transport.writes == 1  # ...and sent with it, in order, without a turn
    assert parse(transport.value()) == [
        Frame(WINDOW_UPDATE, SYN, 1, 6 * MiB - INITIAL_WINDOW), Frame(DATA, 0, 1, 1, b"T"),
        Frame(DATA, 0, 1, 18, b"GET / HTTP/1.1\r\n\r\n")]
    assert stream.send_window == INITIAL_WINDOW - 19
    clock.advance(0)
    assert transport.writes == 1


def test_an_opening_nobody_writes_after_goes_out_at_the_end_of_the_turn() -> None:
    clock, mux, transport = counted_mux()
    mux.open_stream(b"S")
    mux.open_stream(b"T")
    assert transport.value() == b""
    clock.advance(0)
    assert transport.writes == 1
    assert [(f.type, f.flags, f.stream_id, f.data) for f in parse(transport.value())] == [
        (WINDOW_UPDATE, SYN, 1, b""), (DATA, 0, 1, b"S"),
        (WINDOW_UPDATE, SYN, 3, b""), (DATA, 0, 3, b"T")]
    with pytest.raises(ValueError):
        mux.open_stream(b"x" * (mux.max_frame_data + 1))


def test_an_opening_still_held_when_the_tunnel_closes_goes_out_before_the_close() -> None:
    clock, mux, transport = counted_mux()
    mux.open_stream(b"T")
    mux.close()
    assert [f.type for f in parse(transport.value())] == [WINDOW_UPDATE, DATA]
    assert transport.disconnecting and clock.getDelayedCalls() == []


def test_accept_answers_ack_with_window_and_delivers_early_data() -> None:
    link = Link()
    stream = link.client.open_stream()
    stream.write(b"hello")  # before any answer, and before a protocol is attached
    link.move("client")
    [remote] = link.accepted["server"]
    assert link.protocols["server"][0].data == b"hello"
    assert link.t["server"].value() == b""  # the ACK waits for the answer...
    remote.write(b"answer")
    assert take(link.t["server"]) == [  # ...and goes out in the same write, before it
        Frame(WINDOW_UPDATE, ACK, remote.stream_id, 6 * MiB - INITIAL_WINDOW),
        Frame(DATA, 0, remote.stream_id, 6, b"answer")]
    assert remote.getPeer().stream_id == 1 and remote.getHost().host is not None


def test_a_held_ack_rides_with_the_first_answer_in_one_send() -> None:
    clock, mux, transport = counted_mux(gather=True)
    accepted: list[Stream] = []
    mux.on_stream = lambda s: accepted.append(s) or Collector()
    mux.dataReceived(frames.encode_header(WINDOW_UPDATE, SYN, 2, 6 * MiB - INITIAL_WINDOW)
                     + frames.encode_header(DATA, 0, 2, 3) + b"GET")
    assert transport.writes == 0  # no send, and no end-of-turn call for the ACK:
    assert [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()] == []
    [stream] = accepted
    stream.write(b"200 OK")  # a later turn: the tool answered
    assert transport.writes == 1
    assert parse(transport.value()) == [Frame(WINDOW_UPDATE, ACK, 2, 6 * MiB - INITIAL_WINDOW),
                                        Frame(DATA, 0, 2, 6, b"200 OK")]
    assert stream.receive_window == 6 * MiB - 3


def test_a_held_ack_goes_before_a_reset_or_a_ping() -> None:
    for end in ("reset", "ping"):
        clock, mux, transport = counted_mux(ping_interval=10, ping_timeout=20)
        accepted: list[Stream] = []
        mux.on_stream = lambda s, accepted=accepted: accepted.append(s) or Collector()
        mux.dataReceived(frames.encode_header(WINDOW_UPDATE, SYN, 2, 0))
        assert transport.value() == b""
        if end == "reset":
            accepted[0].abortConnection()
        else:
            clock.advance(10)
        assert [(f.type, f.flags) for f in parse(transport.value())] == [
            (WINDOW_UPDATE, ACK), (WINDOW_UPDATE, RST) if end == "reset" else (PING, SYN)]


def test_an_upload_answered_at_its_end_gets_the_window_without_an_answer() -> None:
    # The accepting side writes nothing until it has the whole body: its ACK (and window)
    # goes out once the peer has used half of the initial window, so the body flows.
    link = Link()
    stream = link.client.open_stream()
    body = os.urandom(2 * MiB)
    stream.write(body)
    link.pump()
    [remote] = link.accepted["server"]
    assert bytes(link.protocols["server"][0].data) == body
    assert stream.send_buffered == 0
    # Below the limit the ACK stays held (nothing sent by the accepting side).
    link2 = Link()
    link2.client.open_stream().write(b"x" * (INITIAL_WINDOW // 2 - 1))
    link2.pump()
    assert link2.t["server"].value() == b"" and link2.server._held


def test_stream_attached_later_gets_what_waited() -> None:
    link = Link()
    seen: list[Stream] = []
    link.server.on_stream = seen.append  # the application attaches later
    stream = link.client.open_stream()
    stream.write(b"early")
    stream.loseWriteConnection()
    link.pump()
    p = HalfCloser()
    seen[0].attach(p)
    assert p.made and p.data == b"early" and p.eof


# Flow control ----------------------------------------------------------------------


def test_writer_waits_for_window_then_finishes() -> None:
    link = Link(window_size=INITIAL_WINDOW, max_frame_data=64 * KiB)
    local, _, remote, remote_p = open_pair(link)
    payload = os.urandom(INITIAL_WINDOW * 3 + 17)
    local.write(payload)
    assert local.send_window == 0 and local.send_buffered == len(payload) - INITIAL_WINDOW
    sent = take(link.t["client"])
    assert all(f.length <= 64 * KiB for f in sent)
    assert sum(f.length for f in sent) == INITIAL_WINDOW
    link.server.dataReceived(b"".join(frames.encode_frame(f) for f in sent))
    link.pump()
    assert bytes(remote_p.data) == payload and local.send_buffered == 0


def test_data_beyond_the_window_is_a_protocol_error() -> None:
    link = Link(window_size=INITIAL_WINDOW)
    local, mine, remote, _ = open_pair(link)
    local.pauseProducing()  # nothing consumed, so no WindowUpdate: 256 KiB is all there is
    # Our own mux never oversends; forge the frames a broken peer would send.
    link.client.dataReceived(frames.encode_data(local.stream_id, b"x" * INITIAL_WINDOW))
    assert not link.client.closed
    link.client.dataReceived(frames.encode_data(local.stream_id, b"y"))
    assert link.client.closed
    assert take(link.t["client"])[-1] == Frame(GO_AWAY, 0, 0, frames.GO_AWAY_PROTOCOL_ERROR)
    assert link.t["client"].disconnecting
    assert mine.lost is not None and mine.lost.check(TunnelLost)
    assert link.closes["client"][0].check(ProtocolError)


@pytest.mark.parametrize("raw", [
    b"\x01" + b"\x00" * 11,  # bad version
    frames.encode_window_update(3, 0, SYN),  # the server may only open even ids
    frames.encode_data(8, b"x", SYN) + frames.encode_data(8, b"x", SYN),  # duplicate SYN
    frames.encode_window_update(8, 1, SYN) + frames.encode_window_update(8, 2**32 - 1),
])
def test_protocol_errors_end_the_tunnel_with_go_away(raw: bytes) -> None:
    link = Link()
    link.client.dataReceived(raw)  # what a server would have sent
    assert link.client.closed and link.t["client"].disconnecting
    assert take(link.t["client"])[-1] == Frame(GO_AWAY, 0, 0, frames.GO_AWAY_PROTOCOL_ERROR)


@pytest.mark.parametrize("answered", ["ping", "refused stream"])
def test_a_peer_flooding_frames_whose_answers_it_never_reads_is_cut_off(answered: str) -> None:
    """Every Ping gets an answer, every stream the gateway refuses an RST: a studio that
    sends them without reading made the gateway buffer the answers without bound (69 MiB
    of Pings grew a real gateway by 85 MiB). While the transport has paused the
    multiplexer (its buffer full), only MAX_UNREAD_ANSWERS answers are written."""
    clock = Clock()
    server = Multiplexer(is_client=False, clock=clock, on_stream=lambda s: s.abortConnection())
    transport = StringTransport()
    server.makeConnection(transport)

    def one(i: int) -> bytes:
        return (frames.encode_ping(i) if answered == "ping"
                else frames.encode_window_update(2 * i + 1, 0, SYN))

    def received(data: bytes) -> None:  # and every frame of it handled (over some turns)
        server.dataReceived(data)
        while server._decoder.rest is not None:
            clock.advance(0)

    received(b"".join(one(i) for i in range(10_000)))
    assert not server.closed  # the peer reads: any number is answered
    server.pauseProducing()  # the transport's buffer is full: the peer stopped reading
    received(b"".join(one(i) for i in range(10_000, 10_000 + MAX_UNREAD_ANSWERS)))
    server.resumeProducing()  # it read: the count starts again
    server.pauseProducing()
    received(b"".join(one(i) for i in range(20_000, 20_000 + MAX_UNREAD_ANSWERS)))
    assert not server.closed
    transport.clear()
    server.dataReceived(one(30_000))
    assert server.closed and transport.disconnecting
    assert take(transport)[-1] == Frame(GO_AWAY, 0, 0, frames.GO_AWAY_PROTOCOL_ERROR)
    assert server.close_reason is not None
    assert "read nothing" in server.close_reason.getErrorMessage()


def test_a_tunnel_ended_on_a_peer_that_reads_nothing_is_reset_after_the_grace() -> None:
    """After a protocol error the tunnel's close waited behind what was buffered for the
    peer (its GoAway, the answers before it): a peer that reads nothing held the socket
    for good. It is reset CLOSE_GRACE after the close (a real gateway:
    test_hostile_studio.py)."""
    clock = MemoryReactorClock()
    sock = StuckSocket(clock)
    server = sock.connect(Multiplexer(is_client=False, clock=clock))
    server.dataReceived(frames.encode_ping(1) + b"\x01" + b"\x00" * 11)  # a bad version
    assert server.closed and sock.disconnecting and sock.unsent()
    clock.advance(CLOSE_GRACE - 0.1)
    assert not sock.disconnected
    clock.advance(0.1)
    assert sock.aborted and sock.disconnected
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_a_read_of_many_small_frames_is_handled_over_several_turns_in_order() -> None:
    """A 512 KiB read of Pings (43,690 frames) was handled in one call, holding the reactor
    (every other connection of the gateway) for ~250 ms. At most MAX_FRAMES_PER_TURN of a
    read's frames are handled per turn; the tunnel is not read meanwhile; what comes later
    waits behind them."""
    link = Link()
    local, mine, remote, theirs = open_pair(link)
    server, transport, clock = link.server, link.t["server"], link.clock
    transport.clear()
    pings = MAX_FRAMES_PER_TURN * 2 + 10
    def answers() -> list[int]:
        return [f.length for f in take(transport) if f.type == PING]

    server.dataReceived(b"".join(frames.encode_ping(i) for i in range(pings)))
    assert answers() == list(range(MAX_FRAMES_PER_TURN))  # this turn's Pings
    assert transport.producerState == "paused"  # the tunnel is not read meanwhile
    server.dataReceived(frames.encode_data(remote.stream_id, b"after the pings"))
    assert theirs.data == b""  # waits behind them
    def next_turn() -> None:  # (a fake clock's advance runs what its calls add too)
        due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
        assert len(due) == 1
        due[0].func(*due[0].args)
        due[0].cancel()

    next_turn()
    assert answers() == list(range(MAX_FRAMES_PER_TURN, 2 * MAX_FRAMES_PER_TURN))
    next_turn()  # the last part
    assert answers() == list(range(2 * MAX_FRAMES_PER_TURN, pings))
    assert theirs.data == b"after the pings"
    # Read again from the next turn: this turn's poll would otherwise handle one more part.
    assert transport.producerState == "paused"
    next_turn()
    assert transport.producerState == "producing"
    assert server._decoder.rest is None and not server.closed


def test_frames_for_unknown_streams_are_ignored() -> None:
    link = Link()
    link.server.dataReceived(frames.encode_data(9, b"late") + frames.encode_window_update(9, 5))
    assert not link.server.closed and link.t["server"].value() == b""
    link.server.dataReceived(frames.encode_data(9, b"late"))  # a read that is one frame
    assert not link.server.closed and link.t["server"].value() == b""


def test_a_read_that_is_one_data_frame_follows_the_same_rules() -> None:
    """The reads that are exactly one Data frame take a shorter way to their stream
    (FrameDecoder.lone_data): delivered, windowed and refused after FIN as any other."""
    link = Link()
    local, mine, remote, theirs = open_pair(link)
    link.client.dataReceived(frames.encode_data(local.stream_id, b"one"))
    assert bytes(mine.data) == b"one" and local.receive_window < link.client.window_size
    link.client.dataReceived(frames.encode_data(local.stream_id, b"", FIN))
    assert mine.eof
    link.client.dataReceived(frames.encode_data(local.stream_id, b"after"))
    assert link.client.closed
    assert take(link.t["client"])[-1] == Frame(GO_AWAY, 0, 0, frames.GO_AWAY_PROTOCOL_ERROR)


Op = tuple[str, str, int]
ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(["a", "b"]), st.integers(1, 300 * KiB)),
    st.tuples(st.just("move"), st.sampled_from(["client", "server"]),
              st.integers(1, 400 * KiB)),
    st.tuples(st.just("pause"), st.sampled_from(["a", "b"]), st.just(0)),
    st.tuples(st.just("resume"), st.sampled_from(["a", "b"]), st.just(0)),
), max_size=40)


@settings(max_examples=60)
@given(ops, st.sampled_from([INITIAL_WINDOW, 512 * KiB]), st.sampled_from([16 * KiB, 64 * KiB]))
def test_windows_hold_and_bytes_arrive_in_order_both_ways(
        script: list[Op], window: int, frame: int) -> None:
    link = Link(window_size=window, max_frame_data=frame)
    # Stream "a" opened by the client, "b" by the server; each writes both ways.
    a_c, a_cp, a_s, a_sp = open_pair(link, "client")
    b_s, b_sp, b_c, b_cp = open_pair(link, "server")
    ends = {"a": [(a_c, a_sp), (a_s, a_cp)], "b": [(b_s, b_cp), (b_c, b_sp)]}
    readers = {"a": [a_sp, a_cp, a_s, a_c], "b": [b_cp, b_sp, b_c, b_s]}
    sent = {id(p): bytearray() for pair in ends.values() for _, p in pair}
    frozen: dict[int, int] = {}  # paused reader's protocol -> bytes it had when paused
    counter = 0

    def check() -> None:
        assert not link.client.closed and not link.server.closed
        for pairs in ends.values():
            for writer, reader_p in pairs:
                reader = link.mux["server" if writer.mux is link.client else "client"] \
                    .streams[writer.stream_id]
                assert writer.send_window >= 0 and reader.receive_window >= 0
                assert reader.receive_buffered <= window
                # in flight + delivered-but-unadvertised never exceed what was advertised
                assert len(sent[id(reader_p)]) - len(reader_p.data) <= \
                    window + writer.send_buffered
        for name in ("client", "server"):
            assert len(link.inflight[name]) + len(link.t[name].value()) <= 2 * window + 4096
        for pairs in ends.values():
            for _, reader_p in pairs:
                if id(reader_p) in frozen:
                    assert len(reader_p.data) == frozen[id(reader_p)]

    for op, who, n in script:
        if op == "write":
            for writer, reader_p in ends[who]:
                chunk = bytes([counter % 251]) * n
                counter += 1
                writer.write(chunk)
                sent[id(reader_p)] += chunk
        elif op == "move":
            link.move(who, n)
        elif op == "pause":
            for s, p in zip(readers[who][2:], readers[who][:2], strict=True):
                s.pauseProducing()
                frozen[id(p)] = len(p.data)
        else:
            for s, p in zip(readers[who][2:], readers[who][:2], strict=True):
                frozen.pop(id(p), None)
                s.resumeProducing()
        check()
    frozen.clear()
    for s in (a_c, a_s, b_c, b_s):
        s.resumeProducing()
    link.pump()
    check()
    for pairs in ends.values():
        for writer, reader_p in pairs:
            assert writer.send_buffered == 0
            assert reader_p.data == sent[id(reader_p)]


# Backpressure ----------------------------------------------------------------------


def test_paused_reader_pauses_far_writer_within_one_window_then_resumes() -> None:
    window = 1 * MiB
    link = Link(window_size=window, max_frame_data=64 * KiB)
    local, _, remote, remote_p = open_pair(link)
    producer = Producer()
    local.registerProducer(producer, True)
    remote.pauseProducing()  # the reader's consumer is slow
    written = 0
    for _ in range(100):
        local.write(b"z" * 48 * KiB)
        written += 48 * KiB
        link.pump()
        if producer.paused:
            break
    # At most one window crosses; the writer then fills its stream's buffer and pauses.
    assert written <= window + local.mux.stream_buffer + 48 * KiB
    assert remote.receive_buffered <= window and remote_p.data == b""
    assert remote.receive_window == 0 or local.send_buffered
    for _ in range(5):  # nothing moves while paused: no WindowUpdate goes back
        link.pump()
    assert producer.paused and not link.t["server"].value()
    remote.resumeProducing()
    link.pump()
    assert not producer.paused and len(remote_p.data) == written
    assert local.send_buffered == 0


def data_frames(transport: StringTransport) -> list[tuple[int, int]]:
    """(stream id, length) of each Data frame written, in order."""
    return [(f.stream_id, f.length) for f in take(transport) if f.type == DATA]


def test_a_full_transport_stops_the_scheduler_and_each_stream_buffers_its_own_bound() -> None:
    link = Link(stream_buffer=256 * KiB)
    streams = [link.client.open_stream() for _ in range(3)]
    producers = [Producer() for _ in streams]
    for s, p in zip(streams, producers, strict=True):
        s.registerProducer(p, True)
    take(link.t["client"])
    assert link.t["client"].producer is link.client
    link.client.pauseProducing()  # the tunnel's socket is full
    for s in streams:
        s.write(b"b" * 128 * KiB)
    assert not any(p.paused for p in producers)  # each is within its own bound
    assert data_frames(link.t["client"]) == []  # nothing goes out meanwhile
    streams[0].write(b"b" * 128 * KiB)
    assert producers[0].paused and not any(p.paused for p in producers[1:])
    link.client.resumeProducing()
    assert not any(p.paused for p in producers)


def test_bulk_streams_take_turns_frame_by_frame_and_small_writes_go_first() -> None:
    link = Link(max_frame_data=64 * KiB)
    a, b, c = (link.client.open_stream() for _ in range(3))
    take(link.t["client"])
    link.client.pauseProducing()
    a.write(b"a" * 256 * KiB)  # a download that started first...
    b.write(b"b" * 256 * KiB)
    c.write(b"c" * 256 * KiB)
    keystroke = link.client.open_stream()
    take(link.t["client"])  # its SYN
    keystroke.write(b"k")  # ...and a keystroke that came last
    link.client.resumeProducing()
    frames_out = data_frames(link.t["client"])
    assert frames_out[0] == (keystroke.stream_id, 1)
    ids = [sid for sid, _ in frames_out[1:]]
    assert ids == [a.stream_id, b.stream_id, c.stream_id] * 4  # round-robin, 64 KiB each
    assert all(n == 64 * KiB for _, n in frames_out[1:])


def test_a_reset_carries_its_code_in_the_window_delta() -> None:
    link = Link()
    local, mine, remote, remote_p = open_pair(link)
    local.abortConnection(RESET_RELAYED)
    link.pump()
    assert remote_p.lost is not None and remote_p.lost.check(StreamReset)
    assert remote_p.lost.value.code == RESET_RELAYED
    local, mine, remote, remote_p = open_pair(link)
    local.abortConnection()  # a plain reset, as yamux sends it: 0
    link.pump()
    assert remote_p.lost is not None and remote_p.lost.value.code == 0


def test_writer_that_ignores_backpressure_is_reset() -> None:
    link = Link(window_size=INITIAL_WINDOW, max_send_buffer=1 * MiB)
    local, mine, remote, remote_p = open_pair(link)
    local.write(b"x" * (INITIAL_WINDOW + 1 * MiB + 1))
    assert local.closed and mine.lost is not None and mine.lost.check(error.ConnectionAborted)
    link.pump()
    assert remote_p.lost is not None and remote_p.lost.check(StreamReset)


def test_pull_producer_is_asked_for_more_while_window_lasts() -> None:
    link = Link(window_size=INITIAL_WINDOW)
    local, _, _, remote_p = open_pair(link)

    class Pull:
        calls = 0

        def resumeProducing(self) -> None:
            Pull.calls += 1
            local.write(b"p" * 100 * KiB)

        def stopProducing(self) -> None:
            pass

    local.registerProducer(Pull(), False)
    for _ in range(10):
        link.clock.advance(0)
    # 256 KiB initial window: the third write shuts it, the fourth fills the stream's
    # buffer past half its bound (DEFAULT_STREAM_BUFFER / 2)
    assert Pull.calls == 4
    assert local.send_buffered
    link.pump()  # the reader's WindowUpdate reopens the window: asked again until it shuts
    link.clock.advance(0)
    assert Pull.calls > 3 and local.send_buffered
    assert len(remote_p.data) + local.send_buffered + len(link.t["client"].value()) >= \
        (Pull.calls - 1) * 100 * KiB


# Closing ---------------------------------------------------------------------------


def test_fin_half_close_then_full_close() -> None:
    link = Link()
    local, mine, remote, remote_p = open_pair(link)
    local.write(b"request")
    local.loseWriteConnection()
    link.pump()
    assert mine.write_closed and remote_p.eof and remote_p.data == b"request"
    remote.write(b"response")  # the other direction still works
    remote.loseConnection()
    link.pump()
    assert mine.data == b"response" and mine.eof
    assert mine.lost is not None and mine.lost.check(error.ConnectionDone)
    assert remote_p.lost is not None and remote_p.lost.check(error.ConnectionDone)
    assert not link.client.streams and not link.server.streams


def test_fin_to_a_protocol_without_half_close_closes_the_stream() -> None:
    link = Link()
    stream = link.client.open_stream()
    plain = Collector()
    stream.attach(plain)
    link.pump()
    [remote] = link.accepted["server"]
    remote.write(b"bye")
    remote.loseConnection()
    link.pump()
    assert plain.data == b"bye" and plain.lost is not None
    assert plain.lost.check(error.ConnectionDone) and not link.client.streams


def test_fin_waits_behind_buffered_data() -> None:
    link = Link(window_size=INITIAL_WINDOW)
    local, _, remote, remote_p = open_pair(link)
    local.write(b"q" * (INITIAL_WINDOW + 10))
    local.loseConnection()
    local.write(b"dropped")
    assert FIN not in {f.flags for f in parse(link.t["client"].value())}
    remote.loseWriteConnection()  # still reading
    link.pump()
    assert len(remote_p.data) == INITIAL_WINDOW + 10 and remote_p.lost is not None


def test_a_reader_that_leaves_resets_the_writer_within_one_window() -> None:
    """loseConnection while the peer still sends: no more window, then RST (issue 16)."""
    link = Link(window_size=INITIAL_WINDOW)
    local, mine, remote, remote_p = open_pair(link)
    producer = Producer()
    remote.registerProducer(producer, True)
    remote.write(b"d" * (INITIAL_WINDOW // 2))
    link.pump()
    assert len(mine.data) == INITIAL_WINDOW // 2
    local.pauseProducing()  # the browser is slow: some data waits in the stream
    remote.write(b"d" * 1000)
    link.pump()
    local.loseConnection()  # ... then leaves
    sent_after = 0
    for _ in range(100):  # the writer goes on while it may
        if producer.paused or remote.closed:
            break
        n = remote.send_window
        remote.write(b"d" * n)
        sent_after += n
        link.pump()
    assert sent_after <= INITIAL_WINDOW
    assert remote.closed and remote_p.lost is not None and remote_p.lost.check(StreamReset)
    assert producer.stopped
    assert mine.lost is not None and mine.lost.check(error.ConnectionDone)
    assert len(mine.data) == INITIAL_WINDOW // 2  # nothing after the leave reached it
    assert not link.client.streams and not link.server.streams


def test_a_reader_that_leaves_after_the_last_byte_closes_cleanly() -> None:
    link = Link()
    local, mine, remote, remote_p = open_pair(link)
    for step in (lambda: remote.write(b"answer"), local.loseConnection, remote.loseConnection):
        step()  # the peer had nothing more: it answers our FIN with its own, no RST
        link.pump()
    assert mine.data == b"answer" and remote_p.eof
    assert [p.lost.check(error.ConnectionDone) for p in (mine, remote_p) if p.lost] == \
        [error.ConnectionDone] * 2


def test_rst_both_ways() -> None:
    link = Link()
    local, mine, remote, remote_p = open_pair(link)
    producer = Producer()
    remote.registerProducer(producer, True)
    local.write(b"some")
    local.abortConnection()
    assert mine.lost is not None and mine.lost.check(error.ConnectionAborted)
    link.pump()
    assert remote_p.lost is not None and remote_p.lost.check(StreamReset)
    assert producer.stopped and not link.server.streams and not link.client.streams


@implementer(IHalfCloseableProtocol)
class CloseOnEof(HalfCloser):
    """Closes its stream fully once it reads EOF (as a splice end whose other side is done)."""

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.transport.loseConnection()


class CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        self.armed += 1
        return super().callLater(delay, f, *args, **kw)


def test_a_stream_closed_from_its_eof_after_our_fin_ends_at_once_without_a_timer() -> None:
    link = Link(CountingClock(), ping_interval=0)
    link.server.on_stream = lambda s: (link.accepted["server"].append(s), CloseOnEof())[1]
    local = link.client.open_stream()
    mine = HalfCloser()
    local.attach(mine)
    local.write(b"request")
    link.pump()
    [remote] = link.accepted["server"]
    remote.write(b"answer")
    remote.loseWriteConnection()  # the server's FIN first (a tool that closed)
    link.pump()
    assert mine.eof and not remote.closed
    armed = link.clock.armed
    local.loseWriteConnection()  # then the client's: the server's protocol closes on it
    link.pump()
    assert remote.closed and local.closed
    assert remote.protocol is not None and remote.protocol.lost is not None
    assert remote.protocol.lost.check(error.ConnectionDone)
    assert link.clock.armed == armed  # no close timer armed (and cancelled) on the way
    assert link.server.streams == {} and link.client.streams == {}


def test_close_timeout_resets_a_stream_the_peer_never_finishes() -> None:
    link = Link(close_timeout=30, ping_interval=0)  # no keepalive: the link is not pumped
    local, mine, _, remote_p = open_pair(link)
    local.loseConnection()
    link.pump()
    assert remote_p.eof and mine.lost is None
    link.clock.advance(30)
    assert mine.lost is not None and local.stream_id not in link.client.streams
    link.pump()
    assert remote_p.lost is not None and remote_p.lost.check(StreamReset)


def test_a_stream_whose_fin_waits_for_a_window_the_peer_never_opens_is_reset() -> None:
    """A stream closed while its last bytes waited for the peer's window: the FIN waits
    behind them, and the close timer began only once the FIN was out, so a peer that
    never opens the window (a studio that reads nothing of the stream) kept the stream and
    its buffer as long as the tunnel. Now the timer begins at the close; a peer that takes
    some of the bytes in each close_timeout is given another."""
    link = Link(close_timeout=30, ping_interval=0, window_size=INITIAL_WINDOW)
    local, mine, remote, remote_p = open_pair(link)
    remote.pauseProducing()  # its reader holds what comes: no window updates
    local.write(b"x" * (INITIAL_WINDOW + 10_000))
    link.pump()
    local.loseConnection()
    link.pump()
    assert local._send_buffered == 10_000 and not local._fin_sent
    link.clock.advance(30)
    assert mine.lost is not None and local.stream_id not in link.client.streams
    link.pump()
    assert remote_p.lost is not None and remote_p.lost.check(StreamReset)

    local, mine, remote, remote_p = open_pair(link)  # a slow reader: a window at a time
    remote.pauseProducing()
    local.write(b"x" * (3 * INITIAL_WINDOW))
    link.pump()
    local.loseConnection()
    for _ in range(2):
        link.clock.advance(29)
        remote.resumeProducing()  # it takes what it holds (a window update goes)...
        remote.pauseProducing()  # ... and holds what comes next
        link.pump()
        link.clock.advance(1)
        assert mine.lost is None
    remote.resumeProducing()
    link.pump()
    assert remote_p.eof and len(remote_p.data) == 3 * INITIAL_WINDOW


def test_a_failing_stream_protocol_resets_only_its_stream() -> None:
    link = Link()
    local, _, remote, remote_p = open_pair(link)
    other, _, _, other_p = open_pair(link)

    def boom(data: bytes) -> None:
        raise RuntimeError("bug")

    remote_p.dataReceived = boom  # type: ignore[method-assign]
    local.write(b"x")
    other.write(b"y")
    link.pump()
    assert remote.closed and not link.server.closed and other_p.data == b"y"


def test_a_clean_end_of_the_tunnel_says_closed_not_lost() -> None:
    # Its streams end as TunnelLost all the same (the proxy's pages and SSH's words
    # depend on it), but the text the access line shows was "tunnel lost: Connection
    # was closed cleanly." (seen on a WebSocket through another node after a drain)
    link = Link()
    _, mine, _, _ = open_pair(link)
    link.client.connectionLost(Failure(error.ConnectionDone()))
    assert mine.lost is not None and mine.lost.check(TunnelLost)
    assert broke(mine.lost) == "tunnel closed: its connection ended cleanly"
    other = Link()
    _, cut, _, _ = open_pair(other)
    other.client.connectionLost(Failure(error.ConnectionLost("cable cut")))
    assert cut.lost is not None and broke(cut.lost) == "tunnel lost: cable cut"


def test_tunnel_loss_reaches_every_stream() -> None:
    link = Link()
    _, mine, _, _ = open_pair(link)
    _, mine2, _, _ = open_pair(link)
    link.client.connectionLost(Failure(error.ConnectionLost("cable cut")))
    for p in (mine, mine2):
        assert p.lost is not None and p.lost.check(TunnelLost)
        assert "cable cut" in p.lost.getErrorMessage()
    assert len(link.closes["client"]) == 1
    link.client.connectionLost(None)  # idempotent
    with pytest.raises(TunnelUnavailable):
        link.client.open_stream()


def test_refusing_in_on_stream_resets_and_a_late_attach_still_hears_of_it() -> None:
    link = Link()
    link.server.on_stream = lambda s: s.abortConnection()  # like the gateway does
    stream = link.client.open_stream()
    stream.write(b"T")
    link.pump()
    assert stream.closed and not link.server.streams and not link.client.streams
    late = Collector()
    stream.attach(late)  # the application attaches after the reset arrived
    assert late.made and late.lost is not None and late.lost.check(StreamReset)


def test_on_stream_failure_resets_only_that_stream() -> None:
    link = Link()

    def broken(stream: Stream) -> None:
        raise RuntimeError("bug")

    link.server.on_stream = broken
    stream = link.client.open_stream()
    p = Collector()
    stream.attach(p)
    link.pump()
    assert p.lost is not None and p.lost.check(StreamReset) and not link.server.closed


# Limits and drain -----------------------------------------------------------------------


def test_max_streams_resets_extra_syns() -> None:
    link = Link(max_streams=2)
    results = [open_pair(link) for _ in range(2)]
    extra = link.client.open_stream()
    extra_p = Collector()
    extra.attach(extra_p)
    link.pump()
    assert extra_p.lost is not None and extra_p.lost.check(StreamReset)
    assert len(link.server.streams) == 2
    results[0][0].abortConnection()
    link.pump()
    open_pair(link)  # room again
    assert len(link.server.streams) == 2


def test_go_away_drains() -> None:
    link = Link()
    local, mine, remote, remote_p = open_pair(link)
    idle: list[bool] = []
    link.server.go_away()
    link.server.when_idle(lambda: idle.append(True))
    link.pump()
    assert link.go_aways["client"] == [0] and not link.client.closed
    with pytest.raises(TunnelUnavailable):
        link.client.open_stream()
    # A peer that opens a stream anyway is refused with RST.
    link.server.dataReceived(frames.encode_window_update(101, 0, SYN))
    assert Frame(WINDOW_UPDATE, RST, 101, 0) in take(link.t["server"])
    # The existing stream finishes normally.
    local.write(b"last")
    local.loseConnection()
    link.pump()
    assert remote_p.data == b"last" and not idle
    remote.loseConnection()
    link.pump()
    assert idle == [True] and mine.lost is not None and mine.lost.check(error.ConnectionDone)
    assert link.server.open_stream() is not None  # our own side may still open


def test_a_drain_is_said_once_by_whoever_handles_it() -> None:
    """studios-connect says "gateway ... is draining; reconnecting": the multiplexer's own
    "going away" line before it only repeated that (at debug now, when handled)."""
    from twisted.logger import LogLevel, capturedLogs

    from studios_gateway.wire.mux import facing

    for handled in (True, False):
        mux = facing("the gateway")(is_client=True, clock=Clock(),
                                    on_go_away=(lambda code: None) if handled else None)
        mux.makeConnection(CountingTransport())
        with capturedLogs() as events:
            mux.dataReceived(frames.encode_header(GO_AWAY, 0, 0, 0))
        said = [(e["log_level"], e["peer"]) for e in events if "going away" in e["log_format"]]
        assert said == [(LogLevel.debug if handled else LogLevel.info, "the gateway")]


def test_go_away_with_an_error_code_ends_the_tunnel() -> None:
    link = Link()
    link.client.dataReceived(frames.encode_go_away(frames.GO_AWAY_INTERNAL_ERROR))
    assert link.go_aways["client"] == [2] and link.client.closed


# Keepalive ---------------------------------------------------------------------------


def test_pings_are_answered_and_a_silent_peer_is_declared_dead() -> None:
    link = Link(ping_interval=10, ping_timeout=20)
    _, mine, _, _ = open_pair(link)
    link.server.connectionLost(None)  # the server below is only a ping answerer
    link.clock.advance(10)
    [ping] = take(link.t["client"])
    assert ping.type == PING and ping.flags == SYN
    answerer = Link().server
    answerer.dataReceived(frames.encode_frame(ping))
    [pong] = take(answerer.transport)
    assert pong == Frame(PING, ACK, 0, ping.length)
    link.clock.advance(1.5)
    link.client.dataReceived(frames.encode_frame(pong))
    assert link.client.rtt == 1.5
    link.clock.advance(8.5)
    [ping2] = take(link.t["client"])  # the next round goes unanswered
    assert ping2.flags == SYN and ping2.length != ping.length
    link.clock.advance(10)
    assert take(link.t["client"]) == []  # still waiting: no second ping stacked up
    assert not link.client.closed
    link.clock.advance(10)
    assert link.client.closed and link.t["client"].disconnected  # aborted
    assert link.closes["client"][0].check(error.TimeoutError)
    assert mine.lost is not None and mine.lost.check(TunnelLost)
    assert not link.clock.getDelayedCalls()




def pings_sent(link: Link) -> dict[str, int]:
    """Deliver what each side wrote, counting the Pings (not their answers) in it."""
    count = {}
    for side in ("client", "server"):
        raw = link.t[side].value()
        count[side] = sum(1 for f in parse(raw) if f.type == PING and f.flags == SYN)
        link.move(side)
    return count


def offset_link(server_after: float = 3) -> tuple[Clock, Link]:
    """A link whose keepalive timers run every 10 s (timeout 20 s), the server's
    ``server_after`` seconds after the client's."""
    clock = Clock()
    link = Link(clock, ping_interval=10, ping_timeout=20)
    clock.advance(server_after)
    link.server.connectionLost(None)
    link.mux["server"] = Multiplexer(is_client=False, clock=clock, ping_interval=10,
                                     ping_timeout=20)
    link.t["server"] = StringTransport()
    link.server.makeConnection(link.t["server"])
    return clock, link


def idle(clock: Clock, link: Link, seconds: float, step: float = 1) -> dict[str, int]:
    """``seconds`` of idle link in steps of ``step``, every frame delivered at once: the
    Pings each end sent."""
    total = {"client": 0, "server": 0}
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for side, n in pings_sent(link).items():
            total[side] += n
        link.pump()
    return total


def test_an_idle_link_settles_on_the_server_pinging_and_the_client_answering() -> None:
    """The client's timer fires first (its Ping then is its only one); from then on a
    Ping of the server's has always come within the interval, so only the server pings;
    neither end is declared dead however long the link stays idle."""
    clock, link = offset_link()
    assert idle(clock, link, 120) == {"client": 1, "server": 12}  # server: 13 ... 123 s
    assert not link.client.closed and not link.server.closed
    assert link.server.keepalive.outstanding is None and link.server.rtt is not None


def test_timers_a_trip_apart_never_leave_the_path_silent() -> None:
    """Timers 0.2 s apart on a path that takes 0.5 s each way: each end's Ping arrives
    after the other's timer fired. Were both ends to skip while the other pings, both
    would skip every other round and the path would be silent for two intervals, the
    timeout; the server never skips."""
    clock, link = offset_link(server_after=0.2)
    in_flight: list[tuple[float, str, bytes]] = []
    heard: dict[str, list[float]] = {"client": [], "server": []}
    for _ in range(1200):  # 120 s in steps of 0.1 s
        clock.advance(0.1)
        now = clock.seconds()
        for side in ("client", "server"):
            if link.t[side].value():
                in_flight.append((now + 0.5, side, link.t[side].value()))
                link.t[side].clear()
        for item in [i for i in in_flight if i[0] <= now + 1e-9]:
            in_flight.remove(item)
            receiver = "server" if item[1] == "client" else "client"
            heard[receiver].append(now)
            link.mux[receiver].dataReceived(item[2])
    for side in ("client", "server"):
        gaps = [b - a for a, b in zip(heard[side], heard[side][1:], strict=False)]
        assert max(gaps) < 10.5, (side, gaps)
    assert not link.client.closed and not link.server.closed


def test_the_client_pings_when_the_servers_pings_stop_coming() -> None:
    clock, link = offset_link()
    idle(clock, link, 30)  # t=33: the server pinged at 13, 23, 33
    link.server.ping_interval = 1000.0  # (an older gateway with a long interval, say)
    link.server._next_ping = 1e9
    assert idle(clock, link, 60)["client"] == 5  # at 50, 60, ... 90 s
    assert not link.client.closed and not link.server.closed


def test_the_end_that_only_answers_still_finds_a_silent_peer() -> None:
    clock, link = offset_link()
    idle(clock, link, 30)  # t=33: the server's last Ping came at 33
    assert link.client.keepalive.last_heard == 33
    link.server.connectionLost(None)  # the server falls silent
    link.t["server"].clear()
    clock.advance(19.9)
    assert not link.client.closed
    clock.advance(0.1)  # 20 s after the last frame heard
    assert link.client.closed and link.closes["client"][0].check(error.TimeoutError)

def test_a_bulk_write_with_nothing_waiting_is_its_frames_in_one_tunnel_write() -> None:
    """A browser's 512 KiB read: the frames the scheduler would send now, in one write."""
    link = Link()
    local, _, _, theirs = open_pair(link)
    writes: list[bytes] = []
    real = link.t["client"].write
    link.t["client"].write = lambda data: (writes.append(data), real(data))  # type: ignore
    data = bytes(range(256)) * (3 * 256 + 128)  # three and a half frames of 64 KiB
    window = local.send_window
    local.write(data)
    assert len(writes) == 1 and local.send_window == window - len(data)
    wire, at, payload = writes[0], 0, b""
    while at < len(wire):  # each a Data frame without flags, at most one frame's data
        version, ftype, flags, sid, length = struct.unpack(">BBHII", wire[at:at + 12])
        assert (version, ftype, flags, sid) == (0, 0, 0, local.stream_id)
        assert length <= link.client.max_frame_data
        payload += wire[at + 12:at + 12 + length]
        at += 12 + length
    assert payload == data
    link.pump()
    assert theirs.data == data


def test_a_bulk_write_goes_to_a_transport_that_seals_frames_as_its_payload() -> None:
    """Over the lean TLS layer (write_frames) the frames are not joined first; the bytes
    on the wire are the same."""
    link = Link()
    local, _, _, theirs = open_pair(link)
    sealed: list[tuple[int, int, int]] = []
    t = link.t["client"]

    def write_frames(sid: int, data: bytes, step: int) -> None:
        sealed.append((sid, len(data), step))
        t.write(frames.data_frames(sid, data, step))

    t.write_frames = write_frames  # type: ignore[attr-defined]
    data = os.urandom(200 * KiB)
    local.write(data)
    local.write(b"x" * 100)  # one frame: the usual write
    assert sealed == [(local.stream_id, 200 * KiB, link.client.max_frame_data)]
    link.pump()
    assert theirs.data == data + b"x" * 100


def test_an_idle_tunnel_holds_one_timer_and_gives_its_scheduler_back() -> None:
    link = Link(ping_interval=10, ping_timeout=20, window_size=INITIAL_WINDOW)
    assert len(link.clock.getDelayedCalls()) == 2  # one keepalive timer per side
    assert link.client.scheduler is None  # nothing sent yet: no scheduler made
    local, mine, remote, theirs = open_pair(link)
    local.write(b"request")  # one frame, nothing waiting: sent without a scheduler
    link.pump()
    assert link.client.scheduler is None and theirs.data == b"request"
    local.write(b"y" * (200 * KiB))  # frames the window allows, nothing waiting: the same
    link.pump()
    assert link.client.scheduler is None and len(theirs.data) == 7 + 200 * KiB
    local.write(b"x" * (300 * KiB))  # more than the window: the scheduler takes turns
    link.pump()
    assert link.client.scheduler is not None and len(theirs.data) == 7 + 500 * KiB
    local.loseConnection()
    remote.loseConnection()
    link.pump()
    assert not link.client.streams
    for _ in range(3):  # pings go both ways; the idle tunnels drop their schedulers
        link.clock.advance(10)
        link.pump()
    assert link.client.scheduler is None and link.server.scheduler is None
    assert len(link.clock.getDelayedCalls()) == 2 and not link.client.closed
    again, _, _, theirs2 = open_pair(link)  # the next stream makes a scheduler again
    again.write(b"more")
    link.pump()
    assert theirs2.data == b"more"


# A real socket -------------------------------------------------------------------------


class Sink(Protocol):
    def __init__(self, done: defer.Deferred[tuple[int, str]]):
        self.hash = hashlib.sha256()
        self.n = 0
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.n += len(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback((self.n, self.hash.hexdigest()))


@implementer(IPushProducer)
class Source:
    """Writes ``total`` pseudo-random bytes into a stream, honouring its backpressure."""

    def __init__(self, stream: Stream, total: int):
        self.stream = stream
        self.left = total
        self.paused = False
        self.hash = hashlib.sha256()
        self.block = os.urandom(256 * KiB)

    def start(self) -> None:
        self.stream.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left and not self.paused:
            chunk = self.block[: min(len(self.block), self.left)]
            self.left -= len(chunk)
            self.hash.update(chunk)
            self.stream.write(chunk)
        if not self.left:
            self.stream.unregisterProducer()
            self.stream.loseConnection()

    def stopProducing(self) -> None:
        self.left = 0


class MuxProtocol(Protocol):
    def __init__(self, mux: Multiplexer):
        self.mux = mux

    def connectionMade(self) -> None:
        self.mux.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.mux.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.mux.connectionLost(reason)


class RealSocketTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_64_mib_over_loopback(self) -> Any:
        total = 64 * MiB
        received: defer.Deferred[tuple[int, str]] = defer.Deferred()
        server = Multiplexer(is_client=False, clock=reactor,
                             on_stream=lambda s: Sink(received))
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: MuxProtocol(server)),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Multiplexer(is_client=True, clock=reactor)
        connected: defer.Deferred[Any] = defer.Deferred()
        factory = ClientFactory.forProtocol(lambda: MuxProtocol(client))
        factory.clientConnectionFailed = lambda c, r: connected.errback(r)  # type: ignore
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        while client.transport is None:
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0, d.callback, None)
            yield d
        self.addCleanup(lambda: client.transport.loseConnection())
        started = time.perf_counter()
        source = Source(client.open_stream(), total)
        source.start()
        n, digest = yield received
        elapsed = time.perf_counter() - started
        print(f"\n64 MiB through one stream over 127.0.0.1: {total / MiB / elapsed:.0f} MiB/s")
        self.assertEqual((n, digest), (total, source.hash.hexdigest()))
        self.assertEqual(server.streams, {})


def test_close_unregisters_from_the_transport_so_the_connection_really_closes() -> None:
    link = Link()
    _, mine, _, _ = open_pair(link)
    assert link.t["client"].producer is link.client
    link.client.close()
    link.client.close()  # twice is harmless
    assert link.t["client"].producer is None  # a registered producer would hold the close
    assert link.t["client"].disconnecting
    assert mine.lost is not None and mine.lost.check(TunnelLost)
    assert link.client.closed and link.closes["client"]


# CPython 3.11 keeps a class's instance attribute names in one table shared by its
# instances (at most 29 names), and every instance made shrinks the room left for new
# names by one: an instance that sets a name the table could not take any more gets a
# dict of its own (~1 KiB per tunnel, at each end). Multiplexer sets every name a
# working tunnel uses in __init__; only a closing tunnel's state is left to the class.
SHARED_NAMES = 29


def has_own_dict(obj: object) -> bool:
    """Whether ``obj``'s attributes live in a dict of its own (the garbage collector sees
    that dict; otherwise it sees the values in the shared-names table). Asked before
    anything reads ``obj.__dict__`` or ``vars(obj)``, which make one."""
    import gc

    return any(type(ref) is dict and ref and all(
        isinstance(k, str) and getattr(obj, k, ref) is v for k, v in ref.items())
        for ref in gc.get_referents(obj))


def test_has_own_dict_tells_a_shared_table_from_a_dict() -> None:
    class Shared:
        def __init__(self) -> None:
            self.a, self.b = 1, {"x": 2}

    made = [Shared() for _ in range(40)]
    assert not has_own_dict(made[-1])
    made[-2].late = 3  # type: ignore[attr-defined]  # the table keeps room for one more
    assert not has_own_dict(made[-2])
    made[-1].later = 4  # type: ignore[attr-defined]  # and no more
    assert has_own_dict(made[-1])
    assert not has_own_dict(made[-3])


def test_a_working_tunnels_multiplexer_keeps_to_the_shared_attribute_names() -> None:
    # Many multiplexers exist first (as on a gateway), so the table has no room left.
    many = [counted_mux(gather=True) for _ in range(40)]
    clock, mux, transport = counted_mux(gather=True)
    assert not has_own_dict(mux)
    stream = mux.open_stream(b"T")
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    for _ in range(3):
        stream.write(b"x" * 100)
    clock.advance(0)
    mux.pauseProducing()  # a tunnel the kernel pushed back on
    stream.write(b"y" * 300_000)
    mux.resumeProducing()
    clock.advance(0)
    mux.dataReceived(frames.encode_header(WINDOW_UPDATE, 0, stream.stream_id, 1000))
    mux.when_idle(lambda: None)
    stream.loseConnection()
    clock.advance(0)
    mux._ping()
    mux._write(b"")  # a second frame in the same turn: held
    clock.advance(mux.ping_interval)  # keepalive ticks
    assert not has_own_dict(mux)
    assert not any(has_own_dict(m) for _, m, _ in many)
    assert len(vars(mux)) <= SHARED_NAMES, sorted(vars(mux))


def test_when_idle_callbacks_run_once_each_when_the_last_stream_goes() -> None:
    clock, mux, transport = counted_mux()
    called: list[str] = []
    mux.when_idle(lambda: called.append("now"))  # no stream: at once
    stream = mux.open_stream()
    mux.when_idle(lambda: called.append("a"))
    mux.when_idle(lambda: called.append("b"))
    assert called == ["now"]
    mux._forget(stream)
    assert called == ["now", "a", "b"]
    mux._fire_idle()
    assert called == ["now", "a", "b"]
