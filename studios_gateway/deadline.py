"""A deadline for a Deferred that does not count the caller's own stall against it.

``Deferred.addTimeout`` fails the Deferred when its timer runs. Twisted runs due
timers before it polls the sockets, so after an iteration that took longer than
the deadline (a process busy with a burst of work, or starved of CPU) the timer
wins even when the answer has been waiting in a socket for most of that time: a
Redis reply received in milliseconds becomes a "did not answer within 2s", the
link is dropped and every command on it fails. ``within`` gives the reactor one
more poll before it gives up: at the deadline it schedules the cancellation for
the next iteration, after the sockets were read.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


def within(d: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """Like ``d.addTimeout(seconds, clock)`` (cancel ``d``, then defer.TimeoutError), except
    that what arrives in the reactor's first poll after the deadline still counts."""
    state: dict[str, Any] = {"expired": False}

    def give_up() -> None:
        state["expired"] = True
        d.cancel()

    def deadline() -> None:
        state["timer"] = clock.callLater(0, give_up)  # after the next poll

    state["timer"] = clock.callLater(seconds, deadline)

    def done(result: Any) -> Any:
        timer = state["timer"]
        if timer.active():
            timer.cancel()
        if state["expired"] and isinstance(result, Failure) \
                and result.check(defer.CancelledError):
            raise defer.TimeoutError(seconds, "Deferred")
        return result

    return d.addBoth(done)
