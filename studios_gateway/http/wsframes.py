"""Where the WebSocket frames of a tool's upgraded connection begin and end.

The proxy splices an upgraded connection's bytes as they come; to end such a
connection with a close frame of its own (a quota, the studio's connection lost, the
gateway going away) it must write that frame between two whole frames of the tool's
(server to client) direction, and not after the tool's own close frame. A
:class:`FrameTracker` follows that direction by its frame heads alone (2 to 14 bytes:
RFC 6455 section 5.2): each payload is skipped by its length, never looked at or
copied, so a read costs one step per frame head in it (a read inside one large frame
costs a subtraction). A head split across reads is kept (at most 13 bytes) until its
end comes.

:func:`close_frame` makes the gateway's close frame: unmasked (server to client), a
status code and a reason of at most 123 bytes of UTF-8, cut at a character's end.
"""

from __future__ import annotations

import struct

__all__ = ["GOING_AWAY", "INTERNAL_ERROR", "MAX_REASON", "POLICY_VIOLATION", "SERVICE_RESTART",
           "FrameTracker", "close_frame", "is_websocket", "offers_websocket_only"]

#: Close codes the gateway sends (RFC 6455 section 7.4.1; 1012 from IANA's registry).
#: 1001 is for an end the page should take as final (its session was ended): JupyterLab
#: (4.x) does not reconnect a kernel or terminal closed with 1000 or 1001. An end the
#: page should come back from (this node draining, the studio's tunnel moving) is 1012,
#: which it treats like a broken connection: it reconnects.
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012
#: A close frame's payload is at most 125 bytes: 2 for the code, the rest the reason.
MAX_REASON = 123

_CLOSE = 0x8
_LONGEST_HEAD = 14  # 2 + 8 (64-bit length) + 4 (a masking key)


def offers_websocket_only(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request's Upgrade headers, all lines together, name one protocol, WebSocket
    (``Upgrade: websocket``, as browsers send it). Only such an upgrade reaches a tool:
    after any other (``h2c``) the tool would read the client's next requests on the
    spliced connection as they come, ``X-Connect-Sub`` included, past every check of
    the gateway's."""
    tokens = [token.strip().lower() for name, value in headers if name.lower() == b"upgrade"
              for token in value.split(b",")]
    return tokens == [b"websocket"]


def is_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    """A 101's headers switch to the WebSocket protocol (``Upgrade: websocket``)."""
    for name, value in headers:
        if name.lower() == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


def close_frame(code: int, reason: str) -> bytes:
    """A server's close frame: `code` and `reason` (cut to :data:`MAX_REASON` bytes of
    UTF-8 at a character's end)."""
    data = reason.encode("utf-8")
    if len(data) > MAX_REASON:
        data = data[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")
    return bytes((0x80 | _CLOSE, 2 + len(data))) + struct.pack("!H", code) + data


def _head(buf: bytes, at: int, end: int) -> tuple[int, int, int] | None:
    """The frame head at `at` in ``buf[:end]``: (its length, the payload's length, the
    first byte), or None when the head goes on past `end`."""
    if end - at < 2:
        return None
    b1 = buf[at + 1]
    size = b1 & 0x7F
    n = 6 if b1 & 0x80 else 2  # a masking key (a server does not mask; counted anyway)
    if size == 126:
        n += 2
        if end - at < n:
            return None
        size = (buf[at + 2] << 8) | buf[at + 3]
    elif size == 127:
        n += 8
        if end - at < n:
            return None
        size = int.from_bytes(buf[at + 2:at + 10], "big")
    elif end - at < n:
        return None
    return n, size, buf[at]


class FrameTracker:
    """The frame boundaries of one direction of a WebSocket connection, fed its bytes in
    order. :attr:`at_boundary`: everything fed so far is whole frames. :attr:`closed`:
    a close frame began (nothing may be sent after it)."""

    __slots__ = ("_held", "_skip", "closed")

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to come
        self._held = b""  # the start of a frame head that a read cut (< 14 bytes)
        self.closed = False

    @property
    def at_boundary(self) -> bool:
        return not self._skip and not self._held

    @property
    def remaining(self) -> int | None:
        """The bytes still to come of the current frame's payload; None while a head cut
        by a read is held (its payload's length unknown yet)."""
        return None if self._held else self._skip

    def feed(self, data: bytes) -> None:
        end = len(data)
        skip = self._skip
        if skip >= end:  # inside one frame's payload (a bulk transfer's usual read)
            self._skip = skip - end
            return
        at = skip
        if self._held:  # a head cut by the last read: at most 13 + 14 bytes joined
            held = self._held
            buf = held + data[:_LONGEST_HEAD]
            got = _head(buf, 0, len(buf))
            if got is None:
                self._held, self._skip = buf, 0
                return
            n, size, first = got
            if first & 0x0F == _CLOSE:
                self.closed = True
            self._held = b""
            at = n - len(held) + size  # (the head's rest in `data`, then its payload)
        # The usual heads, unmasked with a 7-bit or a 16-bit length and whole in `data`,
        # are read inline (one frame of small messages after another: ~85 ns a frame).
        last = end - 3
        while at < end:
            if at < last:  # (a head of 4 bytes fits)
                size = data[at + 1]
                if size < 126:
                    if data[at] & 0x0F == 0x8:  # (_CLOSE)
                        self.closed = True
                    at += 2 + size
                    continue
                if size == 126:
                    if data[at] & 0x0F == 0x8:
                        self.closed = True
                    at += 4 + (data[at + 2] << 8 | data[at + 3])
                    continue
            got = _head(data, at, end)
            if got is None:
                self._held = data[at:]
                self._skip = 0
                return
            n, size, first = got
            if first & 0x0F == _CLOSE:
                self.closed = True
            at += n + size
        self._skip = at - end
