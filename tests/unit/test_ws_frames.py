"""The WebSocket frame-boundary tracker (studios_gateway.http.wsframes)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.wsframes import FrameTracker, close_frame, is_websocket

#: Payload lengths at and around the edges of the three length forms (7, 16, 64 bits).
_LENGTHS = st.one_of(st.integers(0, 300),
                     st.sampled_from([125, 126, 127, 65535, 65536, 65537, 70000]))


def frame_head(opcode: int, length: int, masked: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mask = 0x80 if masked else 0
    if length < 126:
        head = bytes((first, mask | length))
    elif length < 65536:
        head = bytes((first, mask | 126)) + struct.pack("!H", length)
    else:
        head = bytes((first, mask | 127)) + struct.pack("!Q", length)
    return head + (b"mask" if masked else b"")


_frames = st.lists(st.tuples(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]), _LENGTHS,
                             st.booleans(), st.booleans()), max_size=12)


@settings(max_examples=300, deadline=None)
@given(frames=_frames, data=st.data())
def test_a_boundary_is_reported_exactly_at_each_frame_end(
        frames: list[tuple[int, int, bool, bool]], data: st.DataObject) -> None:
    stream = bytearray()
    ends = {0}
    close_heads: list[int] = []  # where each close frame's head ends
    for opcode, length, masked, fin in frames:
        head = frame_head(opcode, length, masked, fin)
        stream += head
        if opcode == 0x8:
            close_heads.append(len(stream))
        stream += bytes([opcode]) * length  # (payload bytes that look like heads)
        ends.add(len(stream))
    raw = bytes(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    tracker = FrameTracker()
    at = 0
    for cut in [*cuts, len(raw)]:
        tracker.feed(raw[at:cut])
        at = cut
        assert tracker.at_boundary == (at in ends), (at, sorted(ends))
        assert tracker.closed == any(h <= at for h in close_heads)
        assert len(tracker._held) < 14  # bounded: only a cut head is kept


def test_a_head_cut_byte_by_byte_is_read_whole() -> None:
    raw = frame_head(0x2, 70000) + b"\0" * 70000 + frame_head(0x1, 3) + b"abc"
    tracker = FrameTracker()
    for i in range(11):
        tracker.feed(raw[i:i + 1])
        assert not tracker.at_boundary
    tracker.feed(raw[11:])
    assert tracker.at_boundary and not tracker.closed


def test_the_close_frame_caps_its_reason_at_a_character_end() -> None:
    frame = close_frame(1011, "é" * 100)  # 200 bytes of UTF-8
    assert frame[0] == 0x88 and frame[1] == len(frame) - 2 <= 125
    assert struct.unpack("!H", frame[2:4])[0] == 1011
    assert frame[4:].decode("utf-8") == "é" * 61
    assert close_frame(1001, "bye") == b"\x88\x05\x03\xe9bye"


def test_only_an_upgrade_to_websocket_is_tracked() -> None:
    assert is_websocket([(b"Upgrade", b"WebSocket"), (b"Connection", b"upgrade")])
    assert not is_websocket([(b"Upgrade", b"h2c")])
    assert not is_websocket([])
