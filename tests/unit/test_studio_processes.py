"""A session's process (studios_gateway.studio.processes): its output read in large
pieces, with the same backpressure (paused, the reader reads nothing, and one read is one
piece); how it ended, as sshd says it."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.conch.ssh.common import NS, getNS
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from studios_gateway.studio.processes import PIPE_SIZE, READ_SIZE, _Reader, exit_request
from studios_gateway.studio.sshd import SessionChannel, StudioConnection, StudioSSHServer

_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


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


def test_how_a_command_ended_as_sshd_says_it() -> None:
    """A signal outside RFC 4254's list (SIGBUS, a CPU limit's SIGXCPU) was called KILL;
    sshd calls it SIG@openssh.com. A core dump is said too."""
    assert exit_request(Failure(ProcessDone(0))) == (b"exit-status", b"\0\0\0\0")
    assert exit_request(Failure(ProcessTerminated(exitCode=3))) == (b"exit-status",
                                                                    b"\0\0\0\3")
    for sig, core, name in ((signal.SIGTERM, False, b"TERM"), (signal.SIGBUS, False,
                                                               b"SIG@openssh.com"),
                            (signal.SIGSEGV, True, b"SEGV"), (signal.SIGXCPU, False,
                                                              b"SIG@openssh.com")):
        status = int(sig) | (0x80 if core else 0)
        kind, data = exit_request(Failure(ProcessTerminated(signal=sig, status=status)))
        assert kind == b"exit-signal"
        got, rest = getNS(data)
        assert (got, rest[:1], rest[1:]) == (name, b"\1" if core else b"\0", NS(b"") * 2)


def test_only_stdouts_pipe_is_made_larger() -> None:
    """Pipes count against their user's pipe-user-pages-soft on the whole host: past it,
    every new pipe of the studio's user holds 8 KiB. A larger stderr cost as much as
    stdout's, for nothing."""
    pipes = [os.pipe(), os.pipe()]
    try:
        default = fcntl.fcntl(pipes[1][0], _F_GETPIPE_SZ)
        reactor, proc = MemoryReactor(), _Proc()
        _Reader(reactor, proc, 1, pipes[0][0])  # type: ignore[arg-type]
        _Reader(reactor, proc, 2, pipes[1][0])  # type: ignore[arg-type]
        assert fcntl.fcntl(pipes[0][0], _F_GETPIPE_SZ) in (PIPE_SIZE, default)
        assert fcntl.fcntl(pipes[1][0], _F_GETPIPE_SZ) == default
    finally:
        for fd in (*pipes[0], *pipes[1]):
            os.close(fd)


class _Stdin:
    """A command's process as its session channel feeds it: what reached its stdin."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def unregisterProducer(self) -> None:  # noqa: N802
        pass

    def closeStdin(self) -> None:  # noqa: N802
        self.closed = True


def test_data_after_the_clients_eof_is_dropped(tmp_path: Path) -> None:
    """At the client's EOF the stdin pipe loses its credit gate (so that a late reader
    gets the end of its input); what a client sent after it was then held for the
    command without bound (64 MiB after EOF to a `sleep`: 63 MiB held in the connect
    client, all its credit given back). As sshd, it is dropped."""
    conn = StudioConnection()
    granted: list[int] = []
    conn.adjustWindow = lambda channel, n: granted.append(n)  # type: ignore[method-assign]
    channel = SessionChannel(StudioSSHServer(reactor=MemoryReactor(), cwd=str(tmp_path)))
    channel.conn = conn
    stdin = _Stdin()
    channel.process = stdin  # type: ignore[assignment]
    channel.dataReceived(b"x" * 1000)
    channel.eofReceived()
    assert (stdin.written, stdin.closed) == (1000, True)
    for _ in range(64):
        channel.dataReceived(b"z" * (1 << 20))
    assert stdin.written == 1000
