"""Single-use, expiring, bounded tables: OIDC state, handoff codes, spent login links.

`put` stores a value under a fresh random key (or a key you give), `take`
returns it once and forgets it. Entries expire after `ttl` seconds on the
clock; when the table is full the oldest entry is dropped, so a flood of
unfinished logins costs bounded memory and evicts only the oldest of them.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any, Generic, TypeVar

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


class SpentSet:
    """Remembers spent single-use ids until they would have expired anyway.

    With a `journal` (:class:`~studios_gateway.auth.files.Journal`) what was spent
    survives a restart: a used login link stays used, a logout stays a logout."""

    def __init__(self, clock: Clock, max_entries: int = 100_000, journal: Any = None):
        self._clock = clock
        self._max = max_entries
        self._items: OrderedDict[str, float] = OrderedDict()
        self._journal = journal
        if journal is not None:
            for key, until in sorted(journal.load(clock.seconds()).items(),
                                     key=lambda kv: kv[1]):
                self._items[key] = until

    def spend(self, key: str, until: float) -> bool:
        """Mark `key` spent until `until`; False if it was spent already."""
        now = self._clock.seconds()
        while self._items:  # oldest first; entries of one kind share a lifetime
            k, t = next(iter(self._items.items()))
            if t > now:
                break
            del self._items[k]
        if key in self._items and self._items[key] > now:
            return False
        self._items[key] = until
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        if self._journal is not None:
            self._journal.append(key, until)
        return True

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def __contains__(self, key: object) -> bool:
        t = self._items.get(key)  # type: ignore[call-overload]
        return t is not None and t > self._clock.seconds()
