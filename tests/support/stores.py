"""The one store fake of the unit tests: the real in-memory registry that can go away.

``FlakyStore(MemoryStore(clock))`` behaves exactly as the embedded registry while
``up``; switched off, every data call fails with StoreUnavailable, as with Redis
gone. ``calls`` counts the data calls by method name.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer

from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.memory import MemoryStore

# Subscriptions and the lifecycle keep working while "down": a node keeps its
# subscription and hears nothing, as with a Redis outage.
_PASS_THROUGH = {"subscribe", "subscribe_user_keys", "subscribe_logouts", "start", "stop"}


class FlakyStore:
    """A MemoryStore that can be switched off."""

    def __init__(self, inner: MemoryStore, reason: str = "Redis at redis:6379 is unavailable"):
        self.inner = inner
        self.up = True
        self.reason = reason
        self.calls: Counter[str] = Counter()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name in _PASS_THROUGH or not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if not self.up:
                return defer.fail(StoreUnavailable(self.reason))
            return method(*args, **kwargs)

        return call
