"""The yamux frame codec (hashicorp/yamux spec.md), pure bytes in and out.

Every frame starts with a 12-byte big-endian header::

    version u8 (0) | type u8 | flags u16 | stream id u32 | length u32

``length`` is the payload size for Data, the window delta for WindowUpdate,
an opaque value for Ping and the error code for GoAway; only Data frames
carry a payload. :class:`FrameDecoder` takes bytes as they arrive and hands
back whole frames; any malformed header raises :class:`ProtocolError` (and
keeps raising it: a byte stream that lost its framing cannot be resynced).

Constants are plain ints rather than enums: the decoder runs once per frame
on the data path, and int comparisons are what it needs.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

VERSION = 0
HEADER_SIZE = 12

# Frame types.
DATA = 0
WINDOW_UPDATE = 1
PING = 2
GO_AWAY = 3
TYPE_NAMES = {DATA: "Data", WINDOW_UPDATE: "WindowUpdate", PING: "Ping", GO_AWAY: "GoAway"}

# Flags.
SYN = 0x1
ACK = 0x2
FIN = 0x4
RST = 0x8
ALL_FLAGS = SYN | ACK | FIN | RST

# GoAway codes (yamux's three, and one of ours).
GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2
#: A normal GoAway from a gateway that stops with no other node to take its studios:
#: rebind over your own spread (studio.client.GOAWAY_SPREAD), not at once. Sent only to a
#: studios-connect that said at its bind that it rebinds soon after a GoAway
#: (wire/bind.py, ``paced_go_away``), which knows this code.
GO_AWAY_ALONE = 3
#: A normal GoAway to a tunnel a newer bind of the same session took over on this node:
#: another studios-connect with the same connect string (a second container of the
#: studio), or a newer connection of this one. Rebind later, not at once (two processes
#: on one session took the tunnel from each other several times a second, each saying
#: "gateway is draining"). Sent only to a studios-connect that said at its bind that it
#: knows this code (wire/bind.py, ``replaced_go_away``).
GO_AWAY_REPLACED = 4
GO_AWAY_CODES = frozenset({GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, GO_AWAY_INTERNAL_ERROR,
                           GO_AWAY_ALONE, GO_AWAY_REPLACED})
#: The codes that end the tunnel as it is (the others: no new streams, the rest finish).
GO_AWAY_ERRORS = frozenset({GO_AWAY_PROTOCOL_ERROR, GO_AWAY_INTERNAL_ERROR})

INITIAL_WINDOW = 256 * 1024  # every yamux stream starts with this receive window
MAX_U32 = 0xFFFF_FFFF

HEADER_STRUCT = struct.Struct(">BBHII")  # version, type, flags, stream id, length
_unpack_header = HEADER_STRUCT.unpack_from


class ProtocolError(Exception):
    """The peer broke the framing or the flow-control rules; the tunnel must end."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Frame(NamedTuple):
    """One decoded frame. ``data`` is the payload of a Data frame, else ``b""``."""

    type: int
    flags: int
    stream_id: int
    length: int
    data: bytes = b""


# Frame(...) without the Python-level __new__ a NamedTuple adds (the decoder makes one
# per frame): tuple.__new__(Frame, fields).
_new_frame = tuple.__new__


