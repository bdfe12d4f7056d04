"""Stream credit on a long path: how much of a stream's window is in flight per round
trip, on a modelled path (one-way delay, a link rate) between two real Multiplexers."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.wire import stream as stream_module
from studios_gateway.wire.frames import (
    ACK,
    DATA,
    SYN,
    WINDOW_UPDATE,
    FrameDecoder,
    encode_header,
)
from studios_gateway.wire.mux import DEFAULT_WINDOW, Multiplexer
from studios_gateway.wire.stream import ReceiveWindow
from tests.support.delay_line import DelayLine, per_round_trip

WINDOW = DEFAULT_WINDOW
CHUNK = 256 * 1024  # what the sender's producer writes at a time (one tool socket read)


class _Reader(Protocol):
    """Takes all it gets at once (the gateway handing the studio's data to a fast user)."""

    got = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.got += len(data)


def window_per_round_trip(delay: int = 4, rate: int = WINDOW // 8, ticks: int = 400) -> float:
    """Bytes delivered per round trip at the steady state, in windows: a sender that
    always has data, ``delay`` ticks each way, at most ``rate`` bytes leave per tick
    (here a round trip carries one window: the window, not the link, is the limit)."""
    clock = Clock()
    reader = _Reader()
    sender = Multiplexer(is_client=True, clock=clock, ping_interval=0)
    receiver = Multiplexer(is_client=False, clock=clock, ping_interval=0,
                           on_stream=lambda s: reader)
    to_receiver, to_sender = StringTransport(), StringTransport()
    sender.makeConnection(to_receiver)
    receiver.makeConnection(to_sender)
    stream = sender.open_stream()
    waiting = bytearray()
    forth: DelayLine[bytes] = DelayLine(delay)
    back: DelayLine[bytes] = DelayLine(delay)
    got = []
    for now in range(ticks):
        while stream.send_buffered < CHUNK:
            stream.write(bytes(CHUNK))
        waiting += to_receiver.value()
        to_receiver.clear()
        sent, waiting = bytes(waiting[:rate]), waiting[rate:]
        forth.put(now, sent)
        for data in forth.due(now):
            receiver.dataReceived(data)
        back.put(now, to_sender.value())
        to_sender.clear()
        for data in back.due(now):
            sender.dataReceived(data)
        clock.advance(0)
        got.append(reader.got)
    return per_round_trip(got, delay, WINDOW)


def test_most_of_the_window_is_in_flight_on_a_long_path() -> None:
    """With room advertised at half the window, the reader held up to half of it back
    as room not yet due: 0.61 of a window per round trip here (a download through the
    gateway on a 200 ms path moved ~0.66 of a 6 MiB window per round trip); in
    eighths, 0.80 (a tick of the model's round trip is its own: 0.89 is all of it)."""
    assert window_per_round_trip() > 0.75


def test_a_path_faster_than_the_window_still_carries_most_of_it() -> None:
    """The link could carry two windows per round trip: the window is the limit, and
    most of it is in flight (half steps: 0.73; eighths: 0.88, all of it)."""
    assert window_per_round_trip(rate=WINDOW // 4) > 0.85


def test_credit_held_back_is_at_most_an_eighth_of_the_window() -> None:
    w = ReceiveWindow(WINDOW)
    w.advertise()
    step = WINDOW // stream_module.UPDATE_SHARE
    updates = []
    for _ in range(3 * stream_module.UPDATE_SHARE):
        w.received(64 * 1024)
        updates.append(w.consumed(64 * 1024))
        assert w.owed < step
        assert w.remaining + w.owed >= WINDOW - step
    assert set(updates) == {0, step}


def test_a_bulk_stream_is_told_about_room_once_per_step() -> None:
    """A reader that takes each frame as it comes: 8 WindowUpdates per window's worth of
    data, an eighth each (at half: 2)."""
    receiver = Multiplexer(is_client=False, clock=Clock(), ping_interval=0,
                           on_stream=lambda s: _Reader())
    out = StringTransport()
    receiver.makeConnection(out)
    frame = 64 * 1024
    receiver.dataReceived(encode_header(WINDOW_UPDATE, SYN, 1, 0))
    for _ in range(WINDOW // frame):
        receiver.dataReceived(encode_header(DATA, 0, 1, frame) + bytes(frame))
    sent = FrameDecoder(2**32 - 1).feed(out.value())
    updates = [f.length for f in sent if f.type == WINDOW_UPDATE and not f.flags & ACK]
    assert updates == [WINDOW // stream_module.UPDATE_SHARE] * stream_module.UPDATE_SHARE
