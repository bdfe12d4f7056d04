"""studio.tool_link.ToolConnection's reads and writes, on a fake socket."""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import main

from studios_gateway.studio.tool_link import ToolConnection
from studios_gateway.wire.sockopts import SMALL_READ, TOOL_BUFFER


class Socket:
    """Gives ``reads`` to recv (an int: that many bytes; an OSError: raised); send takes at
    most ``room`` bytes."""

    def __init__(self, reads: list[Any], room: int = 1 << 30) -> None:
        self.reads, self.room = reads, room
        self.asked: list[int] = []
        self.sent = bytearray()

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        r = self.reads.pop(0)
        if isinstance(r, OSError):
            raise r
        assert r <= n
        return b"x" * r

    def send(self, data: bytes) -> int:
        if not self.room:
            raise BlockingIOError(errno.EAGAIN, "full")
        n = min(len(data), self.room)
        self.room -= n
        self.sent += data[:n]
        return n


class Reader:
    def __init__(self) -> None:
        self.got: list[int] = []

    def dataReceived(self, data: bytes) -> None:
        self.got.append(len(data))


def connection(sock: Socket) -> ToolConnection:
    """A connected ToolConnection around ``sock``, without a reactor."""
    t = ToolConnection.__new__(ToolConnection)
    t.socket = sock  # type: ignore[assignment]
    t.bufferSize = SMALL_READ
    t.protocol = Reader()  # type: ignore[assignment]
    t.connected = True
    t.disconnecting = False
    t.dataBuffer, t.offset, t._tempDataBuffer, t._tempDataLen = b"", 0, [], 0
    queued: list[bytes] = []
    t.queued = queued  # type: ignore[attr-defined]
    t.startWriting = lambda: queued.append(b"".join(t._tempDataBuffer))  # type: ignore
    return t


def test_reads_grow_to_the_bulk_size_after_a_full_one_and_shrink_after_a_small_one() -> None:
    sock = Socket([100, SMALL_READ, TOOL_BUFFER, 70_000, 500, 10])
    t = connection(sock)
    for _ in range(6):
        assert t.doRead() is None
    assert sock.asked == [SMALL_READ, SMALL_READ, TOOL_BUFFER, TOOL_BUFFER, TOOL_BUFFER,
                          SMALL_READ]
    assert t.protocol.got == [100, SMALL_READ, TOOL_BUFFER, 70_000, 500, 10]  # type: ignore


def test_eof_would_block_and_errors_read_as_twisted_reads_them() -> None:
    sock = Socket([BlockingIOError(errno.EAGAIN, "again"),
                   ConnectionResetError(errno.ECONNRESET, "reset"), 0])
    t = connection(sock)
    assert t.doRead() is None
    assert t.doRead() is main.CONNECTION_LOST
    assert t.doRead() is main.CONNECTION_DONE
    assert t.protocol.got == []  # type: ignore[attr-defined]


def test_a_write_goes_out_at_once_and_what_the_socket_leaves_goes_to_twisteds_queue() -> None:
    sock = Socket([], room=10)
    t = connection(sock)
    t.write(b"0123456789")
    assert bytes(sock.sent) == b"0123456789" and t.queued == []  # type: ignore[attr-defined]
    sock.room = 4
    t.write(b"abcdefgh")
    assert bytes(sock.sent) == b"0123456789abcd"
    assert t.queued == [b"efgh"]  # type: ignore[attr-defined]
    sock.room = 100
    t.write(b"later")  # something waits in the queue: behind it, not before
    assert bytes(sock.sent) == b"0123456789abcd" and t._tempDataLen == 9


class HalfClosing(Reader):
    def __init__(self) -> None:
        super().__init__()
        self.write_closed = 0

    def writeConnectionLost(self) -> None:
        self.write_closed += 1


def test_a_half_close_with_nothing_queued_shuts_the_socket_at_once() -> None:
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from zope.interface import directlyProvides

    sock = Socket([])
    shut: list[int] = []
    sock.shutdown = shut.append  # type: ignore[attr-defined]
    t = connection(sock)
    t._writeDisconnecting = t._writeDisconnected = False
    t.protocol = p = HalfClosing()  # type: ignore[assignment]
    directlyProvides(p, IHalfCloseableProtocol)
    t.loseWriteConnection()
    assert shut == [1] and p.write_closed == 1 and t.queued == []  # type: ignore[attr-defined]
    t.write(b"late")  # the write side is closed: dropped, as Twisted drops it
    assert bytes(sock.sent) == b""


def test_a_half_close_behind_queued_data_waits_for_the_queue() -> None:
    sock = Socket([], room=2)
    shut: list[int] = []
    sock.shutdown = shut.append  # type: ignore[attr-defined]
    t = connection(sock)
    t._writeDisconnecting = t._writeDisconnected = False
    t.write(b"abcd")  # two bytes wait in Twisted's queue
    t.loseWriteConnection()
    assert shut == [] and t._writeDisconnecting  # Twisted's doWrite shuts it after the queue