def check_header(version: int, ftype: int, flags: int, stream_id: int, length: int,
                 max_data: int) -> None:
    """Raise :class:`ProtocolError` unless the header fields form a valid frame."""
    if version != VERSION:
        raise ProtocolError(f"unsupported yamux version {version}")
    if ftype > GO_AWAY:
        raise ProtocolError(f"unknown frame type {ftype}")
    if flags & ~ALL_FLAGS:
        raise ProtocolError(f"unknown flag bits 0x{flags & ~ALL_FLAGS:x} on "
                            f"{TYPE_NAMES[ftype]}")
    if ftype == DATA or ftype == WINDOW_UPDATE:
        if stream_id == 0:
            raise ProtocolError(f"{TYPE_NAMES[ftype]} on stream 0")
        if flags & SYN and flags & ACK:
            raise ProtocolError(f"{TYPE_NAMES[ftype]} with both SYN and ACK")
        if ftype == DATA and length > max_data:
            raise ProtocolError(f"Data frame of {length} bytes exceeds the maximum {max_data}")
    elif ftype == PING:
        if stream_id != 0:
            raise ProtocolError(f"Ping on stream {stream_id}")
        if flags not in (SYN, ACK):
            raise ProtocolError(f"Ping flags must be SYN or ACK, not 0x{flags:x}")
    else:
        if stream_id != 0:
            raise ProtocolError(f"GoAway on stream {stream_id}")
        if flags:
            raise ProtocolError(f"GoAway with flags 0x{flags:x}")
        if length not in GO_AWAY_CODES:
            raise ProtocolError(f"unknown GoAway code {length}")


# Encoding ------------------------------------------------------------------------


