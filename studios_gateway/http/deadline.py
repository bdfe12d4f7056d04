"""A timer that is re-armed far more often than it fires.

Each client connection of the proxy has an idle, a head and a response timeout
that move with every request. Cancelling a Twisted ``DelayedCall`` and
scheduling a new one costs allocations and heap work in the reactor on every
request; :class:`Deadline` keeps one call and, when the new time is not sooner
than the time the call was scheduled for, only moves it
(``DelayedCall.reset``, which Twisted handles without touching its heap).
Disarming leaves the call in place, firing into nothing, ready to be armed
again; :meth:`Deadline.stop` really cancels it (when the connection goes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall

__all__ = ["Deadline"]


class Deadline:
    def __init__(self, clock: Any):
        self._clock = clock
        self._call: DelayedCall | None = None
        self._fn: Callable[..., Any] | None = None
        self._args: tuple[Any, ...] = ()

    @property
    def armed(self) -> bool:
        return self._fn is not None

    def arm(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in `seconds`, instead of whatever was armed before."""
        call = self._call
        if call is not None and call.active() and call.time <= self._clock.seconds() + seconds:
            call.reset(seconds)
        else:
            if call is not None and call.active():
                call.cancel()
            self._call = self._clock.callLater(seconds, self._fire)
        self._fn, self._args = fn, args

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
        fn, args = self._fn, self._args
        self.disarm()
        if fn is not None:
            fn(*args)
