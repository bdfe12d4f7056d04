"""Single-use, expiring, bounded tables: OIDC state.

`put` stores a value under a fresh random key (or a key you give), `take`
returns it once and forgets it. Entries expire after `ttl` seconds on the
clock; when the table is full (`max_entries`, or with `max_bytes` the sizes
its callers gave) the oldest entries are dropped, so a flood of unfinished
logins costs bounded memory and evicts only the oldest of them. `on_evict`
hears the keys dropped so (not those that expired), for a copy kept elsewhere.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from studios_gateway.auth.cookies import Clock

T = TypeVar("T")


class OneTimeTable(Generic[T]):
    def __init__(self, clock: Clock, ttl: float, max_entries: int = 10_000,
                 max_bytes: int | None = None,
                 on_evict: Callable[[list[str]], object] | None = None):
        if ttl <= 0 or max_entries < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("ttl, max_entries and max_bytes must be positive")
        self._clock = clock
        self.ttl = ttl
        self._max = max_entries
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        #: key -> (when it expires, its size, the value), oldest first.
        self._items: OrderedDict[str, tuple[float, int, T]] = OrderedDict()
        self._bytes = 0

    @property
    def kept_bytes(self) -> int:
        """The sizes of the entries kept, summed (what `max_bytes` bounds)."""
        self._expire()
        return self._bytes

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def _drop_oldest(self) -> str:
        key, (_, size, _) = self._items.popitem(last=False)
        self._bytes -= size
        return key

    def _expire(self) -> None:
        now = self._clock.seconds()
        while self._items and next(iter(self._items.values()))[0] <= now:
            self._drop_oldest()

    def check_size(self, size: int) -> None:
        """ValueError when an entry of `size` bytes can never fit under `max_bytes`."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise ValueError(f"an entry of {size} bytes is over the table's bound of "
                             f"{self.max_bytes} bytes")

    def put(self, value: T, key: str | None = None, *, size: int = 0) -> str:
        """Store `value` (counted as `size` bytes); returns its key (32 random bytes,
        URL-safe, unless given). ValueError, and nothing changed, when `size` alone is
        over `max_bytes` (see check_size)."""
        self.check_size(size)
        self._expire()
        key = key if key is not None else secrets.token_urlsafe(32)
        self._forget(key)
        self._items[key] = (self._clock.seconds() + self.ttl, size, value)
        self._bytes += size
        evicted: list[str] = []
        while len(self._items) > self._max or (
                self.max_bytes is not None and self._bytes > self.max_bytes):
            evicted.append(self._drop_oldest())
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        return key

    def _forget(self, key: str) -> tuple[float, int, T] | None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]
        return item

    def take(self, key: str) -> T | None:
        """The value stored under `key`, once; None if unknown, used or expired."""
        if not isinstance(key, str) or not key:
            return None
        self._expire()
        item = self._forget(key)
        return None if item is None else item[2]

    def __contains__(self, key: object) -> bool:
        self._expire()
        return key in self._items
