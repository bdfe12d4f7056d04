"""A session's output read in large pieces (studios_gateway.studio.processes), with the
same backpressure: paused, the reader reads nothing, and one read is one piece."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.testing import MemoryReactor

from studios_gateway.studio.processes import PIPE_SIZE, READ_SIZE, _Reader


class _Proc:
    """What a reader tells its process: each piece of output."""

    def __init__(self) -> None:
        self.pieces: list[int] = []

    def childDataReceived(self, name: int, data: bytes) -> None:  # noqa: N802
        self.pieces.append(len(data))


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_read_takes_what_the_pipe_holds_up_to_the_piece(pipe: tuple[int, int]) -> None:
    """Twisted read 8 KiB per wake-up: each piece one SSH packet of the studio's, and
    `ssh studio 'cat big'` at half the speed of scp's download."""
    r, w = pipe
    reactor, proc = MemoryReactor(), _Proc()
    reader = _Reader(reactor, proc, 1, r)  # type: ignore[arg-type]
    assert fcntl.fcntl(r, getattr(fcntl, "F_GETPIPE_SZ", 1032)) in (PIPE_SIZE, 65536)
    os.set_blocking(w, False)
    written = 0
    try:
        while written < 2 * READ_SIZE:
            written += os.write(w, b"x" * 65536)
    except BlockingIOError:  # a pipe that could not be made larger: 64 KiB
        pass
    assert reader.doRead() is None
    assert proc.pieces == [min(written, READ_SIZE)]
    assert proc.pieces[0] > 8192
    # Paused (the channel's window is shut), it leaves the rest in the pipe: the
    # writer blocks, nothing piles up in the studio.
    reader.pauseProducing()
    assert reader not in reactor.getReaders()
    reader.resumeProducing()
    while reader.doRead() is None and sum(proc.pieces) < written:
        pass
    assert sum(proc.pieces) == written
    os.close(w)
    assert reader.doRead() is CONNECTION_DONE
