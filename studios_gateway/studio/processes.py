"""The processes of the studio's SSH sessions: their own sessions, their output read in
large pieces.

Twisted reads a child's output 8 KiB at a time, one read per wake-up of the reactor,
and each piece left the studio as an SSH packet of its own: ``ssh studio 'cat big'``
moved the same bytes as scp's download in four times the packets, at half its speed
and twice the connect client's CPU. Here a read takes up to :data:`READ_SIZE`, and the
output pipe holds up to :data:`PIPE_SIZE` (Linux's default is 64 KiB), so a fast
writer has that much waiting when the reactor comes round; the channel cuts it into
packets of the size its peer takes.

Backpressure is as before: a channel whose window is shut pauses the process, which
stops reading its pipes; what waits in the channel beyond its window is at most one
read per pipe, and the writer blocks on the full pipe.

A command without a pty runs in a session of its own, as sshd starts it (a pty's
has one already); it ran in the connect client's process group.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import common
from twisted.internet import process
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import PosixReactorBase
from twisted.python.failure import Failure

__all__ = ["PIPE_SIZE", "READ_SIZE", "exit_request", "spawn"]

#: Largest piece of output read at once.
READ_SIZE = 256 * 1024
#: What a session's output pipe may hold (F_SETPIPE_SZ; an unprivileged user may go
#: up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def read_into(fd: int, deliver: Callable[[bytes], object]) -> object:
    """One read of up to READ_SIZE: Twisted's ``fdesc.readFromFD`` with a larger piece."""
    try:
        data = os.read(fd, READ_SIZE)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EINTR):
            return None
        return CONNECTION_LOST
    if not data:
        return CONNECTION_DONE
    deliver(data)
    return None


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # over the system's or the user's limit: the default size stays
        pass


class _Reader(process.ProcessReader):
    """A child's stdout or stderr, read in pieces of up to READ_SIZE; only stdout's pipe
    is made larger. The kernel counts a user's pipes' capacity together, across the
    whole host (every studio under the same uid): past pipe-user-pages-soft (64 MiB)
    each new pipe of that user holds 8 KiB, its shells' `a | b` as the tool's, and no
    pipe grows. A stderr of 1 MiB brought that after 32 commands, not 64, for nothing
    (bulk output is stdout's)."""

    def __init__(self, reactor: Any, proc: process.Process, name: int, fileno: int):
        if name == 1:
            _grow_pipe(fileno)
        super().__init__(reactor, proc, name, fileno)

    def doRead(self) -> object:
        return read_into(self.fd, self.dataReceived)


class _Process(process.Process):
    """A command or shell without a pty, in a session and process group of its own, as
    sshd starts one (its setsid): a `kill 0` in it, or a signal to its group, reaches
    the user's processes, not the connect client and the tool beside it."""

    processReaderFactory = _Reader

    def _trySpawnInsteadOfFork(self, *args: Any) -> bool:
        return False  # (posix_spawn as Twisted calls it has no setsid: fork, then exec)

    def _execChild(self, *args: Any) -> None:
        os.setsid()
        super()._execChild(*args)


class _PTYProcess(process.PTYProcess):
    def doRead(self) -> object:
        return read_into(self.fd, self._output)

    def _output(self, data: bytes) -> None:
        if self.proto is not None:
            self.proto.childDataReceived(1, data)


def spawn(reactor: Any, proto: IProcessProtocol, executable: str, argv: list[str],
          env: dict[str, str], path: str,
          pty: tuple[int, int, str] | None = None) -> IProcessTransport:
    """What ``reactor.spawnProcess`` does on a POSIX reactor, with the output read as
    above; another reactor's (a test's) process is spawned as it spawns it."""
    if not isinstance(reactor, PosixReactorBase):
        if pty is not None:
            return reactor.spawnProcess(proto, executable, argv, env, path, usePTY=pty)
        return reactor.spawnProcess(proto, executable, argv, env, path)
    if pty is not None:
        return _PTYProcess(reactor, executable, argv, env, path, proto, None, None, pty)
    return _Process(reactor, executable, argv, env, path, proto, None, None, None)


#: The signal names RFC 4254 gives (and OpenSSH's sshd sends); any other signal is
#: "SIG@openssh.com", as from sshd.
SIGNALS = ("ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM",
           "USR1", "USR2")
_SIGNAL_NAMES = {int(getattr(signal, "SIG" + name)): name for name in SIGNALS}
OTHER_SIGNAL = "SIG@openssh.com"


def exit_request(reason: Failure) -> tuple[bytes, bytes]:
    """How a session's process ended, as the channel request that says so: ``exit-status``
    and its code, or ``exit-signal`` with the signal's name and whether it dumped core
    (a signal outside RFC 4254's list was called KILL)."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig is None:
        return b"exit-status", struct.pack(">L", getattr(value, "exitCode", None) or 0)
    status = getattr(value, "status", None)
    core = isinstance(status, int) and os.WIFSIGNALED(status) and os.WCOREDUMP(status)
    name = _SIGNAL_NAMES.get(int(sig), OTHER_SIGNAL)
    return b"exit-signal", (common.NS(name.encode()) + (b"\1" if core else b"\0")
                            + common.NS(b"") + common.NS(b""))
