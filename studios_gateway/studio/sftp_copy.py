"""A server-side copy for the studio's SFTP server: the ``copy-data`` extension, which
OpenSSH's sftp (9.0 and later) uses for its ``cp``.

The bytes never cross the SSH connection: the studio copies from one open file to
another itself, in the kernel where it can (``copy_file_range``, a reflink on file
systems that share blocks), else by reads and writes. The connect client serves the
tool and every SSH session from one thread, so a copy goes in steps of
:data:`COPY_STEP`, one per turn of the reactor, and a 10 GB ``cp`` does not hold up
the tool's pages or a shell beside it. The copies under way in the studio share that step:
with one per sftp session, a connection's 30 sessions each copying made a turn 30 steps
long. (OpenSSH's sftp-server, one process per session, copies in one go.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import weakref

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["COPY_STEP", "FileCopy", "same_file"]

#: Bytes copied per turn of the reactor, by all the copies under way together.
COPY_STEP = 8 * 1024 * 1024
#: Each copy's least share of a turn (so that each still moves at a useful pace).
MIN_SHARE = 256 * 1024
_BUFFER = 1024 * 1024
#: copy_file_range's refusals that a read and a write still do (another file system,
#: an old kernel, a special file, a destination opened for appending).
_NOT_IN_KERNEL = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
                  errno.ETXTBSY}


class FileCopy:
    """Copies `length` bytes (0: up to the end of the source) from `source` at
    `source_at` to `target` at `target_at` (or at its end, opened for appending).

    :attr:`done` fires with True when all was copied, False when the source ended
    first (a length was asked), or fails with the OSError that stopped it.
    """

    def __init__(self, clock: IReactorTime, source: int, source_at: int, length: int,
                 target: int, target_at: int):
        self.clock = clock
        self.source, self.source_at = source, source_at
        self.target, self.target_at = target, target_at
        self.until_end = length == 0
        self.left = length
        self.append = bool(fcntl.fcntl(target, fcntl.F_GETFL) & os.O_APPEND)
        self.in_kernel = not self.append
        self.done: Deferred[bool] = Deferred()
        self._next: IDelayedCall | None = None

    def start(self) -> Deferred[bool]:
        _under_way.add(self)
        self._step()
        return self.done

    def stop(self) -> None:
        """Stop where it is (the session ended, a handle was closed); `done` never fires."""
        _under_way.discard(self)
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _step(self) -> None:
        self._next = None
        share = min(COPY_STEP, max(MIN_SHARE, COPY_STEP // max(1, len(_under_way))))
        try:
            ended = self._copy(share if self.until_end else min(share, self.left))
        except OSError as e:
            _under_way.discard(self)
            self.done.errback(e)
            return
        if ended or (not self.until_end and self.left == 0):
            _under_way.discard(self)
            self.done.callback(self.until_end or self.left == 0)
            return
        self._next = self.clock.callLater(0, self._step)

    def _copy(self, budget: int) -> bool:
        """Up to `budget` bytes; True when the source has ended."""
        while budget > 0:
            n = self._copy_some(budget)
            if n == 0:
                return True
            budget -= n
            self.source_at += n
            self.target_at += n
            if not self.until_end:
                self.left -= n
        return False

    def _copy_some(self, budget: int) -> int:
        if self.in_kernel:
            try:
                n = os.copy_file_range(self.source, self.target, budget,
                                       self.source_at, self.target_at)
            except OSError as e:
                if e.errno not in _NOT_IN_KERNEL:
                    raise
                self.in_kernel = False
            else:
                if n:
                    return n
                # The source's end, or a file the kernel will not copy and says 0 for
                # (/proc and /sys on Linux 5.3 to 5.18, whose files show a size of 0:
                # an empty copy and FX_OK): a read tells which, and goes on from there.
                self.in_kernel = False
        data = os.pread(self.source, min(budget, _BUFFER), self.source_at)
        view = memoryview(data)
        at = self.target_at
        while view:
            n = os.write(self.target, view) if self.append else os.pwrite(self.target, view, at)
            view, at = view[n:], at + n
        return len(data)


#: The copies under way in this process (weakly: one dropped unstopped does not count).
_under_way: weakref.WeakSet[FileCopy] = weakref.WeakSet()


def same_file(a: int, b: int) -> bool:
    """Whether two open files are one file (a copy onto itself would read what it wrote)."""
    sa, sb = os.fstat(a), os.fstat(b)
    return sa.st_dev == sb.st_dev and sa.st_ino == sb.st_ino
