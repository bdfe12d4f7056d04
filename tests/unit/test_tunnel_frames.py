"""The yamux frame codec: round trips, and every malformed header is a ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studios_gateway.wire import frames
from studios_gateway.wire.frames import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    Frame,
    FrameDecoder,
    ProtocolError,
)

MAX_DATA = 4096
u32 = st.integers(0, 0xFFFF_FFFF)
stream_flags = st.sampled_from([f for f in range(16) if not (f & SYN and f & ACK)])


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from([DATA, WINDOW_UPDATE, PING, GO_AWAY]))
    if kind == DATA:
        data = draw(st.binary(max_size=MAX_DATA))
        return Frame(DATA, draw(stream_flags), draw(st.integers(1, 0xFFFF_FFFF)), len(data), data)
    if kind == WINDOW_UPDATE:
        return Frame(WINDOW_UPDATE, draw(stream_flags), draw(st.integers(1, 0xFFFF_FFFF)),
                     draw(u32))
    if kind == PING:
        return Frame(PING, draw(st.sampled_from([SYN, ACK])), 0, draw(u32))
    return Frame(GO_AWAY, 0, 0, draw(st.sampled_from(sorted(frames.GO_AWAY_CODES))))


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(blob) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(blob[last:p])
        last = p
    pieces.append(blob[last:])
    return pieces


@given(st.lists(valid_frames(), max_size=12), st.lists(st.integers(0, 10**6), max_size=20))
def test_round_trip_in_any_split(fs: list[Frame], cuts: list[int]) -> None:
    blob = b"".join(frames.encode_frame(f) for f in fs)
    decoder = FrameDecoder(MAX_DATA)
    got: list[Frame] = []
    for piece in split(blob, cuts):
        got.extend(decoder.feed(piece))
    assert got == fs
    assert decoder.buffered == 0


@given(valid_frames())
def test_header_fields_are_big_endian_on_the_wire(f: Frame) -> None:
    blob = frames.encode_frame(f)
    assert struct.unpack(">BBHII", blob[:12]) == (0, f.type, f.flags, f.stream_id, f.length)
    assert blob[12:] == f.data


def header_is_valid(version: int, ftype: int, flags: int, sid: int, length: int) -> bool:
    """The spec's rules, written independently of the decoder."""
    if version != 0 or ftype not in (0, 1, 2, 3) or flags > 15:
        return False
    if ftype in (0, 1):
        return sid != 0 and flags & 3 != 3 and (ftype == 1 or length <= MAX_DATA)
    if ftype == 2:
        return sid == 0 and flags in (1, 2)
    return sid == 0 and flags == 0 and length in (0, 1, 2, 3)  # 3: ours (a node alone)


headers = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), u32, u32)
nearly_valid = st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 20),
                         st.integers(0, 3), st.integers(0, MAX_DATA + 2))


@given(st.one_of(headers, nearly_valid))
def test_malformed_headers_are_protocol_errors_and_nothing_else(h: tuple[int, ...]) -> None:
    blob = struct.pack(">BBHII", *h)
    decoder = FrameDecoder(MAX_DATA)
    if header_is_valid(*h):
        got = decoder.feed(blob)
        if h[1] == DATA and h[4]:
            assert got == [] and decoder.buffered == 0  # waiting for the payload
        else:
            assert got == [Frame(h[1], h[2], h[3], h[4], b"")]
    else:
        with pytest.raises(ProtocolError) as e:
            decoder.feed(blob)
        assert e.value.reason
        with pytest.raises(ProtocolError):  # framing lost: the decoder stays broken
            decoder.feed(frames.encode_ping(1))


