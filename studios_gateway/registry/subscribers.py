"""The invalidation callbacks that a session store keeps for each kind of change
(sessions, users' keys, logouts, nodes): every store (memory, Redis, the cache in
front of one) calls them the same way, and one that fails does not stop the others."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from studios_gateway.registry.base import Invalidation


class Subscribers:
    """Invalidation callbacks; one failing callback does not stop the others."""

    _log = Logger()

    def __init__(self) -> None:
        self._callbacks: list[Invalidation] = []

    def add(self, callback: Invalidation) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def notify(self, session_id: str | None) -> None:
        for callback in list(self._callbacks):
            try:
                callback(session_id)
            except Exception:
                self._log.failure("session registry invalidation callback failed")
