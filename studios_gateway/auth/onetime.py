"""Single-use, expiring, bounded tables: OIDC state.

`put` stores a value under a fresh random key (or a key you give), `take`
returns it once and forgets it. Entries expire after `ttl` seconds on the
clock; when the table is full the oldest entry is dropped, so a flood of
unfinished logins costs bounded memory and evicts only the oldest of them.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Generic, TypeVar

from studios_gateway.auth.cookies import Clock

T = TypeVar("T")


class OneTimeTable(Generic[T]):
    def __init__(self, clock: Clock, ttl: float, max_entries: int = 10_000):
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl and max_entries must be positive")
        self._clock = clock
        self.ttl = ttl
        self._max = max_entries
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock.seconds()
        while self._items:
            key, (expires, _) = next(iter(self._items.items()))
            if expires > now:
                break
            del self._items[key]

    def put(self, value: T, key: str | None = None) -> str:
        """Store `value`; returns its key (32 random bytes, URL-safe, unless given)."""
        self._expire()
        key = key if key is not None else secrets.token_urlsafe(32)
        self._items.pop(key, None)
        self._items[key] = (self._clock.seconds() + self.ttl, value)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        return key

    def take(self, key: str) -> T | None:
        """The value stored under `key`, once; None if unknown, used or expired."""
        if not isinstance(key, str) or not key:
            return None
        self._expire()
        item = self._items.pop(key, None)
        return None if item is None else item[1]

    def __contains__(self, key: object) -> bool:
        self._expire()
        return key in self._items

