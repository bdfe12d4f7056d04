"""Deferreds that fire once something (open connections, tunnels) has emptied, for drains."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred


class EmptyWaiters:
    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self, empty: bool) -> Deferred[None]:
        """Fires now if ``empty``, else at the next :meth:`fire`."""
        if empty:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def fire(self) -> None:
        """The thing is empty now: fire everyone waiting."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
