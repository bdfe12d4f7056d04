"""A timer that is re-armed far more often than it fires.

Each client connection of the proxy has an idle, a head and a response timeout
that move with every request. Cancelling a Twisted ``DelayedCall`` and
scheduling a new one costs allocations and heap work in the reactor on every
request; even moving one (``DelayedCall.reset``) is two Python calls. A
:class:`Deadline` keeps one call and the time it is really due: arming it later
than the call only writes that time down (the call, when it comes, sees it is early
and schedules itself again, once per timeout period at most); only a sooner time
moves the call. Disarming leaves the call in place, firing into nothing, ready to be
armed again; :meth:`Deadline.stop` really cancels it (when the connection goes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall

__all__ = ["Deadline"]


class Deadline:
    def __init__(self, clock: Any):
        self._clock = clock
        # While not None, scheduled and not yet run (set to None when it runs or stops).
        self._call: DelayedCall | None = None
        self._due = 0.0
        self._fn: Callable[..., Any] | None = None
        self._args: tuple[Any, ...] = ()

    @property
    def armed(self) -> bool:
        return self._fn is not None

    def arm(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in `seconds`, instead of whatever was armed before."""
        clock = self._clock
        self._due = due = clock.seconds() + seconds
        self._fn, self._args = fn, args
        call = self._call
        if call is None:
            self._call = clock.callLater(seconds, self._fire)
        elif due < call.time:
            call.reset(seconds)

    def disarm(self) -> None:
        """Nothing happens when the time comes (until armed again)."""
        self._fn, self._args = None, ()

    def stop(self) -> None:
        """Disarm and drop the scheduled call."""
        self.disarm()
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        fn = self._fn
        if fn is None:
            return
        now = self._clock.seconds()
        if now < self._due:  # armed again later since the call was set
            self._call = self._clock.callLater(self._due - now, self._fire)
            return
        args = self._args
        self.disarm()
        fn(*args)
