"""Channel credit on a long path: how much of the window is in flight per round trip,
on a modelled path (one-way delay, a link rate) between two real FlowChannels."""

from __future__ import annotations

import struct
from collections import deque

from twisted.conch.ssh import connection

from studios_gateway.ssh import channels
from studios_gateway.ssh.channels import WINDOW, FlowChannel, FlowConnection
from tests.support.delay_line import DelayLine, per_round_trip


class _Wire:
    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []

    def sendPacket(self, kind: int, payload: bytes) -> None:  # noqa: N802 - Conch's name
        self.packets.append((kind, payload))


class _Reader(FlowChannel):
    """Takes all it gets at once (the gateway handing the studio's data to a fast user)."""

    got = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Conch's name
        self.got += len(data)
        self.consumed(len(data))


def _wire(channel: FlowChannel, remote_window: int) -> FlowConnection:
    conn = FlowConnection()
    conn.transport = _Wire()
    channel.conn, channel.id = conn, 0
    conn.channels[0] = channel
    conn.channelsToRemoteChannel[channel] = 0
    conn.localToRemoteChannel[0] = 0
    channel.remoteWindowLeft, channel.remoteMaxPacket = remote_window, 32 * 1024
    channel.channelOpen(b"")
    return conn


def window_per_round_trip(delay: int = 4, rate: int = WINDOW // 8, ticks: int = 400) -> float:
    """Bytes delivered per round trip at the steady state, in windows: a sender that
    always has data, `delay` ticks each way, at most `rate` bytes leave per tick (here
    a round trip carries one window: the window, not the link, is the limit)."""
    sender, reader = FlowChannel(), _Reader()
    to_reader, to_sender = _wire(sender, WINDOW), _wire(reader, 0)
    waiting: deque[bytes] = deque()
    forth: DelayLine[bytes] = DelayLine(delay)
    back: DelayLine[bytes] = DelayLine(delay)
    got = []
    for now in range(ticks):
        if sender.queued_bytes < WINDOW:
            sender.write(bytes(WINDOW))
        waiting.extend(p for _, p in to_reader.transport.packets)
        to_reader.transport.packets.clear()
        budget = rate
        while waiting and budget > 0:
            packet = waiting.popleft()
            budget -= len(packet)
            forth.put(now, packet)
        for packet in forth.due(now):
            to_sender.ssh_CHANNEL_DATA(packet)
        for kind, packet in to_sender.transport.packets:
            if kind == connection.MSG_CHANNEL_WINDOW_ADJUST:
                back.put(now, packet)
        to_sender.transport.packets.clear()
        for packet in back.due(now):
            to_reader.ssh_CHANNEL_WINDOW_ADJUST(packet)
        assert reader.localWindowLeft >= 0  # never more in flight than the window
        got.append(reader.got)
    return per_round_trip(got, delay, WINDOW)


def test_most_of_the_window_is_in_flight_on_a_long_path() -> None:
    """With credit re-granted at half the window, the reader held up to half of it back
    as credit not yet due: 0.67 of a window per round trip here (on the 80 ms path,
    scp's SFTP download moved 1 MiB per round trip, ~9 MB/s); in eighths, 0.89."""
    assert window_per_round_trip() > 0.85


def test_credit_held_back_is_at_most_an_eighth_of_the_window() -> None:
    reader = _Reader()
    to_sender = _wire(reader, 0)
    step = WINDOW // 8
    for _ in range(3 * channels.ADJUST_SHARE):
        to_sender.ssh_CHANNEL_DATA(struct.pack(">2L", 0, 32 * 1024) + bytes(32 * 1024))
        assert reader._unacked < step
        assert reader.localWindowLeft + reader._unacked >= WINDOW - step