def encode_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12-byte header. Raises ValueError for fields out of range (a bug of ours)."""
    if not 0 <= ftype <= GO_AWAY or flags & ~ALL_FLAGS or flags < 0:
        raise ValueError(f"bad frame type {ftype} or flags {flags}")
    if not 0 <= stream_id <= MAX_U32 or not 0 <= length <= MAX_U32:
        raise ValueError(f"stream id {stream_id} or length {length} out of range")
    return HEADER_STRUCT.pack(VERSION, ftype, flags, stream_id, length)


def encode_data(stream_id: int, data: bytes | memoryview = b"", flags: int = 0) -> bytes:
    """A whole Data frame: header and payload in one bytes object (one copy of the payload)."""
    return encode_header(DATA, flags, stream_id, len(data)) + data


def data_frames(sid: int, data: bytes, step: int) -> bytes:
    """``data`` as flagless Data frames of stream ``sid``, one per ``step`` bytes (the last
    shorter), joined: what a bulk write sends (stream.Stream.write; the lean TLS layer seals
    the same bytes without the join, wire/_records.c's seal_frames)."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for at in range(0, len(data), step):
        piece = view[at:at + step]
        parts.append(HEADER_STRUCT.pack(0, DATA, 0, sid, len(piece)))
        parts.append(piece)
    return b"".join(parts)


def data_frames_size(n: int, step: int) -> int:
    """How many bytes :func:`data_frames` makes of ``n`` bytes of data."""
    return n + -(-n // step) * HEADER_SIZE


def encode_window_update(stream_id: int, delta: int, flags: int = 0) -> bytes:
    return encode_header(WINDOW_UPDATE, flags, stream_id, delta)


def encode_ping(opaque: int, ack: bool = False) -> bytes:
    return encode_header(PING, ACK if ack else SYN, 0, opaque)


def encode_go_away(code: int = GO_AWAY_NORMAL) -> bytes:
    if code not in GO_AWAY_CODES:
        raise ValueError(f"unknown GoAway code {code}")
    return encode_header(GO_AWAY, 0, 0, code)


def encode_frame(frame: Frame) -> bytes:
    """Encode a :class:`Frame` (the inverse of decoding)."""
    if frame.type == DATA:
        if len(frame.data) != frame.length:
            raise ValueError("Data frame length does not match its payload")
        return encode_data(frame.stream_id, frame.data, frame.flags)
    if frame.data:
        raise ValueError(f"{TYPE_NAMES.get(frame.type, frame.type)} frames carry no payload")
    return encode_header(frame.type, frame.flags, frame.stream_id, frame.length)


# Decoding ------------------------------------------------------------------------


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get whole frames back.

    Memory: at most ``HEADER_SIZE - 1`` bytes of a partial header, or one
    partial Data payload (``<= max_data`` bytes) held as zero-copy views of
    the chunks fed in. Each payload byte is copied once, into the ``bytes``
    handed out; a payload that lies inside one fed ``bytes`` chunk is a slice
    of it (no copy at all when the chunk is exactly the payload).
    """

    __slots__ = ("max_data", "_head", "_pending", "_pieces", "_missing", "_error", "rest")

    def __init__(self, max_data: int):
        if not 0 <= max_data <= MAX_U32:
            raise ValueError(f"max_data {max_data} out of range")
        self.max_data = max_data
        self._head = bytearray()  # a partial header
        self._pending: tuple[int, int, int, int] | None = None  # header awaiting its payload
        self._pieces: list[memoryview] = []
        self._missing = 0
        self._error: str | None = None
        #: With a ``limit``: what :meth:`feed` left undecoded, the frames after the limit's
        #: (feed it again, with what came since after it); None when nothing is left.
        self.rest: bytes | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._head) + sum(len(p) for p in self._pieces)

    def feed(self, data: bytes, limit: int = 0) -> list[Frame]:
        """Decode what ``data`` completes. Raises ProtocolError on a malformed header.

        With ``limit``, at most that many frames: the bytes after them are left in
        :attr:`rest`, undecoded (a flood of small frames is decoded a part at a time)."""
        if self._error is not None:
            raise ProtocolError(self._error)
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            return self._feed(data, limit)
        except ProtocolError as e:
            self._error = e.reason
            self._head.clear()
            self._pieces.clear()
            self._pending = None
            self.rest = None
            raise

    def lone_data(self, data: bytes) -> int:
        """The stream id if ``data`` is exactly one whole Data frame with a payload and no
        flags, and nothing of an earlier frame is held; else 0 (nothing decoded: then
        :meth:`feed` it). Its payload is ``data[HEADER_SIZE:]``.

        The common read (a request, an answer, a WebSocket message), checked as
        check_header would, without making a Frame or a list for it."""
        if self._pending is None and not self._head and self._error is None:
            end = len(data)
            if end > HEADER_SIZE and type(data) is bytes:
                version, ftype, flags, sid, length = _unpack_header(data)
                if (not ftype and not flags and not version and sid
                        and length == end - HEADER_SIZE and length <= self.max_data):
                    return sid
        return 0

    def _feed(self, data: bytes, limit: int) -> list[Frame]:
        end = len(data)
        unpack = _unpack_header
        frames: list[Frame] = []
        pos = 0
        max_data = self.max_data
        while True:
            if limit and len(frames) >= limit and pos < end:
                self.rest = data[pos:]  # (at a frame's start: nothing of one is held)
                return frames
            pending = self._pending
            if pending is not None:  # the rest of a Data payload
                missing = self._missing
                avail = end - pos
                if avail < missing:
                    if avail:
                        self._pieces.append(memoryview(data)[pos:])
                        self._missing = missing - avail
                    return frames
                if self._pieces:
                    self._pieces.append(memoryview(data)[pos:pos + missing])
                    payload = b"".join(self._pieces)
                    self._pieces.clear()
                else:
                    payload = data[pos:pos + missing]
                pos += missing
                self._pending = None
                frames.append(_new_frame(Frame, (DATA, pending[1], pending[2], pending[3],
                                                 payload)))
                continue
            if self._head:  # complete a header split across feeds
                take = min(HEADER_SIZE - len(self._head), end - pos)
                self._head += data[pos:pos + take]
                pos += take
                if len(self._head) < HEADER_SIZE:
                    return frames
                version, ftype, flags, sid, length = unpack(self._head)
                self._head.clear()
            elif end - pos >= HEADER_SIZE:
                version, ftype, flags, sid, length = unpack(data, pos)
                pos += HEADER_SIZE
            else:
                if pos < end:
                    self._head += data[pos:]
                return frames
            if ftype or flags or version or not sid or length > max_data:
                check_header(version, ftype, flags, sid, length, max_data)
            # else a valid Data frame without flags (most frames): nothing to check
            if ftype == DATA and length:
                self._pending = (ftype, flags, sid, length)
                self._missing = length
            else:
                frames.append(_new_frame(Frame, (ftype, flags, sid, length, b"")))
