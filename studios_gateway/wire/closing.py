"""Ending a connection within a bounded time, whatever its peer does.

Twisted's ``loseConnection`` closes a TCP socket only once every byte buffered for it is
written (and a TLS layer first sends its close_notify behind them): a peer that reads
nothing, hostile or wedged, never takes them, and the socket (a descriptor, its buffers)
stays open for as long as that peer's kernel keeps answering, that is for good.

:func:`close_within` is ``loseConnection`` with a deadline: if the socket under the
transport is not closed :data:`CLOSE_GRACE` seconds later, it is aborted (reset), and one
line says so. A peer that is still taking the bytes (fewer are left than at the last
look, counting the kernel's send queue: :func:`unsent`) gets another :data:`CLOSE_GRACE`:
a slow reader gets the end of its answer, a peer that takes nothing is reset.
:func:`abort_unless_gone` arms the same deadline after a close someone else started
(Conch's ``sendDisconnect``). Nothing is done per write: the timer is made only when a
close starts, once per socket, and cancelled when the socket closes.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["CLOSE_GRACE", "abort_unless_gone", "close_within"]

#: Seconds a connection this end closes is given to take what was still buffered for it
#: (and to end cleanly) before it is reset.
CLOSE_GRACE = 5.0

_log = Logger()


def close_within(transport: Any, clock: IReactorTime, what: str,
                 grace: float = CLOSE_GRACE) -> None:
    """``transport.loseConnection()``, and reset the socket under it if it is still open
    ``grace`` seconds later (``what``: the connection, in the words of the log line, with
    no secret in them)."""
    transport.loseConnection()
    abort_unless_gone(transport, clock, what, grace)


def abort_unless_gone(transport: Any, clock: IReactorTime, what: str,
                      grace: float = CLOSE_GRACE) -> None:
    """A close of ``transport`` was started: reset the socket under it if it is still
    open ``grace`` seconds from now. Once per socket (a later call keeps the first
    deadline); nothing for a transport with no socket under it (a tunnel's stream has
    a close timer of its own)."""
    fd: Any = descriptor_under(transport)  # (its connectionLost is replaced below)
    if fd is None or fd.disconnected or "connectionLost" in vars(fd):
        return
    deadline = _Deadline(fd, clock, grace, what)
    lost = fd.connectionLost

    def connection_lost(reason: Any) -> None:
        del fd.connectionLost  # (the class's again; no cycle through this closure)
        deadline.cancel()
        lost(reason)

    # The reactor ends a socket through its connectionLost: the deadline goes with it.
    fd.connectionLost = connection_lost


def descriptor_under(transport: Any) -> FileDescriptor | None:
    """The socket's transport under ``transport`` (through TLS and WebSocket layers)."""
    for _ in range(5):
        if transport is None or isinstance(transport, FileDescriptor):
            return transport
        # (vars: a TLS layer forwards unknown attributes to its transport)
        transport = vars(transport).get("transport") if hasattr(transport, "__dict__") \
            else None
    return None


def unsent(fd: FileDescriptor) -> int:
    """Bytes written to ``fd`` that its peer has not taken yet: those still buffered in
    this process and those in the kernel's send queue not yet acknowledged (0 for either
    part it cannot tell).

    The kernel's part counts: what this process buffers moves into the kernel only when
    the socket turns writable (a third of its send buffer free, megabytes on a fast link),
    so a slow reader can take bytes for longer than a grace with none leaving this
    process; and under a client's TLS layer (a peer link, studios-connect) the socket
    stays open once this process's part is all in the kernel (the close waits for the
    peer's close_notify; the gateway's listeners close after their own, tls_guard). A
    reset drops the kernel's queue: a peer still taking it must not be reset."""
    try:
        here = (len(fd.dataBuffer) - fd.offset) + int(getattr(fd, "_tempDataLen", 0))
    except (AttributeError, TypeError):
        here = 0
    return here + _kernel_unsent(getattr(fd, "socket", None))


def _kernel_unsent(sock: Any) -> int:
    """Bytes in ``sock``'s kernel send queue its peer has not acknowledged (Linux's
    SIOCOUTQ), 0 if it cannot tell."""
    if sock is None:
        return 0
    try:
        got = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError, TypeError):
        return 0  # (closed, not a socket, not Linux)
    return max(0, int(struct.unpack("i", got)[0]))


class _Deadline:
    """Resets ``fd`` once a look ``grace`` seconds after the last finds no fewer bytes
    buffered for it: a peer still taking them is given another ``grace``."""

    def __init__(self, fd: Any, clock: IReactorTime, grace: float, what: str):
        self.fd, self.clock, self.grace, self.what = fd, clock, grace, what
        self.left = unsent(fd)
        self.call = clock.callLater(grace, self._look)

    def cancel(self) -> None:
        if self.call.active():
            self.call.cancel()

    def _look(self) -> None:
        fd = self.fd
        if fd.disconnected:
            return
        left = unsent(fd)
        if 0 < left < self.left:  # (still taking them: another grace)
            self.left = left
            self.call = self.clock.callLater(self.grace, self._look)
            return
        try:
            peer = fd.getPeer()
            at = f"{peer.host}:{peer.port}"
        except Exception:
            at = "?"
        if left:
            _log.info("{what} ({peer}): the peer took none of the last {n} bytes in "
                      "{grace:g}s after the connection's close; resetting it",
                      what=self.what, peer=at, n=left, grace=self.grace)
        else:  # (a client's TLS: it has them all, and has not answered the close_notify)
            _log.info("{what} ({peer}): the peer took every byte but did not end the "
                      "connection in {grace:g}s after its close; resetting it",
                      what=self.what, peer=at, grace=self.grace)
        fd.abortConnection()