@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_only_ever_raises_protocol_error(blob: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(MAX_DATA)
    try:
        for piece in split(blob, cuts):
            decoder.feed(piece)
    except ProtocolError:
        pass


@pytest.mark.parametrize("blob, words", [
    (struct.pack(">BBHII", 1, DATA, 0, 1, 0), "version"),
    (struct.pack(">BBHII", 0, 4, 0, 1, 0), "type"),
    (struct.pack(">BBHII", 0, DATA, 0x10, 1, 0), "flag"),
    (struct.pack(">BBHII", 0, DATA, 0, 1, MAX_DATA + 1), "exceeds"),
    (struct.pack(">BBHII", 0, PING, SYN, 3, 0), "Ping on stream"),
    (struct.pack(">BBHII", 0, GO_AWAY, 0, 3, 0), "GoAway on stream"),
    (struct.pack(">BBHII", 0, GO_AWAY, 0, 0, 7), "GoAway code"),
    (struct.pack(">BBHII", 0, WINDOW_UPDATE, 0, 0, 1), "stream 0"),
    (struct.pack(">BBHII", 0, PING, 0, 0, 1), "Ping flags"),
])
def test_each_rule_has_a_reason(blob: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        FrameDecoder(MAX_DATA).feed(blob)


def test_payload_inside_one_chunk_is_not_copied() -> None:
    payload = b"x" * 1000
    decoder = FrameDecoder(MAX_DATA)
    assert decoder.feed(frames.encode_header(DATA, 0, 1, len(payload))) == []
    [frame] = decoder.feed(payload)
    assert frame.data is payload


def test_partial_payload_is_held_as_views_and_bounded() -> None:
    decoder = FrameDecoder(MAX_DATA)
    blob = frames.encode_data(5, b"a" * MAX_DATA, FIN)
    body = blob[:-1]
    for i in range(0, len(body), 100):
        assert decoder.feed(body[i:i + 100]) == []
        assert decoder.buffered <= frames.HEADER_SIZE + MAX_DATA
    [frame] = decoder.feed(blob[-1:])
    assert frame == Frame(DATA, FIN, 5, MAX_DATA, b"a" * MAX_DATA)
    assert type(frame.data) is bytes


def test_encoders_refuse_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        frames.encode_header(DATA, 0x10, 1, 0)
    with pytest.raises(ValueError):
        frames.encode_header(DATA, 0, 2**32, 0)
    with pytest.raises(ValueError):
        frames.encode_go_away(9)
    assert frames.encode_ping(7, ack=True) == struct.pack(">BBHII", 0, PING, ACK, 0, 7)
    assert frames.encode_window_update(3, 10, RST) == struct.pack(">BBHII", 0, 1, RST, 3, 10)


@given(st.one_of(headers, nearly_valid), st.binary(max_size=MAX_DATA + 2),
       st.booleans())
def test_a_lone_data_frame_is_what_feed_would_decode(h: tuple[int, ...], payload: bytes,
                                                     held: bool) -> None:
    """lone_data names a stream only for a read that feed would decode into exactly one
    flagless Data frame with that payload, and decodes nothing itself."""
    blob = struct.pack(">BBHII", h[0], h[1], h[2], h[3], len(payload)) + payload
    decoder, other = FrameDecoder(MAX_DATA), FrameDecoder(MAX_DATA)
    if held:  # half a header from an earlier read: this read is not a frame of its own
        for d in (decoder, other):
            d.feed(b"\0\0\0")
    sid = decoder.lone_data(blob)
    assert decoder.buffered == (3 if held else 0)
    try:
        got = other.feed(blob)
    except ProtocolError:
        assert sid == 0
        return
    if sid:
        assert not held and got == [Frame(DATA, 0, sid, len(payload), payload)]
    elif not held:
        assert len(got) != 1 or got[0].flags or got[0].type != DATA or not payload


def test_lone_data_of_a_broken_decoder_is_nothing() -> None:
    decoder = FrameDecoder(MAX_DATA)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x09" * 12)
    assert decoder.lone_data(frames.encode_data(1, b"x")) == 0
    assert decoder.lone_data(bytearray(frames.encode_data(1, b"x"))) == 0  # type: ignore[arg-type]


def test_a_limited_feed_leaves_the_frames_after_the_limit_undecoded() -> None:
    """feed(data, limit): at most `limit` frames; the bytes after them (a partial frame's
    too) are left in `rest`, and feeding them again goes on where it stopped."""
    data = b"".join([frames.encode_ping(1), frames.encode_data(3, b"abc"),
                     frames.encode_ping(2), frames.encode_data(5, b"x" * 10)])
    decoder = FrameDecoder(1024)
    got = decoder.feed(data[:-4], limit=2)
    assert [f.type for f in got] == [PING, DATA] and decoder.rest == data[27:-4]
    rest, decoder.rest = decoder.rest, None
    got = decoder.feed(rest, limit=2)  # a Ping, then the start of a Data frame
    assert [f.length for f in got] == [2] and decoder.rest is None
    assert decoder.feed(data[-4:], limit=2) == [Frame(DATA, 0, 5, 10, b"x" * 10)]
