"""The one store fake of the unit tests: the real in-memory registry that can go away.

``FlakyStore(MemoryStore(clock))`` behaves exactly as the embedded registry while
``up``; switched off, every data call fails with StoreUnavailable, as with Redis
gone. ``calls`` counts the data calls by method name. While ``deaf``, change
events are lost (as when Redis pub/sub drops); ``announce`` delivers one by hand
(``None``: "changes may have been missed").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.memory import MemoryStore

# The lifecycle keeps working while "down"; subscriptions too (a node keeps its
# subscription and hears nothing, as with a Redis outage).
_PASS_THROUGH = {"start", "stop"}
_SUBSCRIPTIONS = {"subscribe", "subscribe_user_keys", "subscribe_logouts"}
Listener = Callable[[Any], Any]


class FlakyStore:
    """A MemoryStore that can be switched off."""

    def __init__(self, inner: MemoryStore, reason: str = "Redis at redis:6379 is unavailable"):
        self.inner = inner
        self.up = True
        self.reason = reason
        self.calls: Counter[str] = Counter()
        self.deaf = False
        #: Methods that fail even while up (one broken call, the rest answering).
        self.failing: set[str] = set()
        self._listeners: dict[str, list[Listener]] = {name: [] for name in _SUBSCRIPTIONS}

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def subscribers(self, kind: str = "subscribe") -> int:
        """How many callbacks are subscribed with `kind` (a subscribe method's name)."""
        return len(self._listeners[kind])

    def announce(self, kind: str = "subscribe", key: str | None = None) -> None:
        """Deliver one change event to every `kind` subscriber, deaf or not."""
        for callback in list(self._listeners[kind]):
            callback(key)

    def _subscribe(self, kind: str, callback: Listener) -> Callable[[], None]:
        def hear(key: Any) -> None:
            if not self.deaf:
                callback(key)

        unsubscribe = getattr(self.inner, kind)(hear)
        self._listeners[kind].append(callback)

        def undo() -> None:
            unsubscribe()
            if callback in self._listeners[kind]:
                self._listeners[kind].remove(callback)

        return undo

    def __getattr__(self, name: str) -> Any:
        if name in _SUBSCRIPTIONS:
            return lambda callback: self._subscribe(name, callback)
        method = getattr(self.inner, name)
        if name in _PASS_THROUGH or not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if not self.up or name in self.failing:
                return defer.fail(StoreUnavailable(self.reason))
            return method(*args, **kwargs)

        return call
