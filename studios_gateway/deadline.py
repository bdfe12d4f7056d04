"""A deadline for a Deferred that does not count the caller's own stall against it.

``Deferred.addTimeout`` fails the Deferred when its timer runs. Twisted runs due
timers before it polls the sockets, so after an iteration that took longer than
the deadline (a process busy with a burst of work, or starved of CPU) the timer
wins even when the answer has been waiting in a socket for most of that time: a
Redis reply received in milliseconds becomes a "did not answer within 2s", the
link is dropped and every command on it fails. ``within`` gives the reactor one
more poll before it gives up: at the deadline it schedules the cancellation for
the next iteration, after the sockets were read.

One poll is not always enough. In a reconnect storm the gateway reads thousands of
pipelined Redis replies, each running a bind's next step, beside a thousand TLS
handshakes: replies were measured 1-2 s late although Redis answered its own PINGs in
under 20 ms, binds whose handshakes were paid for were refused as "store
unavailable", and the link's PING failed and dropped the connection, failing every
command on it. So a caller that knows when the source last sent anything gives
``heard``, and the deadline then means "the source has been silent that long".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


def within(d: Deferred[T], seconds: float, clock: IReactorTime,
           heard: Callable[[], float] | None = None, longest: float | None = None
           ) -> Deferred[T]:
    """Like ``d.addTimeout(seconds, clock)`` (cancel ``d``, then defer.TimeoutError), except
    that what arrives in the reactor's first poll after the deadline still counts.

    ``heard``: when the source last sent anything (``clock``'s time). A deadline that
    passes while the source is still sending (heard from within the last ``seconds``) is
    put off until it has been silent for ``seconds``, but not past ``longest`` (5 x
    ``seconds`` by default) after the call: a pipelined answer waiting behind others
    that are still coming in is late because the process is busy reading them, not
    because the source is gone. The TimeoutError carries the seconds waited."""
    state: dict[str, Any] = {"waited": None}  # seconds, once given up
    started = clock.seconds()
    last = started + (5 * seconds if longest is None else longest)

    def give_up() -> None:
        now = clock.seconds()
        if heard is not None and now < last:
            quiet_at = heard() + seconds
            if quiet_at > now:
                state["timer"] = clock.callLater(min(quiet_at, last) - now, deadline)
                return
        state["waited"] = now - started
        d.cancel()

    def deadline() -> None:
        state["timer"] = clock.callLater(0, give_up)  # after the next poll

    state["timer"] = clock.callLater(seconds, deadline)

    def done(result: Any) -> Any:
        timer = state["timer"]
        if timer.active():
            timer.cancel()
        if state["waited"] is not None and isinstance(result, Failure) \
                and result.check(defer.CancelledError):
            raise defer.TimeoutError(round(state["waited"], 3), "Deferred")
        return result

    return d.addBoth(done)
