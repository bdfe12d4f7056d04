"""Which stream's data goes out next on a tunnel: interactive first, then round-robin.

The multiplexer keeps each stream's outgoing data in that stream's own bounded
buffer and asks a :class:`FrameScheduler` which stream sends the next frame
whenever the tunnel's transport can take more. Two queues:

* interactive: a stream that had at most ``small`` bytes waiting when it became
  ready (a keystroke, a WebSocket message, a request, an answer's head). Served
  first, in the order they became ready.
* bulk: everything else, one frame per turn, round-robin, so three downloads
  get a third of the tunnel each whatever order they started in.

A stream is *ready* when it has data and send window. The scheduler holds
opaque items (the multiplexer's streams); it neither sends nor checks
readiness itself, so it is tested without a reactor. See
docs/decisions/tunnel-scheduling.md.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

#: At most this many bytes waiting when a stream becomes ready: it is interactive.
SMALL_WRITE = 16 * 1024


class FrameScheduler(Generic[T]):
    __slots__ = ("small", "_interactive", "_bulk", "queued")

    def __init__(self, small: int = SMALL_WRITE):
        self.small = small
        self._interactive: deque[T] = deque()
        self._bulk: deque[T] = deque()
        #: The ids of the items in either queue: empty when nothing waits (``not
        #: scheduler.queued`` asks that without a Python call, as ``len`` would make).
        self.queued: set[int] = set()

    def ready(self, item: T, waiting: int) -> None:
        """``item`` has ``waiting`` bytes to send and window for some: queue it (once)."""
        key = id(item)
        if key in self.queued:
            return
        self.queued.add(key)
        (self._interactive if waiting <= self.small else self._bulk).append(item)

    def next(self) -> T | None:
        """The item that sends the next frame (taken off its queue), or None."""
        if self._interactive:
            item = self._interactive.popleft()
        elif self._bulk:
            item = self._bulk.popleft()
        else:
            return None
        self.queued.discard(id(item))
        return item

    def __len__(self) -> int:
        return len(self.queued)

    def clear(self) -> None:
        self._interactive.clear()
        self._bulk.clear()
        self.queued.clear()
